"""Running a trained model: reopening a run directory, reading input files the way the run read
its data, and batched prediction shared by `llmkit evaluate` and `llmkit predict`."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from llmkit.errors import DataError, RunDirectoryError
from llmkit.recipe.schema import DATA_FILE_FORMATS, DataSection, Recipe
from llmkit.rundir import RECIPE_FILE, RunDirectory

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from llmkit.models.loading import LoadedModel

STDIN = "-"
# Tokenizer outputs a classifier takes; anything else in a tokenised split stays out of batches.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class TrainedRun:
    run: RunDirectory
    recipe: Recipe
    label_names: list[str]


def read_run(path: Path, overrides: list[str] | None = None) -> TrainedRun:
    """A completed run's recipe (with `KEY=VALUE` overrides) and label names, without the model."""
    from llmkit.models.loading import LABELS_FILE
    from llmkit.recipe.loading import apply_overrides

    run = RunDirectory.open(path)
    recipe_path = run.path / RECIPE_FILE
    try:
        tree = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
        label_names = json.loads((run.model_dir / LABELS_FILE).read_text())["label_names"]
    except (OSError, ValueError, KeyError, yaml.YAMLError) as exc:
        raise RunDirectoryError(
            f"'{path}' looks like a run, but its {RECIPE_FILE} or model/{LABELS_FILE} cannot be read: {exc}",
            hint="the run directory may be damaged; train it again",
        ) from exc
    if not isinstance(tree, dict):
        raise RunDirectoryError(f"'{recipe_path}' does not hold a recipe.")
    recipe = apply_overrides(tree, overrides or [], str(recipe_path))
    return TrainedRun(run=run, recipe=recipe, label_names=list(label_names))


def load_model(trained: TrainedRun, checkpoint: Path | None = None) -> LoadedModel:
    """The run's trained model (or `checkpoint`, e.g. its merged copy), in eval mode on the GPU
    if there is one, and its tokenizer."""
    import warnings

    import torch

    from llmkit.models.loading import load_trained
    from llmkit.pipeline import quiet_libraries

    quiet_libraries()
    # PEFT notes that GPT-2's fused Conv1D layers need fan_in_fan_out, and sets it: nothing to do.
    warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False", category=UserWarning)
    model_section = trained.recipe.model
    source = checkpoint if checkpoint is not None else trained.run.model_dir
    if checkpoint is not None and not (checkpoint / "config.json").is_file():
        raise RunDirectoryError(
            f"'{checkpoint}' is not a model checkpoint: it has no config.json.",
            hint="give a directory written by `llmkit merge` or save_pretrained",
        )
    loaded = load_trained(source, model_section.checkpoint, model_section.revision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded.model = loaded.model.to(device).eval()
    return loaded


def read_table(path: Path, data: DataSection, required: list[str], hint: str) -> Dataset:
    """A data file read with the run's reader options (delimiter, quoting, encoding)."""
    from llmkit.data.loading import read_file  # the reader training used, so files parse alike

    if not path.is_file():
        raise DataError(f"Input file '{path}' does not exist.")
    if path.suffix.lower() not in DATA_FILE_FORMATS:
        raise DataError(
            f"'{path}' has an unknown extension.", hint=f"use one of: {', '.join(sorted(DATA_FILE_FORMATS))}"
        )
    dataset = read_file(path, data)
    missing = [column for column in required if column not in dataset.column_names]
    if missing:
        raise DataError(
            f"'{path}' has no column {', '.join(repr(c) for c in missing)}; its columns are: "
            f"{', '.join(dataset.column_names)}.",
            hint=hint,
        )
    return dataset


def read_labelled_file(path: Path, data: DataSection, label_names: list[str]) -> Dataset:
    """A labelled file with `labels` as the ids the model was trained with (not ids derived from
    this file's own label set, which may lack some classes), capped at data.max_eval_samples."""
    from llmkit.data.loading import encode_labels

    dataset = read_table(
        path,
        data,
        [*data.text_columns, data.label_column],
        hint=f"the run reads text from {_names(data.text_columns)} and labels from '{data.label_column}': "
        "rename the file's columns, or override data.text_columns / data.label_column",
    )
    ids: dict[Any, int] = {name: index for index, name in enumerate(label_names)}
    if data.label_names is not None:  # the training data wrote ids 0..n-1; accept them and names
        ids.update({index: index for index in range(len(label_names))})
    encoded = encode_labels(dataset, data, ids, len(label_names), f"'{path}'")
    cap = data.max_eval_samples
    return encoded.select(range(cap)) if cap is not None and len(encoded) > cap else encoded


def read_unlabelled(source: str, data: DataSection, id_column: str | None) -> Dataset:
    """Texts to classify: a data file with the run's text columns, or `-` for one text per line
    on standard input (blank lines skipped)."""
    from datasets import Dataset

    if source == STDIN:
        if len(data.text_columns) != 1:
            raise DataError(
                f"This run classifies text pairs ({_names(data.text_columns)}); standard input gives one "
                "text per line.",
                hint="pass a csv, tsv or jsonl file with both columns as --input",
            )
        lines = [line.rstrip("\r\n") for line in sys.stdin]
        texts = [line for line in lines if line.strip()]
        if not texts:
            raise DataError("Standard input holds no text.", hint="give one text per line")
        return Dataset.from_dict({data.text_columns[0]: texts})
    required = [*data.text_columns, *([id_column] if id_column else [])]
    dataset = read_table(
        Path(source),
        data,
        required,
        hint=f"the run reads text from {_names(data.text_columns)}: rename the file's column(s), or "
        "pass data.text_columns=NAME"
        + (f"; --id-column {id_column} names a column the file lacks" if id_column else ""),
    )
    for column in data.text_columns:
        empty = [i + 1 for i, text in enumerate(dataset[column]) if text is None]
        if empty:
            raise DataError(f"'{source}' has rows with no '{column}' text (data rows {_rows(empty)}).")
    return dataset


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

    # Plain lists: reading a datasets Column element by element costs ~35 us an access.
    columns = {name: list(encoded[name]) for name in MODEL_INPUTS if name in encoded.column_names}
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


def _names(columns: list[str]) -> str:
    return ", ".join(f"'{c}'" for c in columns)


def _rows(rows: list[int]) -> str:
    return ", ".join(map(str, rows[:10])) + (" ..." if len(rows) > 10 else "")
