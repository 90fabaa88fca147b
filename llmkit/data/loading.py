"""Reading labelled splits (local files or a hub dataset) into `datasets` with integer labels."""

from __future__ import annotations

import csv
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmkit.errors import DataError
from llmkit.recipe.schema import DATA_FILE_FORMATS, DataSection

if TYPE_CHECKING:
    from datasets import Dataset

LABELS = "labels"  # the column Trainer and the collators expect
SPLITS = ("train", "validation", "test")


@dataclass
class LabelledSplits:
    """Text columns plus integer `labels`; `label_names[i]` names label i."""

    splits: dict[str, Dataset]
    label_names: list[str]
    validation_carved: bool = False


def load_splits(
    data: DataSection, seed: int, unlabelled_train_names: list[str] | None = None
) -> LabelledSplits:
    """`unlabelled_train_names`: the label names of a teacher that labels the training rows
    (distillation with weight 1.0): the training split's labels are then not read, may be absent,
    and the other splits' labels are read as these names."""
    unlabelled = unlabelled_train_names is not None
    if data.train_file is not None:
        raw = _read_files(data, unlabelled)
    else:
        raw = read_hub(data)
        for split, dataset in raw.items():
            _check_columns(dataset, data, _describe_split(data, split), unlabelled and split == "train")
    if unlabelled_train_names is not None:
        return _with_teacher_labels(raw, data, unlabelled_train_names)
    label_names, to_id = _label_mapping(raw["train"], data)
    encoded = {
        split: encode_labels(ds, data, to_id, len(label_names), _describe_split(data, split))
        for split, ds in raw.items()
    }
    carved = "validation" not in encoded
    if carved:
        encoded.update(_carve_validation(encoded.pop("train"), data, seed))
    caps = {
        "train": data.max_train_samples,
        "validation": data.max_eval_samples,
        "test": data.max_eval_samples,
    }
    for split, cap in caps.items():
        if cap is not None and split in encoded and len(encoded[split]) > cap:
            encoded[split] = encoded[split].select(range(cap))
    if data.max_train_samples is not None:
        _check_capped_train_labels(encoded["train"], data, label_names)
    return LabelledSplits(splits=encoded, label_names=label_names, validation_carved=carved)


def _with_teacher_labels(
    raw: dict[str, Dataset], data: DataSection, label_names: list[str]
) -> LabelledSplits:
    """Training text without labels; validation and test labels read as the teacher's names (an
    integer label i as data.label_names[i] when given, else as written)."""
    if "validation" not in raw:
        raise DataError(
            "Training on the teacher alone (train.distill.weight 1.0) reads the training file without "
            "labels, so no labelled validation split can be carved from it.",
            hint="set data.validation_file (or data.validation_split) to labelled rows",
        )
    train = raw["train"].select_columns(data.text_columns)
    if data.max_train_samples is not None and len(train) > data.max_train_samples:
        train = train.select(range(data.max_train_samples))
    encoded = {"train": train}
    for split in ("validation", "test"):
        if split not in raw:
            continue
        values = set(raw[split][data.label_column])
        to_id = {}
        for value in values:
            number = _as_int(value)
            name = (
                data.label_names[number]
                if data.label_names is not None and number is not None and 0 <= number < len(data.label_names)
                else str(number if number is not None else value)
            )
            if name in label_names:
                to_id[value] = label_names.index(name)
        unknown = {v for v in values if v not in to_id and not _is_missing(v)}
        if unknown:
            raise DataError(
                f"{_describe_split(data, split)} has labels the teacher does not have: {_preview(unknown)} "
                f"(the teacher's labels: {', '.join(label_names)}).",
                hint="check data.label_column, and data.label_names for integer labels",
            )
        encoded[split] = encode_labels(
            raw[split], data, to_id, len(label_names), _describe_split(data, split)
        )
        cap = data.max_eval_samples
        if cap is not None and len(encoded[split]) > cap:
            encoded[split] = encoded[split].select(range(cap))
    return LabelledSplits(splits=encoded, label_names=list(label_names))


def _check_capped_train_labels(train: Dataset, data: DataSection, label_names: list[str]) -> None:
    # The first N rows of a file sorted by label can all have one label, though the whole file has more.
    present = train.unique(LABELS)
    if len(present) < 2:
        raise DataError(
            f"The first {len(train)} training rows (data.max_train_samples) all have the label "
            f"{label_names[present[0]]!r}; a classifier needs at least two.",
            hint="raise data.max_train_samples, or shuffle the training file (it may be sorted by label)",
        )


def _describe_split(data: DataSection, split: str) -> str:
    path = getattr(data, f"{split}_file", None)
    return f"'{path}'" if path is not None else f"split '{split}' of {data.dataset}"


