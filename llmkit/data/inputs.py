"""Input files of trained runs (`llmkit evaluate --data`, `llmkit predict`), read with the reader
and the reader options training used, so a file parses the same way in every command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import DataError
from llmkit.recipe.schema import DATA_FILE_FORMATS, DataSection

if TYPE_CHECKING:
    from datasets import Dataset

    from llmkit.data.tagged import TagColumns

STDIN = "-"
DEFAULT_ID_COLUMN = "id"  # copied to predict's output rows when the input has it


def read_table(path: Path, data: DataSection, required: list[str], hint: str) -> Dataset:
    """A data file read with the run's reader options (delimiter, quoting, encoding)."""
    from llmkit.data.loading import read_file  # the reader training used, so files parse alike

    if not path.exists():
        raise DataError(f"Input file '{path}' does not exist.")
    if path.suffix.lower() not in DATA_FILE_FORMATS and not path.is_dir():
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
        hint=f"the run reads text from {_names(data.text_columns)}: rename the file's column(s), or add "
        "data.text_columns=NAME to the predict command (NAME: the file's column holding the text)"
        + (f"; --id-column {id_column} names a column the file lacks" if id_column else ""),
    )
    for column in data.text_columns:
        empty = [i + 1 for i, text in enumerate(dataset[column]) if text is None]
        if empty:
            raise DataError(f"'{source}' has rows with no '{column}' text (data rows {_rows(empty)}).")
    return dataset


def _names(columns: list[str]) -> str:
    return ", ".join(f"'{c}'" for c in columns)


def _rows(rows: list[int]) -> str:
    return ", ".join(map(str, rows[:10])) + (" ..." if len(rows) > 10 else "")


def read_sentences(source: str, data: DataSection, columns: TagColumns, id_column: str | None) -> Dataset:
    """Sentences to tag, as `text`, `tokens` (words) and `offsets` (each word's character start and
    end in `text`): raw text from `-` (standard input) or a .txt file, one sentence per line, split
    into words at whitespace; a .conll file's words (first column); or a csv/jsonl/json/parquet
    file's list-of-words column (task.tokens_column, pre-split) or else its text column."""
    from datasets import Dataset

    from llmkit.data.tagged import read_conll

    if source == STDIN or Path(source).suffix.lower() == ".txt":
        if source == STDIN:
            lines = [line.rstrip("\r\n") for line in sys.stdin]
        else:
            path = Path(source)
            if not path.is_file():
                raise DataError(f"Input file '{path}' does not exist.")
            lines = path.read_text(encoding=data.encoding).splitlines()
        texts = [line for line in lines if line.strip()]
        if not texts:
            raise DataError(f"{'Standard input' if source == STDIN else repr(source)} holds no text.")
        return Dataset.from_dict(_split_texts(texts))
    path = Path(source)
    if path.suffix.lower() == ".conll":
        if not path.is_file():
            raise DataError(f"Input file '{path}' does not exist.")
        words, _ = read_conll(path, columns.conll_tag_column, data.encoding, tags_required=False)
        return Dataset.from_dict(_joined(words))
    text_column = data.text_columns[0]
    dataset = read_table(
        path,
        data,
        [*([id_column] if id_column else [])],
        hint=f"--id-column {id_column} names a column the file lacks",
    )
    if columns.tokens in dataset.column_names:
        found = _joined([[str(word) for word in row] for row in dataset[columns.tokens]])
    elif text_column in dataset.column_names:
        found = _split_texts([str(text) if text is not None else "" for text in dataset[text_column]])
    else:
        raise DataError(
            f"'{source}' has neither a '{columns.tokens}' column (lists of words) nor a '{text_column}' "
            f"column (text); its columns are: {', '.join(dataset.column_names)}.",
            hint="set task.tokens_column or data.text_columns to the file's column",
        )
    for column in {id_column or DEFAULT_ID_COLUMN} & set(dataset.column_names):
        found[column] = list(dataset[column])  # copied to each output row
    return Dataset.from_dict(found)


def _split_texts(texts: list[str]) -> dict[str, list[Any]]:
    import re

    words, offsets = [], []
    for text in texts:
        matches = list(re.finditer(r"\S+", text))
        words.append([match.group() for match in matches])
        offsets.append([[match.start(), match.end()] for match in matches])
    return {"text": texts, "tokens": words, "offsets": offsets}


def _joined(sentences: list[list[str]]) -> dict[str, list[Any]]:
    """Pre-split words joined by single spaces: the text the offsets point into."""
    texts, offsets = [], []
    for words in sentences:
        spans, position = [], 0
        for word in words:
            spans.append([position, position + len(word)])
            position += len(word) + 1
        texts.append(" ".join(words))
        offsets.append(spans)
    return {"text": texts, "tokens": sentences, "offsets": offsets}
