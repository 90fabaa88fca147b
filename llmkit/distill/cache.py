"""The teacher's logits over the training set, computed once before the first epoch and kept in
the run directory as memory-mapped numpy arrays, so every epoch after costs what training without
a teacher costs, and `--resume` reads them instead of running the teacher again.

Layout of `teacher/` (written under a temporary name and renamed into place when complete):
`logits.npy` (positions x labels float32; generation: positions x top_k), `indices.npy`
(generation: the top-k token ids), `positions.npy` (each value's position in its training row,
int32), `offsets.npy` (row i's values are offsets[i]:offsets[i+1]) and `cache.json`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from datasets import Dataset

    from llmkit.distill.teacher import Teacher
    from llmkit.recipe.schema import DataSection

CACHE_DIR = "teacher"
META_FILE = "cache.json"
# Keys the collator adds to a training batch; the trainer takes them out before the forward pass.
TEACHER_LOGITS, TEACHER_INDICES, TEACHER_MASK = "teacher_logits", "teacher_indices", "teacher_mask"
ROW = "distill_row"  # the training row's index into the cache, a column of the training split


@dataclass(frozen=True)
class TeacherRequest:
    """What a task needs to compute the teacher's targets: the teacher, the student's label order
    (`order`: the teacher's column for each of the student's labels, None when they agree), the
    training split as read (`raw_train`, for a teacher with its own tokenizer) and as the student
    tokenised it (`train`), the data section, the batch size and, for generation, top_k."""

    teacher: Teacher
    order: list[int] | None
    raw_train: Dataset
    train: Dataset
    data: DataSection
    batch_size: int
    top_k: int


@dataclass
class TeacherTargets:
    """What the task computed from the teacher, per training row: the positions of the row it
    distils and, at each, the teacher's logits (or top-k logits and their token ids)."""

    positions: list[np.ndarray]  # per row, int
    logits: list[np.ndarray]  # per row, positions x width; NaN where the teacher has no value
    indices: list[np.ndarray] | None = None  # per row, positions x top_k (generation)


def fingerprint(train: Dataset, teacher_source: str) -> str:
    """What the cache was computed for: the teacher and the tokenised training rows."""
    import numpy as np

    digest = hashlib.sha256(teacher_source.encode())
    for ids in train["input_ids"]:
        digest.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()[:16]


def cache_bytes(positions: int, width: int, top_k: bool) -> int:
    """Size of the cache: float32 values, int32 token ids (top-k), int32 positions."""
    return positions * (width * 4 + (width * 4 if top_k else 0) + 4)


class TeacherCache:
    def __init__(self, directory: Path) -> None:
        import numpy as np

        self.directory = directory
        self.meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        self.logits = np.load(directory / "logits.npy", mmap_mode="r")
        self.positions = np.load(directory / "positions.npy", mmap_mode="r")
        self.offsets = np.load(directory / "offsets.npy")
        indices = directory / "indices.npy"
        self.indices = np.load(indices, mmap_mode="r") if indices.is_file() else None

    @staticmethod
    def matches(directory: Path, key: str, rows: int) -> bool:
        """Whether `directory` holds a complete cache for these rows and this teacher."""
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return meta.get("fingerprint") == key and meta.get("rows") == rows

    @staticmethod
    def write(directory: Path, targets: TeacherTargets, meta: dict[str, Any]) -> None:
        import numpy as np

        lengths = [len(p) for p in targets.positions]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        width = next((row.shape[1] for row in targets.logits if len(row)), 0)
        np.save(directory / "offsets.npy", offsets)
        np.save(directory / "positions.npy", _stack(targets.positions, np.int32, None))
        np.save(directory / "logits.npy", _stack(targets.logits, np.float32, width))
        if targets.indices is not None:
            np.save(directory / "indices.npy", _stack(targets.indices, np.int32, width))
        summary = {**meta, "rows": len(lengths), "positions": int(offsets[-1]), "width": width}
        (directory / META_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())

    def batch(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """The teacher's values for these training rows, padded to the batch: (rows, width of the
        furthest position + 1, labels or top_k), and a mask of the positions that have one."""
        import numpy as np
        import torch

        spans = [(int(self.offsets[r]), int(self.offsets[r + 1])) for r in rows]
        positions = [np.asarray(self.positions[a:b]) for a, b in spans]
        width = max((int(p.max()) + 1 for p in positions if len(p)), default=1)
        classes = self.logits.shape[1]
        logits = np.zeros((len(rows), width, classes), dtype=np.float32)
        mask = np.zeros((len(rows), width), dtype=bool)
        indices = np.zeros((len(rows), width, classes), dtype=np.int64) if self.indices is not None else None
        for i, ((start, end), where) in enumerate(zip(spans, positions, strict=True)):
            values = np.asarray(self.logits[start:end])
            known = np.isfinite(values).all(axis=1)  # NaN: the teacher had nothing for that word
            logits[i, where[known]] = values[known]
            mask[i, where[known]] = True
            if indices is not None and self.indices is not None:
                indices[i, where] = np.asarray(self.indices[start:end])
        batch = {TEACHER_LOGITS: torch.from_numpy(logits), TEACHER_MASK: torch.from_numpy(mask)}
        if indices is not None:
            batch[TEACHER_INDICES] = torch.from_numpy(indices)
        return batch


def _stack(rows: list[np.ndarray], dtype: Any, width: int | None) -> np.ndarray:
    import numpy as np

    shape = (0,) if width is None else (0, width)
    kept = [np.asarray(row, dtype=dtype).reshape((-1, *shape[1:])) for row in rows]
    return np.concatenate(kept) if kept else np.zeros(shape, dtype=dtype)


class DistillationCollator:
    """The task's collator, plus the teacher's cached values for the training rows of the batch.
    Evaluation batches (rows without a cache index) are the task's alone."""

    def __init__(self, base: Any, cache: TeacherCache) -> None:
        self.base = base
        self.cache = cache

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        if ROW not in features[0]:
            return self.base(features)
        rows = [int(feature[ROW]) for feature in features]
        batch = self.base([{k: v for k, v in feature.items() if k != ROW} for feature in features])
        batch.update(self.cache.batch(rows))
        return batch