def _read_files(data: DataSection, unlabelled_train: bool = False) -> dict[str, Dataset]:
    """Every split's file, read and column-checked; all problems are reported together."""
    paths = {split: getattr(data, f"{split}_file") for split in SPLITS}
    read: dict[str, Dataset] = {}
    problems: list[DataError] = []
    for split, path in paths.items():
        if path is None:
            continue
        try:
            read[split] = read_file(path, data)
            _check_columns(read[split], data, f"'{path}'", unlabelled_train and split == "train")
        except DataError as exc:
            problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        listing = "\n".join(f"  - {p}".replace("\n", "\n    ") for p in problems)
        raise DataError(f"{len(problems)} problems with the data files:\n{listing}")
    return read


def read_file(path: Path, data: DataSection) -> Dataset:
    """One data file, read with the recipe's reader options and checked row by row: every text
    column holds text and every label is a single value, so a bad row is reported now, with its
    file, row and column, not once the model has loaded."""
    from datasets import load_dataset

    _check_is_data_file(path)
    file_format = data.file_format(path)
    options: dict[str, Any] = {}
    if file_format == "csv":
        encoding = "utf-8-sig" if data.encoding.lower().replace("_", "-") == "utf-8" else data.encoding
        quoting = _quoting(path, data, encoding)
        _check_header(path, data, encoding, quoting)
        options = {
            "sep": data.field_delimiter(path),
            "quoting": quoting,
            # utf-8-sig reads plain UTF-8 too, and drops the byte-order mark some editors write.
            "encoding": encoding,
            # Text stays text: no 'NA'/'null' sentences turned into missing values, no numbers.
            "keep_default_na": False,
            "converters": {column: str for column in data.text_columns},
        }
    try:
        with _quiet_reading():
            dataset = load_dataset(file_format, data_files={"data": str(path)}, split="data", **options)
    except Exception as exc:  # the builders wrap parser errors in several exception types
        raise _read_error(exc, path, data) from exc
    if len(dataset) == 0:
        raise DataError(f"'{path}' has no rows.")
    _check_values(dataset, data, path)
    return dataset


def _check_is_data_file(path: Path) -> None:
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in DATA_FILE_FORMATS)
        raise DataError(
            f"'{path}' is a directory, not a data file.",
            hint=f"give one of the files in it: {', '.join(inside[:5])}"
            if inside
            else "give the path of a csv, tsv, json, jsonl or parquet file",
        )
    if not path.is_file():
        raise DataError(
            f"Data file '{path}' does not exist.",
            hint="paths in a recipe are relative to the recipe file; on the command line, to the "
            "current directory",
        )
    if path.stat().st_size == 0:
        raise DataError(f"'{path}' is empty: it has no header and no rows.", hint=_header_note(path))


def _header_note(path: Path) -> str:
    note = "a delimited file starts with a header row naming its columns, then one row per example"
    if path.suffix.lower() == ".txt":
        note = "a .txt file is read as comma-separated values: " + note
    return note


def _quoting(path: Path, data: DataSection, encoding: str) -> Literal[0, 3]:
    """The csv quoting mode to read `path` with. TSV as a format has no quoting (GLUE's files hold
    literal quote characters), so `auto` reads a tab-separated file without quote processing
    unless that breaks its rows (a quoted field holding a tab or a line break), and says so."""
    if data.quoting != "auto":
        return csv.QUOTE_NONE if data.quoting == "none" else csv.QUOTE_MINIMAL
    if data.field_delimiter(path) != "\t":
        return csv.QUOTE_MINIMAL
    try:
        with path.open(encoding=encoding, newline="") as handle:
            widths = {len(row) for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if row}
    except (UnicodeDecodeError, csv.Error):
        widths = set()  # the reader reports the problem with its line
    chosen = "none" if len(widths) <= 1 else "minimal"
    reason = "every row has the header's fields" if chosen == "none" else "a quoted field spans tabs or lines"
    print(f"data.quoting auto: reading '{path}' with quoting {chosen} ({reason})", file=sys.stderr)
    return csv.QUOTE_NONE if chosen == "none" else csv.QUOTE_MINIMAL


def _check_header(path: Path, data: DataSection, encoding: str, quoting: Literal[0, 3]) -> None:
    """The header names each column once, and at least one data row follows it."""
    try:
        with path.open(encoding=encoding, newline="") as handle:
            rows = csv.reader(
                handle,
                delimiter=data.field_delimiter(path),
                quoting=quoting,
            )
            header = next(rows, [])
            first = next((row for row in rows if row), None)
    except (UnicodeDecodeError, csv.Error):
        return  # reported with its line by the reader
    seen: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if name in seen:
            raise DataError(
                f"'{path}' names the column {name!r} twice in its header (columns {seen[name]} and "
                f"{position}).",
                hint="rename one of them: a column is read by its name",
            )
        seen[name] = position
    if first is None:
        columns = ", ".join(header)
        raise DataError(f"'{path}' has a header ({columns}) but no data rows.", hint=_header_note(path))


