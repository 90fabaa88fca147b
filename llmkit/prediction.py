"""`llmkit predict`: the task's predictions from a trained run (for sequence classification: the
label and every label's probability), one output row per input row, in input order, keeping the
input's id column."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from llmkit.data.inputs import DEFAULT_ID_COLUMN, STDIN
from llmkit.errors import DataError
from llmkit.fsutil import check_output_file, dumps, write_or_rescue
from llmkit.runs import check_data_overrides, load_model, read_run

if TYPE_CHECKING:
    from llmkit.tasks import Task

OUTPUT_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}


def predict_to_file(
    run_dir: Path,
    source: str,
    output: Path | None = None,
    id_column: str | None = None,
    batch_size: int | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
) -> int:
    """Predict every row of `source` (a file, or `-` for stdin) and write them to `output`
    (jsonl, csv or tsv by extension; jsonl on stdout when None). Returns the number of rows.
    The output is checked before any work: never the input, an existing file only with
    `overwrite`, in a place that can be written."""
    output_format = _output_format(output)
    inputs = [Path(source)] if source != STDIN else []
    if output is not None:
        check_output_file(output, overwrite, "output file", inputs, example="predictions.jsonl")
    check_data_overrides(overrides or [], "predict")
    trained = read_run(run_dir, overrides, command="predict")
    task = trained.task
    if output_format != "jsonl" and task.csv_columns(trained.label_names) is None:
        raise DataError(
            f"A {trained.recipe.task.name} run writes nested predictions, which {output_format} cannot hold.",
            hint="name the output file .jsonl",
        )
    data = trained.recipe.data
    dataset = task.read_unlabelled(source, data, id_column)
    key = id_column or (DEFAULT_ID_COLUMN if DEFAULT_ID_COLUMN in dataset.column_names else None)
    # Standard input has no id: each text stands for itself.
    key = data.text_columns[0] if source == STDIN else key
    ids = list(dataset[key]) if key is not None else None
    loaded = load_model(trained)
    batch_size = batch_size or trained.recipe.train.eval_batch_size
    precision = trained.recipe.train.precision
    predictions = task.predict(
        loaded.model, loaded.tokenizer, dataset, data, trained.label_names, batch_size, precision
    )
    rows = list(_with_ids(predictions, key, ids))
    if output is None:
        _write(rows, sys.stdout, output_format, task, trained.label_names, key)
    else:
        text = io.StringIO(newline="")
        _write(rows, text, output_format, task, trained.label_names, key)
        write_or_rescue(output, text.getvalue(), "predictions")
    return len(rows)


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


def _with_ids(
    predictions: Iterator[dict[str, Any]], key: str | None, ids: list[Any] | None
) -> Iterator[dict[str, Any]]:
    for index, prediction in enumerate(predictions):
        record: dict[str, Any] = {key: ids[index]} if key is not None and ids is not None else {}
        record.update(prediction)
        yield record


def _write(
    rows: list[dict[str, Any]],
    handle: IO[str],
    output_format: str,
    task: Task,
    label_names: list[str],
    key: str | None,
) -> None:
    if output_format == "jsonl":
        for record in rows:
            handle.write(dumps(record, ensure_ascii=False) + "\n")
        return
    columns = task.csv_columns(label_names)
    assert columns is not None  # checked before predicting
    writer = csv.writer(handle, delimiter="\t" if output_format == "tsv" else ",", lineterminator="\n")
    writer.writerow([*([key] if key else []), *columns])
    for record in rows:
        writer.writerow([*([record[key]] if key else []), *task.csv_values(record, label_names)])
