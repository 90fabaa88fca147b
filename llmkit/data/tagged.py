"""Reading tagged sentences (token classification) into `datasets` with `tokens` (words) and
`tag_ids`: CoNLL-style column files (.txt, .tsv, .conll: one word per line, whitespace-separated
columns, a blank line between sentences, -DOCSTART- lines skipped), JSON/JSONL/parquet with a
list-of-words and a list-of-tags column, and hub datasets whose tags are a ClassLabel sequence.

The label set comes from the training split. Tags that only other splits have are reported (a
warning with counts) and left out of scoring, as run_ner does; so are tag-scheme violations."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.data.loading import LabelledSplits
from llmkit.data.words import IGNORED
from llmkit.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

    from llmkit.recipe.schema import DataSection

COLUMN_FILES = (".txt", ".tsv", ".conll")
LIST_FILES = (".json", ".jsonl", ".parquet")
TOKENS, TAG_IDS = "tokens", "tag_ids"
DOCUMENT_START = "-DOCSTART-"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class TagColumns:
    tokens: str = "tokens"
    tags: str = "tags"
    conll_tag_column: int = -1


def read_conll(
    path: Path, tag_column: int, encoding: str, tags_required: bool = True
) -> tuple[list[list[str]], list[list[str]]]:
    """Words (first column) and tags (column `tag_column`, -1: last) of each sentence; without
    `tags_required`, lines may hold the word alone (its tag is then empty)."""
    sentences: list[list[str]] = []
    tags: list[list[str]] = []
    words: list[str] = []
    labels: list[str] = []
    text_encoding = "utf-8-sig" if encoding.lower().replace("_", "-") == "utf-8" else encoding
    try:
        lines = path.read_text(encoding=text_encoding).splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(
            f"'{path}' is not valid {encoding} text (byte {exc.start}: {exc.reason}).",
            hint="set data.encoding to the file's encoding, e.g. data.encoding=latin-1",
        ) from exc
    for number, line in enumerate(lines, start=1):
        columns = line.split()
        if not columns or columns[0] == DOCUMENT_START:
            if words:
                sentences.append(words)
                tags.append(labels)
                words, labels = [], []
            continue
        if len(columns) < 2 and not tags_required:
            words.append(columns[0])
            labels.append("")
            continue
        if len(columns) < 2:
            raise DataError(
                f"'{path}' line {number} has one column ({line.strip()!r}); a CoNLL file has the word "
                "and at least its tag on each line.",
                hint="separate the word and its tag by a space or a tab; a blank line ends a sentence",
            )
        try:
            tag = columns[tag_column]
        except IndexError:
            raise DataError(
                f"'{path}' line {number} has {len(columns)} columns; task.conll_tag_column is {tag_column}.",
                hint="task.conll_tag_column counts from 0 (the word), or from the end when negative "
                "(-1, the default: the last column)",
            ) from None
        words.append(columns[0])
        labels.append(tag)
    if words:
        sentences.append(words)
        tags.append(labels)
    return sentences, tags


def read_tagged_file(path: Path, data: DataSection, columns: TagColumns) -> Dataset:
    """One file as `tokens` and `tags` (tag names) columns."""
    from datasets import Dataset

    if not path.is_file():
        raise DataError(
            f"Data file '{path}' does not exist.",
            hint="paths in a recipe are relative to the recipe file; on the command line, to the "
            "current directory",
        )
    suffix = path.suffix.lower()
    if suffix in COLUMN_FILES:
        words, tags = read_conll(path, columns.conll_tag_column, data.encoding)
        if not words:
            raise DataError(f"'{path}' has no sentences.")
        return Dataset.from_dict({TOKENS: words, "tags": tags})
    if suffix not in LIST_FILES:
        raise DataError(
            f"Token classification reads CoNLL column files ({', '.join(COLUMN_FILES)}) or "
            f"{', '.join(LIST_FILES)} files with a list of words and a list of tags per row; "
            f"'{path}' is neither.",
            hint="convert the file, or rename a CoNLL column file to .txt",
        )
    from llmkit.data.loading import read_file

    return as_words_and_tags(read_file(path, data), columns, f"'{path}'")


def as_words_and_tags(dataset: Dataset, columns: TagColumns, where: str) -> Dataset:
    """A dataset with list columns as `tokens` and `tags` (names, from a ClassLabel sequence too)."""
    missing = [c for c in (columns.tokens, columns.tags) if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{where} has no column {', '.join(repr(c) for c in missing)}; its columns are: "
            f"{', '.join(dataset.column_names)}.",
            hint="set task.tokens_column and task.tags_column to the columns with the lists of "
            "words and of tags",
        )
    names = _class_label_names(dataset.features[columns.tags])
    words = list(dataset[columns.tokens])
    tags = list(dataset[columns.tags])
    for row, (row_words, row_tags) in enumerate(zip(words, tags, strict=True), start=1):
        if not isinstance(row_words, list) or not isinstance(row_tags, list):
            raise DataError(
                f"{where} row {row}: '{columns.tokens}' and '{columns.tags}' must be lists (of words "
                "and of tags).",
                hint="write each sentence as a list of words and a list of tags of the same length",
            )
        if len(row_words) != len(row_tags):
            raise DataError(
                f"{where} row {row} has {len(row_words)} words and {len(row_tags)} tags.",
                hint="every word needs exactly one tag",
            )
    if names is not None:
        tags = [[names[int(tag)] for tag in row] for row in tags]
    from datasets import Dataset

    return Dataset.from_dict({TOKENS: [[str(w) for w in row] for row in words], "tags": tags})


def _class_label_names(feature: Any) -> list[str] | None:
    inner = getattr(feature, "feature", None)
    names = getattr(inner, "names", None)
    return list(names) if names else None


def label_set(train_tags: list[list[str]]) -> list[str]:
    """Tag names sorted by entity type then prefix (B-, I-, ...), `O` first."""
    distinct = {tag for row in train_tags for tag in row}
    if not distinct:
        raise DataError("The training data has no tags.")

    def key(tag: str) -> tuple[int, str, str]:
        prefix, _, kind = tag.partition("-")
        return (0, "", "") if tag == "O" else (1, kind or prefix, prefix)

    return sorted(distinct, key=key)


def encode_tags(dataset: Dataset, label_names: list[str], where: str, notes: list[str]) -> Dataset:
    """`tags` as ids of `label_names`; tags the model was not trained on become -100 (not scored),
    reported in `notes`."""
    ids = {name: index for index, name in enumerate(label_names)}
    unseen: Counter[str] = Counter()
    encoded = []
    for row in dataset["tags"]:
        encoded_row = []
        for tag in row:
            if tag in ids:
                encoded_row.append(ids[tag])
            else:
                unseen[tag] += 1
                encoded_row.append(IGNORED)
        encoded.append(encoded_row)
    if unseen:
        listing = ", ".join(f"{tag} ({count})" for tag, count in unseen.most_common(10))
        notes.append(
            f"{where} has tags that never occur in the training data: {listing}; those words are "
            "not scored (the model cannot predict them)"
        )
    return dataset.remove_columns("tags").add_column(TAG_IDS, encoded)


def check_scheme(tags: list[list[str]], scheme: str, where: str) -> str | None:
    """A note counting tags that break the scheme (e.g. `I-X` after `O` in IOB2), or None."""
    problems: Counter[str] = Counter()
    example: dict[str, str] = {}
    for row in tags:
        previous = "O"
        for position, tag in enumerate(row):
            following = row[position + 1] if position + 1 < len(row) else "O"
            problem = _violation(previous, tag, following, scheme)
            if problem:
                problems[problem] += 1
                example.setdefault(problem, f"{previous} {tag}")
            previous = tag
    if not problems:
        return None
    listing = "; ".join(
        f"{count} x {name} (e.g. '{example[name]}')" for name, count in problems.most_common()
    )
    return (
        f"{where} breaks the {scheme} tag scheme: {listing}. Strict entity scoring drops such "
        "entities; check task.scheme"
    )


def _violation(previous: str, tag: str, following: str, scheme: str) -> str | None:
    prefix, _, kind = tag.partition("-")
    if tag == "O":
        return None
    if not kind or prefix not in _PREFIXES[scheme]:
        return f"tag without a {'/'.join(_PREFIXES[scheme])}- prefix"
    before, _, before_kind = previous.partition("-")
    continues = previous != "O" and before_kind == kind
    if scheme == "IOB2" and prefix == "I" and not continues:
        return "I- tag that does not continue an entity of its type"
    if scheme == "IOB1" and prefix == "B" and not continues:
        return "B- tag that does not follow an entity of its type (IOB1 uses B- only between two)"
    if scheme == "BIOES":
        if prefix in ("I", "E") and (not continues or before in ("E", "S")):
            return f"{prefix}- tag that does not continue an entity of its type"
        after, _, after_kind = following.partition("-")
        ends = not (after in ("I", "E") and after_kind == kind)
        if prefix in ("B", "I") and ends:
            return f"{prefix}- tag not followed by I- or E- of its type"
    return None


_PREFIXES = {"IOB2": ("B", "I"), "IOB1": ("B", "I"), "BIOES": ("B", "I", "O", "E", "S")}


def report(notes: list[str]) -> None:
    """Warnings about the data, on standard error: training goes on."""
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)


def load_tagged_splits(data: DataSection, columns: TagColumns, scheme: str, seed: int) -> LabelledSplits:
    """Every split of the recipe's data as `tokens` and `tag_ids`, the label set from train; notes
    on unseen tags and scheme breaks are reported on standard error."""
    raw: dict[str, Dataset] = {}
    if data.train_file is not None:
        for split in SPLITS:
            path = getattr(data, f"{split}_file")
            if path is not None:
                raw[split] = read_tagged_file(path, data, columns)
    else:
        from llmkit.data.loading import read_hub

        for split, dataset in read_hub(data).items():
            raw[split] = as_words_and_tags(dataset, columns, f"split '{split}' of {data.dataset}")
    label_names = label_set(list(raw["train"]["tags"]))
    notes: list[str] = []
    encoded = {}
    for split, dataset in raw.items():
        where = _describe(data, split)
        note = check_scheme(list(dataset["tags"]), scheme, where)
        if note:
            notes.append(note)
        encoded[split] = encode_tags(dataset, label_names, where, notes)
    carved = "validation" not in encoded
    if carved:
        parts = encoded.pop("train").train_test_split(test_size=data.validation_fraction, seed=seed)
        encoded.update(train=parts["train"], validation=parts["test"])
    caps = {
        "train": data.max_train_samples,
        "validation": data.max_eval_samples,
        "test": data.max_eval_samples,
    }
    for split, cap in caps.items():
        if cap is not None and split in encoded and len(encoded[split]) > cap:
            encoded[split] = encoded[split].select(range(cap))
    report(notes)
    return LabelledSplits(splits=encoded, label_names=label_names, validation_carved=carved)


def _describe(data: DataSection, split: str) -> str:
    path = getattr(data, f"{split}_file", None)
    return f"'{path}'" if path is not None else f"split '{split}' of {data.dataset}"