def _check_values(dataset: Dataset, data: DataSection, path: Path) -> None:
    """Text columns hold text, labels single values (a JSON file may hold numbers, objects, lists)."""
    problems = []
    for column in data.text_columns:
        if column in dataset.column_names and not _is_scalar(
            dataset.features[column], ("string", "large_string")
        ):
            bad = [
                (row, value)
                for row, value in enumerate(dataset[column], start=1)
                if value is not None and not isinstance(value, str)
            ]
            problems += [f"data row {row}, column '{column}': {_kind(value)}, not text" for row, value in bad]
    if data.label_column in dataset.column_names and not _is_scalar(dataset.features[data.label_column]):
        bad = [
            (row, value)
            for row, value in enumerate(dataset[data.label_column], start=1)
            if isinstance(value, list | dict)
        ]
        problems += [
            f"data row {row}, column '{data.label_column}': {_kind(value)}, not a single label"
            for row, value in bad
        ]
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:10]) + ("\n  ..." if len(problems) > 10 else "")
        raise DataError(
            f"'{path}' has {len(problems)} value(s) of the wrong kind:\n{shown}",
            hint="text columns hold strings and labels one string or integer each; fix those rows",
        )


def _is_scalar(feature: Any, dtypes: tuple[str, ...] | None = None) -> bool:
    """A column type that holds only plain values (of `dtypes`), so no row needs looking at."""
    from datasets import Value

    return isinstance(feature, Value) and (dtypes is None or feature.dtype in dtypes)


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    text = json_preview(value)
    return f"{names.get(type(value), type(value).__name__)} ({text})"


def json_preview(value: Any) -> str:
    import json

    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


@contextmanager
def _quiet_reading() -> Iterator[None]:
    """No 'Generating split' bars or logged tracebacks while reading: errors are reported once."""
    import datasets

    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    level = datasets.logging.get_verbosity()
    datasets.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if was_enabled:
            datasets.utils.logging.enable_progress_bar()


_FIELD_COUNT = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _read_error(exc: BaseException, path: Path, data: DataSection) -> DataError:
    decode = _find_cause(exc, UnicodeDecodeError)
    if isinstance(decode, UnicodeDecodeError):
        return DataError(
            f"'{path}' is not valid {data.encoding} text (byte {decode.start}: {decode.reason}).",
            hint="set data.encoding to the file's encoding, e.g. data.encoding=latin-1",
        )
    cause = _root_cause(exc)
    fields = _FIELD_COUNT.search(cause)
    if fields:
        expected, line, seen = fields.groups()
        delimiter = repr(data.field_delimiter(path))
        return DataError(
            f"'{path}' line {line} has {seen} fields separated by {delimiter}; the header has {expected}.",
            hint="fix that row, or check data.delimiter and data.quoting (files whose quote "
            "characters are text, such as GLUE's TSVs, need data.quoting=none)",
        )
    return DataError(
        f"Could not read '{path}' as {data.file_format(path)}: {cause}", hint=_read_hint(path, data)
    )


def _find_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _read_hint(path: Path, data: DataSection) -> str:
    if data.file_format(path) == "csv":
        return (
            "check data.delimiter and data.quoting; files with literal quote characters "
            "(such as GLUE's TSVs) need data.quoting=none"
        )
    return "check that the file is valid for its extension"


def read_hub(data: DataSection) -> dict[str, Dataset]:
    from datasets import load_dataset

    assert data.dataset is not None
    wanted = {"train": data.train_split, "validation": data.validation_split, "test": data.test_split}
    try:
        available = load_dataset(data.dataset, data.config)
    except Exception as exc:
        raise DataError(
            f"Could not load dataset '{data.dataset}' from the Hugging Face hub: {_root_cause(exc)}",
            hint="without network access, export the splits to csv/jsonl/parquet and set "
            "data.train_file (and data.validation_file, data.test_file)",
        ) from exc
    if data.train_split not in available:
        raise DataError(
            f"Dataset '{data.dataset}' has no split '{data.train_split}'.",
            hint=f"set data.train_split to one of: {', '.join(available)}",
        )
    return {
        split: available[name] for split, name in wanted.items() if name is not None and name in available
    }


def _check_columns(dataset: Dataset, data: DataSection, where: str, unlabelled: bool = False) -> None:
    columns = dataset.column_names
    wanted = data.text_columns if unlabelled else [*data.text_columns, data.label_column]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(
            f"{where} has no column {', '.join(repr(c) for c in missing)}; its columns are: "
            f"{', '.join(columns)}.",
            hint="set data.text_columns and data.label_column to columns the file has",
        )


