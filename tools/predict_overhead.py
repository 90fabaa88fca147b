"""`llmkit predict`'s engine against a transformers `pipeline("text-classification")` on a model so
small that its forward passes cost next to nothing: what is left is each side's fixed cost per call
and per row (tokenising, batching, copying), the cost that dominates a small model on a GPU (#17).

    .venv/bin/python tools/predict_overhead.py --tokenizer DIR --rows ../shared/data/sst2/dev.tsv
    .venv/bin/python tools/predict_overhead.py --tokenizer DIR --rows ... --model DIR   # a real model

It prints one line per repeat: milliseconds for all rows on each side and their ratio (above 1:
llmkit is faster). docs/bench-sst2-expert-cpu.md has the figures measured with it.
"""

from __future__ import annotations

import argparse
import time

import torch
from datasets import Dataset
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, pipeline

from llmkit.recipe.schema import DataSection
from llmkit.tasks.sequence_classification import predict_probabilities


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", required=True, help="a BERT-style checkpoint directory (MiniLM)")
    parser.add_argument("--rows", required=True, help="SST-2 dev.tsv (label<TAB>sentence)")
    parser.add_argument("--model", help="a classifier checkpoint; default: a random one-layer, 32-wide BERT")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    with open(args.rows, encoding="utf-8") as handle:
        texts = [line.rstrip("\n").split("\t")[1] for line in handle.read().splitlines()[1:]]
    if args.model:
        model = BertForSequenceClassification.from_pretrained(args.model, num_labels=2)
    else:
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
        config.num_labels = 2
        model = BertForSequenceClassification(config)
    model.eval()
    rows = Dataset.from_dict({"sentence": texts})
    data = DataSection.model_validate(
        {"train_file": args.rows, "validation_file": args.rows, "text_columns": ["sentence"]}, strict=False
    )
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer, device=torch.device("cpu"))

    def ours(dataset: Dataset) -> object:
        return predict_probabilities(model, tokenizer, dataset, data, args.batch_size, "fp32")

    def theirs(inputs: list[str]) -> object:
        return list(classifier(inputs, batch_size=args.batch_size, truncation=True, max_length=128))

    ours(rows.select(range(16)))  # first calls pay for lazy initialisation
    theirs(texts[:16])
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours(rows)
        llmkit_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs(texts)
        pipeline_s = time.perf_counter() - start
        print(
            f"{len(texts)} rows: llmkit {1000 * llmkit_s:.0f} ms, pipeline {1000 * pipeline_s:.0f} ms, "
            f"ratio {pipeline_s / llmkit_s:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
