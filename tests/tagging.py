"""Helpers for the token-classification tests: tagged sentences over the tiny checkpoints' words
(so the word-level tiny BERT knows every word), written as CoNLL column files."""

from __future__ import annotations

import random
from pathlib import Path

from helpers import FILLERS, NEGATIVE, POSITIVE

# Cue words are entities: positive ones POS, negative ones NEG; "very"/"really" before a cue word
# belong to its entity (B- then I-), so the data has multi-word entities and I- tags.
INTENSIFIERS = ("very", "really")
PLAIN = tuple(word for word in FILLERS if word not in INTENSIFIERS)


def tagged_sentence(rng: random.Random, words: int | None = None) -> tuple[list[str], list[str]]:
    length = words or rng.randint(3, 9)
    tokens: list[str] = []
    tags: list[str] = []
    while len(tokens) < length:
        roll = rng.random()
        if roll < 0.25:
            kind, cue = rng.choice((("POS", POSITIVE), ("NEG", NEGATIVE)))
            if rng.random() < 0.4:
                tokens += [rng.choice(INTENSIFIERS), rng.choice(cue)]
                tags += [f"B-{kind}", f"I-{kind}"]
            else:
                tokens.append(rng.choice(cue))
                tags.append(f"B-{kind}")
        else:
            tokens.append(rng.choice(PLAIN))
            tags.append("O")
    return tokens, tags


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]], docstart: bool = False) -> Path:
    lines = ["-DOCSTART- -X- O", ""] if docstart else []
    for tokens, tags in sentences:
        lines += [f"{token} X {tag}" for token, tag in zip(tokens, tags, strict=True)]
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tagged_files(directory: Path, train: int = 160, validation: int = 40, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    train_rows = [tagged_sentence(rng) for _ in range(train)]
    validation_rows = [tagged_sentence(rng) for _ in range(validation)]
    train_path = write_conll(directory / "train.txt", train_rows, docstart=True)
    validation_path = write_conll(directory / "validation.txt", validation_rows)
    return train_path, validation_path
