"""`llmkit predict`: labels and per-label probabilities from a trained run, one output row per
input row, in input order, keeping the input's id column."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from llmkit.errors import DataError
from llmkit.inference import STDIN, load_model, predict_logits, read_run, read_unlabelled, softmax

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset

    from llmkit.models.loading import LoadedModel
    from llmkit.recipe.schema import DataSection

OUTPUT_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
DEFAULT_ID_COLUMN = "id"
DIGITS = 6  # probabilities rounded for reading; argmax is taken before rounding


def predict_to_file(
    run_dir: Path,
    source: str,
    output: Path | None = None,
    id_column: str | None = None,
    batch_size: int | None = None,
) -> int:
    """Predict every row of `source` (a file, or `-` for stdin) and write them to `output`
    (jsonl, csv or tsv by extension; jsonl on stdout when None). Returns the number of rows."""
    output_format = _output_format(output)
    trained = read_run(run_dir)
    data = trained.recipe.data
    dataset = read_unlabelled(source, data, id_column)
    key = id_column or (DEFAULT_ID_COLUMN if DEFAULT_ID_COLUMN in dataset.column_names else None)
    # Standard input has no id: each text stands for itself.
    key = data.text_columns[0] if source == STDIN else key
    ids = list(dataset[key]) if key is not None else None
    loaded = load_model(trained)
    batch_size = batch_size or trained.recipe.train.eval_batch_size
    precision = trained.recipe.train.precision
    probabilities = predict_probabilities(loaded, dataset, data, batch_size, precision)
    rows = _rows(probabilities, trained.label_names, key, ids)
    if output is None:
        _write(rows, sys.stdout, output_format, trained.label_names, key)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", encoding="utf-8", newline="") as handle:
            _write(rows, handle, output_format, trained.label_names, key)
    return len(probabilities)


def predict_probabilities(
    loaded: LoadedModel, dataset: Dataset, data: DataSection, batch_size: int, precision: str
) -> np.ndarray:
    """Per-label probabilities (rows x labels) of the texts in `dataset`'s text columns, in order:
    tokenised as training tokenised, batched by similar length, computed in `precision`."""
    from llmkit.data.tokenize import tokenize_split

    tokenised = tokenize_split(
        dataset.select_columns(data.text_columns),
        loaded.tokenizer,
        data.text_columns,
        data.max_length,
        "input",
    )
    logits = predict_logits(loaded.model, loaded.tokenizer, tokenised, batch_size, precision=precision)
    return softmax(logits)


def _output_format(output: Path | None) -> str:
    if output is None:
        return "jsonl"
    found = OUTPUT_FORMATS.get(output.suffix.lower())
    if found is None:
        raise DataError(
            f"Cannot tell the output format of '{output}' from its extension.",
            hint="name the output file .jsonl or .csv (or .tsv)",
        )
    return found


def _rows(
    probabilities: np.ndarray, label_names: list[str], key: str | None, ids: list[Any] | None
) -> Iterator[dict[str, Any]]:
    for index, row in enumerate(probabilities):
        record: dict[str, Any] = {key: ids[index]} if key is not None and ids is not None else {}
        record["label"] = label_names[int(row.argmax())]
        record["probabilities"] = {
            name: round(float(p), DIGITS) for name, p in zip(label_names, row, strict=True)
        }
        yield record


def _write(
    rows: Iterator[dict[str, Any]],
    handle: IO[str],
    output_format: str,
    label_names: list[str],
    key: str | None,
) -> None:
    if output_format == "jsonl":
        for record in rows:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    header = [*([key] if key else []), "label", *(f"prob_{name}" for name in label_names)]
    writer = csv.writer(handle, delimiter="\t" if output_format == "tsv" else ",", lineterminator="\n")
    writer.writerow(header)
    for record in rows:
        probabilities = record.pop("probabilities")
        writer.writerow([*record.values(), *(probabilities[name] for name in label_names)])
