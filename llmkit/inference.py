"""The batched forward pass of a trained model over tokenised rows, shared by `llmkit evaluate`,
`llmkit predict` and the tasks, and the loss computed from its logits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmkit.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

# Tokenizer outputs a classifier takes; anything else in a tokenised split stays out of batches.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_input_columns(encoded: Dataset) -> dict[str, list[Any]]:
    """The split's model inputs as plain lists, read in one piece: a datasets Column read element
    by element costs ~30 us a row (60 ms for SST-2's 872 dev rows, half of predicting them with a
    one-layer model on CPU, where fixed costs show as they do for a small model on a GPU); arrow's
    conversion of the whole column, ~4 ms."""
    return encoded.select_columns([name for name in MODEL_INPUTS if name in encoded.column_names]).to_dict()


def predict_logits(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Dataset,
    batch_size: int,
    sort_by_length: bool = True,
    description: str = "Predicting",
    precision: str = "fp32",
) -> np.ndarray:
    """Logits (rows x labels, float32) in the order of `encoded`, a tokenised, unpadded split,
    computed in `precision` (the run's train.precision: training's evaluation used it too).

    Sorting by length puts similar lengths in one batch, so little time goes on padding; it
    changes which rows share a batch, and so the logits in their last bits. `sort_by_length=False`
    batches rows as they come, as Trainer's evaluation does, for bit-identical results."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm
    from transformers import DataCollatorWithPadding

    from llmkit.training.precision import torch_dtype

    columns = model_input_columns(encoded)
    count = len(encoded)
    order = list(range(count))
    if sort_by_length:
        # Longest first: a batch that does not fit in memory fails at once, not at the end.
        order.sort(key=lambda i: -len(columns["input_ids"][i]))
    collate = DataCollatorWithPadding(tokenizer)
    device = next(model.parameters()).device
    logits: np.ndarray | None = None
    dtype = torch_dtype(precision)
    # Mixed precision as Trainer's evaluation computes it: matmuls in half precision, the rest fp32.
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with (
        torch.inference_mode(),
        autocast,
        tqdm(total=count, desc=description, unit="rows", disable=None) as bar,
    ):
        for start in range(0, count, batch_size):
            rows = order[start : start + batch_size]
            batch = collate([{name: values[i] for name, values in columns.items()} for i in rows])
            output = model(**{name: tensor.to(device) for name, tensor in batch.items()})
            scores = output.logits.float().cpu().numpy()
            if logits is None:
                logits = np.empty((count, scores.shape[-1]), dtype=np.float32)
            logits[rows] = scores
            bar.update(len(rows))
    if logits is None:
        raise DataError("There are no rows to predict.")
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
    encoded: Dataset,
    batch_size: int,
    sort_by_length: bool = True,
    description: str = "Predicting",
    precision: str = "fp32",
) -> list[np.ndarray]:
    """Per row of `encoded`, in its order, the logits of each of its tokens (tokens x labels,
    float32), batched and computed as `predict_logits` does. Positions a method prepends (prompt
    tuning's virtual tokens) are dropped: row i's logits are those of its own tokens."""
    import torch
    from tqdm.auto import tqdm
    from transformers import DataCollatorWithPadding

    from llmkit.training.precision import torch_dtype

    columns = model_input_columns(encoded)
    count = len(encoded)
    order = list(range(count))
    if sort_by_length:
        order.sort(key=lambda i: -len(columns["input_ids"][i]))
    collate = DataCollatorWithPadding(tokenizer)
    device = next(model.parameters()).device
    rows: list[np.ndarray | None] = [None] * count
    dtype = torch_dtype(precision)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with (
        torch.inference_mode(),
        autocast,
        tqdm(total=count, desc=description, unit="rows", disable=None) as bar,
    ):
        for start in range(0, count, batch_size):
            chosen = order[start : start + batch_size]
            batch = collate([{name: values[i] for name, values in columns.items()} for i in chosen])
            output = model(**{name: tensor.to(device) for name, tensor in batch.items()})
            width = batch["input_ids"].shape[1]
            scores = output.logits[:, -width:].float().cpu().numpy()
            for position, index in enumerate(chosen):
                rows[index] = scores[position, : len(columns["input_ids"][index])]
            bar.update(len(chosen))
    if count == 0:
        raise DataError("There are no rows to predict.")
    return [row for row in rows if row is not None]
