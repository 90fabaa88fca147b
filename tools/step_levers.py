"""Per-step cost of MiniLM full fine-tuning on length-grouped SST-2 batches, for the speed levers
of issue #17 that change how a step is computed rather than what it computes: eager (what llmkit
and Trainer run), torch.compile with dynamic shapes, torch.compile with lengths padded to buckets,
and the word embeddings frozen (no dense embedding gradient, half the optimizer's work).

`--batching llmkit` (the default) cuts batches as llmkit's trainer does (ShuffledLengthGroupedSampler);
`--batching trainer` as Trainer's `group_by_length` does, which is what the figures in
docs/bench-sst2-expert-cpu.md were measured on (llmkit used it then).

One variant per process (compiled graphs and caches stay out of the next one); compare variants
measured one after the other on an idle machine, never across machines:

    for v in eager compile-dynamic eager frozen-embeddings; do
        .venv/bin/python tools/step_levers.py $v --model DIR --train ../shared/data/sst2/train.tsv
    done
    .venv/bin/python tools/step_levers.py compile-static --pad-multiple 16 ...   # and eager with it

It prints one JSON line: ms per step in forward+backward, gradient clipping and the optimizer,
over the steps that did not compile, and the seconds spent in steps that did.
docs/bench-sst2-expert-cpu.md has the figures measured with it.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import get_length_grouped_indices

from llmkit.training.trainer import ShuffledLengthGroupedSampler

VARIANTS = ("eager", "compile-dynamic", "compile-static", "frozen-embeddings")
COMPILING_STEP_S = 3.0  # a step this slow compiled a graph; kept out of the per-step figures


def length_grouped_batches(
    args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase
) -> list[dict[str, torch.Tensor]]:
    """Length-grouped batches of the first `rows` training rows (llmkit's or Trainer's grouping),
    in random order."""
    with open(args.train, encoding="utf-8") as handle:
        lines = handle.read().splitlines()[1 : args.rows + 1]
    labels = [int(line.split("\t")[0]) for line in lines]
    encoded = [tokenizer(line.split("\t")[1], truncation=True, max_length=128)["input_ids"] for line in lines]
    lengths = [len(ids) for ids in encoded]
    generator = torch.Generator().manual_seed(1)
    if args.batching == "llmkit":
        sampler = ShuffledLengthGroupedSampler(args.batch_size, lengths=lengths, generator=generator)
        order = list(sampler)
    else:
        order = get_length_grouped_indices(lengths, args.batch_size, generator=generator)
    batches = []
    for start in range(0, len(order), args.batch_size):
        chosen = order[start : start + args.batch_size]
        batch = tokenizer.pad(
            {"input_ids": [encoded[i] for i in chosen]},
            return_tensors="pt",
            pad_to_multiple_of=args.pad_multiple,
        )
        batch["labels"] = torch.tensor([labels[i] for i in chosen])
        batches.append(dict(batch))
    random.Random(0).shuffle(batches)
    return batches[: args.steps]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--model", required=True, help="a BERT-style checkpoint directory (MiniLM)")
    parser.add_argument("--train", required=True, help="SST-2 train.tsv (label<TAB>sentence)")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument(
        "--batching",
        choices=("llmkit", "trainer"),
        default="llmkit",
        help="llmkit's length-grouped batches or Trainer's group_by_length",
    )
    parser.add_argument(
        "--pad-multiple", type=int, default=None, help="pad each batch's length up to a multiple"
    )
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    batches = length_grouped_batches(args, tokenizer)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    model.train()
    # Set before the first step: the model sets it there, which would make a compiled graph recompile.
    model.config.problem_type = "single_label_classification"
    if args.variant == "frozen-embeddings":
        model.get_input_embeddings().weight.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=5e-5, weight_decay=0.01, fused=True)  # Trainer's default
    forward = model
    if args.variant.startswith("compile"):
        forward = torch.compile(model, dynamic=args.variant == "compile-dynamic")

    spent = {"forward_backward": 0.0, "clip": 0.0, "optimizer": 0.0}
    compiling_s, compiled_steps = 0.0, 0
    for batch in batches:
        started = time.perf_counter()
        forward(**batch).loss.backward()
        backward_done = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        clipped = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ended = time.perf_counter()
        if ended - started > COMPILING_STEP_S:
            compiling_s += ended - started
            compiled_steps += 1
            continue
        spent["forward_backward"] += backward_done - started
        spent["clip"] += clipped - backward_done
        spent["optimizer"] += ended - clipped
    timed = max(len(batches) - compiled_steps, 1)
    per_step = {f"{name}_ms": round(1000 * seconds / timed, 1) for name, seconds in spent.items()}
    print(
        json.dumps(
            {
                "variant": args.variant,
                "pad_multiple": args.pad_multiple,
                "steps_timed": timed,
                "compiling_steps": compiled_steps,
                "compiling_s": round(compiling_s, 1),
                **per_step,
                "step_ms": round(sum(per_step.values()), 1),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
