"""Tokenising labelled splits once, without padding: batches are padded later, to their own
longest example, by the collator."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from llmkit.data.loading import LABELS

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[list[str]], max_length: int) -> Any:
    """Token ids and masks of the texts (one list per text column: a text, or a sentence pair),
    unpadded, cut at `max_length`: how every split is tokenised for a model to read."""
    return tokenizer(*texts, truncation=True, max_length=max_length)


def tokenize_split(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    text_columns: list[str],
    max_length: int,
    split: str,
) -> Dataset:
    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        return encode_texts(tokenizer, [batch[column] for column in text_columns], max_length)

    drop = [c for c in dataset.column_names if c != LABELS]
    # datasets names the result by hashing `encode`, tokenizer included (it pickles the whole
    # vocabulary: 0.15-0.45 s, more than predicting 872 SST-2 rows then takes with a one-layer
    # model on CPU, where fixed costs show as they do for a small model on a GPU). The name only
    # keys a cache file, which a dataset held in memory never writes; datasets read from files
    # keep their cache, and so the hash.
    fingerprint = None if dataset.cache_files else secrets.token_hex(16)
    return dataset.map(
        encode, batched=True, remove_columns=drop, desc=f"Tokenising {split}", new_fingerprint=fingerprint
    )


def sorted_by_length(dataset: Dataset) -> Dataset:
    """Evaluation order that pads least: metrics do not depend on the order of examples."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return dataset.select(sorted(range(len(lengths)), key=lengths.__getitem__))
