"""The batched forward pass of a trained model over tokenised rows, shared by `llmkit evaluate`,
`llmkit predict` and the tasks, and the loss computed from its logits."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from llmkit.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

# Tokenizer outputs a classifier takes; anything else in a tokenised split stays out of batches.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
NO_ROWS = "There are no rows to predict."


def model_input_columns(encoded: Dataset | Mapping[str, Any]) -> dict[str, list[Any]]:
    """The model inputs of a tokenised split (a Dataset) or of a tokenizer's output, as plain
    lists. A Dataset is read in one piece: a datasets Column read element by element costs ~30 us
    a row (60 ms for SST-2's 872 dev rows, half of predicting them with a one-layer model on CPU,
    where fixed costs show as they do for a small model on a GPU); arrow's conversion of the
    whole column, ~4 ms."""
    if isinstance(encoded, Mapping):
        return {name: list(encoded[name]) for name in MODEL_INPUTS if name in encoded}
    return encoded.select_columns([name for name in MODEL_INPUTS if name in encoded.column_names]).to_dict()


def padded_batch(
    columns: dict[str, list[Any]], rows: list[int], tokenizer: PreTrainedTokenizerBase
) -> dict[str, torch.Tensor]:
    """The model inputs of `rows`, padded to the longest of them on the tokenizer's padding side
    with its pad values: the tensors DataCollatorWithPadding makes, built from the id lists in one
    step (the collator's tokenizer.pad took 1.3 ms for 64 SST-2 rows, as long as a one-layer
    model's forward pass over them)."""
    import torch

    width = max(len(columns["input_ids"][i]) for i in rows)
    pad_values = {
        "input_ids": tokenizer.pad_token_id,
        "attention_mask": 0,
        "token_type_ids": tokenizer.pad_token_type_id,
    }
    left = tokenizer.padding_side == "left"
    batch = {}
    for name, values in columns.items():
        pad = pad_values[name]
        if left:
            padded = [[pad] * (width - len(values[i])) + list(values[i]) for i in rows]
        else:
            padded = [list(values[i]) + [pad] * (width - len(values[i])) for i in rows]
        batch[name] = torch.tensor(padded, dtype=torch.long)
    return batch


def batched_logits(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Dataset | Mapping[str, Any],
    batch_size: int,
    sort_by_length: bool,
    description: str,
    precision: str,
) -> Iterator[tuple[list[int], list[int], np.ndarray]]:
    """Forward passes over `encoded`'s rows in batches: for each batch, its row indices, their
    lengths and their logits (rows x labels, or rows x padded width x labels for a model with
    logits per position: those of the rows' own positions, a method's prepended ones dropped;
    float32), computed in `precision` (the run's train.precision: training's evaluation used it
    too).

    Sorting by length puts similar lengths in one batch, so little time goes on padding; it
    changes which rows share a batch, and so the logits in their last bits. `sort_by_length=False`
    batches rows as they come, as Trainer's evaluation does, for bit-identical results.

    A batch's logits are copied to the host after the next batch's forward pass is queued: the
    copy waits for the device, which on a GPU then already has the next batch to compute while
    this one is read and the one after is padded (on a CPU the order changes nothing; not yet
    measured on a GPU)."""
    from tqdm.auto import tqdm

    from llmkit.training.precision import inference_precision

    columns = model_input_columns(encoded)
    count = len(columns["input_ids"])
    if count == 0:
        raise DataError(NO_ROWS)
    lengths = [len(ids) for ids in columns["input_ids"]]
    order = list(range(count))
    if sort_by_length:
        # Longest first: a batch that does not fit in memory fails at once, not at the end.
        order.sort(key=lambda i: -lengths[i])
    device = next(model.parameters()).device
    pending: tuple[list[int], torch.Tensor] | None = None
    with (
        inference_precision(model, precision, device.type),
        tqdm(total=count, desc=description, unit="rows", disable=None) as bar,
    ):

        def read(rows: list[int], logits: torch.Tensor) -> tuple[list[int], list[int], np.ndarray]:
            bar.update(len(rows))
            return rows, [lengths[i] for i in rows], logits.float().cpu().numpy()

        for start in range(0, count, batch_size):
            rows = order[start : start + batch_size]
            batch = padded_batch(columns, rows, tokenizer)
            logits = model(**{name: tensor.to(device) for name, tensor in batch.items()}).logits
            if logits.dim() == 3:  # prompt tuning's virtual tokens come first
                logits = logits[:, -batch["input_ids"].shape[1] :]
            if pending is not None:
                yield read(*pending)
            pending = (rows, logits)
        if pending is not None:
            yield read(*pending)


def predict_logits(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Dataset | Mapping[str, Any],
    batch_size: int,
    sort_by_length: bool = True,
    description: str = "Predicting",
    precision: str = "fp32",
) -> np.ndarray:
    """Logits (rows x labels, float32) in the order of `encoded`, a tokenised, unpadded split (or
    a tokenizer's output), batched and computed as `batched_logits` says."""
    import numpy as np

    batches = list(
        batched_logits(model, tokenizer, encoded, batch_size, sort_by_length, description, precision)
    )
    logits = np.empty((sum(len(rows) for rows, _, _ in batches), batches[0][2].shape[-1]), dtype=np.float32)
    for rows, _, scores in batches:
        logits[rows] = scores
    return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    import numpy as np

    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def mean_cross_entropy(logits: np.ndarray, labels: list[int]) -> float:
    """The mean loss over rows, as Trainer reports `eval_loss` (its per-batch means, weighted by
    batch size, are this mean)."""
    import torch

    per_row = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.tensor(labels, dtype=torch.long), reduction="none"
    )
    return float(per_row.double().mean())


def token_logits(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Dataset | Mapping[str, Any],
    batch_size: int,
    sort_by_length: bool = True,
    description: str = "Predicting",
    precision: str = "fp32",
) -> list[np.ndarray]:
    """Per row of `encoded`, in its order, the logits of each of its tokens (tokens x labels,
    float32), batched and computed as `batched_logits` says."""
    rows_logits: dict[int, np.ndarray] = {}
    for rows, lengths, scores in batched_logits(
        model, tokenizer, encoded, batch_size, sort_by_length, description, precision
    ):
        for position, (index, length) in enumerate(zip(rows, lengths, strict=True)):
            rows_logits[index] = scores[position, :length]
    return [rows_logits[index] for index in range(len(rows_logits))]
