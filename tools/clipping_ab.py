"""Gradient clipping folded into the fused AdamW step, a speed lever of issue #17 measured and not
kept (docs/bench-sst2-expert-cpu.md has the figures): `clip_grad_norm_` reads every gradient for
the norm, then reads and writes every gradient again to scale it, at every step; the fused AdamW
step already reads each gradient and divides it by a `grad_scale` tensor when one is set (the hook
a gradient scaler unscales through), so setting grad_scale to max(1, norm / max_norm) clips inside
the step and saves that second pass. It gives the same update up to rounding (seeded runs part
ways by it: validation accuracy 0.8062 on both sides at seed 42, 0.8005 against 0.7993 at seed 2);
it saved 2-3 ms in the optimizer alone (measured by an earlier form of this tool) but under 1%
of a whole step, so llmkit clips as Trainer does. Measured two ways:

    .venv/bin/python tools/clipping_ab.py step recipes/sst2-minilm-full.yaml --rounds 12
    .venv/bin/python tools/clipping_ab.py finetune recipes/sst2-minilm-full.yaml --pairs 3 \\
        data.max_train_samples=3000 train.epochs=1

`step`: one process, the recipe's model and method (the word embedding trained as llmkit trains
it, the used rows alone), training steps (bf16 autocast forward and backward of a batch of rows
of similar length, clipping, the fused AdamW step) in rounds that alternate clip_grad_norm_ + the
step with clipping in the step; ms per training step for each side (this machine's speed drifts
within minutes, so only sides measured this way are compared).
`finetune`: `llmkit finetune` of the recipe with the given overrides, each run its own process,
alternating llmkit as it is with llmkit whose trainer clips in the step; samples/s and
validation accuracy of each run. Both print JSON lines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from first_position_ab import recipe_model, sentences  # tools/ is on the path of a script run from it

from llmkit.data.loading import LABELS
from llmkit.training.embedding_rows import training_used_rows

# `llmkit finetune` as it is, and with its trainer clipping in the step (single process, fused
# AdamW, no gradient scaler: what the SST-2 recipes run on CPU).
TRAINERS_CLIPPING = "import sys; from llmkit.cli import app; sys.argv[0] = 'llmkit'; app()"
IN_STEP = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import clipping_ab; "
    "from llmkit.training.trainer import LlmkitTrainer; "
    "LlmkitTrainer._clip_grad_norm = clipping_ab.trainer_clipping_in_step; "
    "from llmkit.cli import app; sys.argv[0] = 'llmkit'; app()"
)
# torch.nn.utils.clip_grad_norm_'s guard against a zero norm, kept so both clip alike.
NORM_EPSILON = 1e-6


def clip_in_step(
    optimizer: torch.optim.Optimizer, parameters: Iterable[torch.Tensor], max_norm: float
) -> torch.Tensor:
    """Make `optimizer`'s next step (a fused Adam/AdamW) clip the gradients of `parameters` to
    `max_norm`; returns the norm before clipping, as clip_grad_norm_ does."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
    assert all(group.get("fused") for group in optimizer.param_groups), "the step must be fused AdamW's"
    if not getattr(optimizer, "clips_in_step", False):
        # A step not preceded by clip_in_step must not reuse the last step's scale.
        optimizer.register_step_post_hook(lambda o, args, kwargs: setattr(o, "grad_scale", None))
        optimizer.clips_in_step = True  # type: ignore[attr-defined]
    optimizer.grad_scale = torch.clamp((norm + NORM_EPSILON) / max_norm, min=1.0)  # type: ignore[attr-defined]
    return norm


def trainer_clipping_in_step(trainer: Any, model: torch.nn.Module) -> torch.Tensor:
    """LlmkitTrainer._clip_grad_norm with the lever (the optimizer inside accelerate's wrapper)."""
    return clip_in_step(trainer.optimizer.optimizer, model.parameters(), trainer.args.max_grad_norm)


def step_ab(recipe_path: Path, rounds: int, steps: int, batch_size: int) -> None:
    recipe, loaded, model = recipe_model(recipe_path)
    rows = sentences(recipe.data.train_file)[:3000]
    ids = [i for row in loaded.tokenizer(rows)["input_ids"] for i in row] + loaded.tokenizer.all_special_ids
    used = torch.unique(torch.tensor(ids))
    with training_used_rows(loaded.model, used):
        model.train()
        # Batches of rows of similar length, as length grouping makes them, spread over the lengths.
        by_length = sorted(rows, key=len)
        stride = (len(by_length) - batch_size) // max(steps - 1, 1)
        batches = []
        for start in range(0, stride * steps, stride):
            batch = dict(
                loaded.tokenizer(by_length[start : start + batch_size], padding=True, return_tensors="pt")
            )
            batch[LABELS] = torch.randint(0, 2, (batch_size,))
            batches.append(batch)
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=1e-9, fused=True)
        max_norm = recipe.train.max_grad_norm

        def one_round(in_step: bool) -> float:
            start = time.perf_counter()
            for batch in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    model(**batch).loss.backward()
                if in_step:
                    clip_in_step(optimizer, parameters, max_norm)
                else:
                    torch.nn.utils.clip_grad_norm_(parameters, max_norm)
                optimizer.step()
                optimizer.zero_grad()
            return (time.perf_counter() - start) * 1000 / len(batches)

        one_round(False), one_round(True)  # warm-up
        times: dict[str, list[float]] = {"clip_grad_norm_then_step_ms": [], "clip_in_step_ms": []}
        for _ in range(rounds):
            times["clip_grad_norm_then_step_ms"].append(one_round(False))
            times["clip_in_step_ms"].append(one_round(True))
    gradient_values = sum(p.numel() for p in parameters)
    means = {name: sum(values) / len(values) for name, values in times.items()}
    print(
        json.dumps(
            {
                "mode": "step",
                "gradient_values": gradient_values,
                **{name: [round(v, 2) for v in values] for name, values in times.items()},
                "saved_ms": round(means["clip_grad_norm_then_step_ms"] - means["clip_in_step_ms"], 2),
                "speedup": round(means["clip_grad_norm_then_step_ms"] / means["clip_in_step_ms"], 3),
            }
        )
    )


def finetune_ab(recipe: Path, pairs: int, overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        for pair in range(pairs):
            for side, program in (("trainers-clipping", TRAINERS_CLIPPING), ("in-step", IN_STEP)):
                out = Path(scratch) / f"{side}-{pair}"
                command = [sys.executable, "-c", program, "finetune", str(recipe), *overrides, "-o", str(out)]
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                results = json.loads((out / "results.json").read_text())
                print(
                    json.dumps(
                        {
                            "pair": pair,
                            "side": side,
                            "samples_per_second": results["train"]["samples_per_second"],
                            "accuracy": results["metrics"]["validation"]["accuracy"],
                        }
                    ),
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("step", "finetune"))
    parser.add_argument("recipe", type=Path)
    parser.add_argument("overrides", nargs="*", help="finetune: the recipe's key=value overrides")
    parser.add_argument("--rounds", type=int, default=6, help="step: rounds per side")
    parser.add_argument("--steps", type=int, default=20, help="step: training steps (batches) per round")
    parser.add_argument("--batch-size", type=int, default=16, help="step: rows per batch")
    parser.add_argument("--pairs", type=int, default=3, help="finetune: runs per side")
    args = parser.parse_intermixed_args()
    if args.mode == "step":
        step_ab(args.recipe, args.rounds, args.steps, args.batch_size)
    else:
        finetune_ab(args.recipe, args.pairs, args.overrides)


if __name__ == "__main__":
    main()