def _is_missing(value: Any) -> bool:
    # A literal NaN (what pandas and spreadsheets write for an empty cell) is no label either.
    if isinstance(value, str):
        return value.strip().lower() in ("", "nan")
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _label_mapping(train: Dataset, data: DataSection) -> tuple[list[str], dict[Any, int]]:
    values = train[data.label_column]
    _check_no_missing(values, f"the training data ({_describe_split(data, 'train')})", data)
    distinct = set(values)
    as_ints = {value: _as_int(value) for value in distinct}
    numeric = all(number is not None for number in as_ints.values())
    if data.label_names is not None:
        names = data.label_names
        if not numeric or not all(0 <= as_ints[v] < len(names) for v in distinct):  # type: ignore[operator]
            raise DataError(
                f"data.label_names names {len(names)} labels, so labels must be integers "
                f"0..{len(names) - 1}; the training data has: {_preview(distinct)}.",
                hint="drop data.label_names to use the labels as written",
            )
        return list(names), {v: as_ints[v] for v in distinct}  # type: ignore[misc]
    numbers = {value: number for value, number in as_ints.items() if number is not None}
    ordered = sorted(distinct, key=numbers.__getitem__) if numeric else sorted(distinct, key=str)
    names = [str(as_ints[v]) if numeric else str(v) for v in ordered]
    if len(names) < 2:
        raise DataError(
            f"The training data has a single label ({names[0]!r}); a classifier needs at least two.",
            hint="check data.label_column, and that data.max_train_samples does not cut a sorted file",
        )
    return names, {value: index for index, value in enumerate(ordered)}


def _check_no_missing(values: list[Any], where: str, data: DataSection) -> None:
    rows = [i for i, value in enumerate(values) if _is_missing(value)]
    if rows:
        shown = ", ".join(str(r + 1) for r in rows[:10]) + (" ..." if len(rows) > 10 else "")
        raise DataError(
            f"{len(rows)} rows of {where} have no '{data.label_column}' label (data rows {shown}).",
            hint="fill in or remove those rows",
        )


def _preview(values: set[Any]) -> str:
    shown = sorted(map(str, values))[:10]
    return ", ".join(shown) + (" ..." if len(values) > 10 else "")


def encode_labels(
    dataset: Dataset, data: DataSection, to_id: dict[Any, int], num_labels: int, where: str
) -> Dataset:
    from datasets import ClassLabel, Value

    values = dataset[data.label_column]
    _check_no_missing(values, where, data)
    by_key = {_label_key(k): v for k, v in to_id.items()}
    unseen = {v for v in set(values) if _label_key(v) not in by_key}
    if unseen:
        raise DataError(
            f"{where} has labels that never occur in the training data: {_preview(unseen)}.",
            hint="a classifier can only predict labels it was trained on; check data.label_column",
        )
    ids = [by_key[_label_key(v)] for v in values]
    keep = [*data.text_columns]
    dataset = dataset.select_columns(keep).add_column(LABELS, ids, feature=Value("int64"))
    return dataset.cast_column(LABELS, ClassLabel(num_classes=num_labels))


def _label_key(value: Any) -> Any:
    # 1, 1.0 and "1" are the same label when a file's column types differ between splits.
    number = _as_int(value)
    return number if number is not None else str(value)


def _carve_validation(train: Dataset, data: DataSection, seed: int) -> dict[str, Dataset]:
    """A seeded validation split with every label in the proportion train has it (stratified)."""
    _check_carvable(train, data)
    parts = train.train_test_split(test_size=data.validation_fraction, seed=seed, stratify_by_column=LABELS)
    return {"train": parts["train"], "validation": parts["test"]}


def _check_carvable(train: Dataset, data: DataSection) -> None:
    """A stratified split needs two examples of each label (one to train on, one to validate) and
    room for every label on both sides."""
    from collections import Counter

    names = train.features[LABELS].names
    counts = Counter(train[LABELS])
    where = f"the training data ({_describe_split(data, 'train')})"
    fix = "give a validation file (data.validation_file), or add examples of those labels"
    alone = sorted(names[label] for label, count in counts.items() if count < 2)
    if alone:
        raise DataError(
            f"Cannot carve a validation split from {where}: label{'s' if len(alone) > 1 else ''} "
            f"{', '.join(repr(a) for a in alone)} {'have' if len(alone) > 1 else 'has'} a single "
            "example, and a stratified split needs at least two of each label (one to train on, one "
            "to validate).",
            hint=f"{fix} (or remove those rows)",
        )
    size = math.ceil(len(train) * data.validation_fraction)
    if size < len(counts) or len(train) - size < len(counts):
        raise DataError(
            f"Cannot carve a validation split from {where}: data.validation_fraction "
            f"{data.validation_fraction} of {len(train)} rows gives {size} validation rows, fewer than "
            f"the {len(counts)} labels.",
            hint=f"raise data.validation_fraction, or {fix}",
        )
