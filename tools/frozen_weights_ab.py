"""An adapter's frozen weights held in bf16 for the whole training (what llmkit does:
llmkit/training/precision.py frozen_weights_in_half_precision) against autocast casting them at
every step (what Trainer does), #17; docs/bench-sst2-expert-cpu.md has the figures.

    .venv/bin/python tools/frozen_weights_ab.py recipes/sst2-smollm2-lora.yaml --batch-size 16
    .venv/bin/python tools/frozen_weights_ab.py recipes/sst2-minilm-lora.yaml --batch-size 32

One process, the recipe's model and method, training steps (bf16 autocast forward and backward
of a batch of SST-2 rows of similar length, clipping, the fused AdamW step) over the same batches
in rounds that alternate the two sides (this machine's speed drifts within minutes, so only sides
measured this way are compared). It checks first that both sides give the same loss to the bit,
then prints one JSON line: ms per training step for each side, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from first_position_ab import recipe_model, sentences  # tools/ is on the path of a script run from it

from llmkit.data.loading import LABELS
from llmkit.training.precision import frozen_weights_in_half_precision, training_attention_kernels


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12, help="training steps (batches) per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per side")
    args = parser.parse_args()

    recipe, loaded, model = recipe_model(args.recipe)
    # Batches of rows of similar length, as length grouping makes them, spread over the lengths.
    by_length = sorted(sentences(recipe.data.train_file)[:3000], key=len)
    stride = (len(by_length) - args.batch_size) // max(args.steps - 1, 1)
    batches = []
    for start in range(0, stride * args.steps, stride):
        rows = by_length[start : start + args.batch_size]
        batch = dict(loaded.tokenizer(rows, padding=True, return_tensors="pt"))
        batch[LABELS] = torch.randint(0, 2, (len(rows),))
        batches.append(batch)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-9, fused=True)

    def loss_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(**batch).loss

    def one_round(held_in_bf16: bool) -> float:
        with frozen_weights_in_half_precision(model, "bf16" if held_in_bf16 else "fp32", engine_owned=False):
            start = time.perf_counter()
            for batch in batches:
                loss_of(batch).backward()
                torch.nn.utils.clip_grad_norm_(parameters, recipe.train.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            return (time.perf_counter() - start) * 1000 / len(batches)

    model.train()
    with training_attention_kernels(True, "cpu"):
        with frozen_weights_in_half_precision(model, "bf16", engine_owned=False) as held:
            held_loss = loss_of(batches[0]).detach()
        assert torch.equal(held_loss, loss_of(batches[0]).detach()), "the two sides compute different losses"
        one_round(False), one_round(True)  # warm-up
        times: dict[str, list[float]] = {"autocast_casts_every_step_ms": [], "held_in_bf16_ms": []}
        for _ in range(args.rounds):
            times["autocast_casts_every_step_ms"].append(one_round(False))
            times["held_in_bf16_ms"].append(one_round(True))
    means = {name: sum(values) / len(values) for name, values in times.items()}
    print(
        json.dumps(
            {
                "recipe": str(args.recipe),
                "batch_size": args.batch_size,
                "frozen_values_held": held,
                **{name: [round(v, 1) for v in values] for name, values in times.items()},
                "speedup": round(means["autocast_casts_every_step_ms"] / means["held_in_bf16_ms"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
