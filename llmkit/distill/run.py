"""Distillation within a run: the teacher checked against the student before anything is written
(labels by name, or the vocabulary for generation), its logits cached before the first epoch (or
reused from the run directory on resume), and what results.json and --dry-run say about it.

What differs per task (the positions distilled, how the teacher reads the text, the student's
logits at those positions) is asked of the task (llmkit.tasks.registry.Task)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.distill.cache import CACHE_DIR, TeacherCache, TeacherRequest, cache_bytes, fingerprint

if TYPE_CHECKING:
    from datasets import Dataset

    from llmkit.distill.teacher import Teacher
    from llmkit.recipe.schema import DataSection, DistillSection, Recipe
    from llmkit.tasks import Task

MB = 2**20


@dataclass
class Distillation:
    options: DistillSection
    teacher: Teacher
    order: list[int] | None  # per student label, the teacher's column; None: outputs as they are
    raw_train: Dataset  # the training rows as read, for a teacher that tokenizes them itself
    positions: int  # distilled positions over the training set
    width: int  # values kept per position: labels, or top_k
    cache: dict[str, Any] = field(default_factory=dict)  # how the cache was made, for results.json
    logits: TeacherCache | None = None  # the cached logits, once `cache_logits` has run

    @property
    def cache_bytes(self) -> int:
        return cache_bytes(self.positions, self.width, self.top_k)

    @property
    def top_k(self) -> bool:
        """Whether the cache keeps the teacher's top-k tokens (generation) rather than every label."""
        return self.order is None

    def label_check(self, label_names: list[str]) -> str:
        if self.order is None:
            return "vocabulary: the teacher's and the student's are the same"
        reordered = self.order != list(range(len(self.order)))
        names = ", ".join(label_names)
        return f"labels: the teacher's match by name ({names})" + (
            "; its columns are reordered to the student's" if reordered else ""
        )

    def describe_lines(self, label_names: list[str]) -> list[str]:
        """--dry-run's lines about distillation."""
        weight, temperature = self.options.weight, self.options.resolved_temperature
        return [
            self.teacher.summary(),
            f"  {self.label_check(label_names)}",
            f"  loss: (1 - {weight:g}) x task loss + {weight:g} x {temperature:g}^2 x "
            f"KL(teacher || student) at temperature {temperature:g}",
            f"  teacher logits cache: {self.positions} positions x {self.width} "
            f"{'top-k values' if self.top_k else 'labels'}, {self.cache_bytes / MB:.2f} MB in "
            f"{CACHE_DIR}/, computed once before the first epoch",
        ]

    def record(self) -> dict[str, Any]:
        """results.json's `distill`: the settings, the teacher and its cache."""
        settings = self.options.model_dump(mode="json", exclude={"teacher"})
        return {"teacher": self.teacher.describe(), **settings, "cache": self.cache}

    def cache_logits(
        self, run_dir: Path, train: Dataset, task: Task, data: DataSection, batch_size: int
    ) -> None:
        """The teacher's logits for `train` (the tokenised training split): read from the run
        directory when a complete cache for these rows and this teacher is there (a resumed run),
        else computed now and written. The teacher model is released after, as training does not
        need it again."""
        from llmkit.fsutil import replace_dir

        directory = run_dir / CACHE_DIR
        key = fingerprint(train, str(self.teacher.source))
        start = time.perf_counter()
        built = not TeacherCache.matches(directory, key, len(train))
        if built:
            print(
                f"distillation: computing the teacher's logits over {len(train)} training rows",
                file=sys.stderr,
            )
            request = TeacherRequest(
                self.teacher, self.order, self.raw_train, train, data, batch_size, self.options.top_k
            )
            targets = task.teacher_targets(request)
            meta = {"fingerprint": key, "teacher": str(self.teacher.source)}
            replace_dir(directory, lambda staging: TeacherCache.write(staging, targets, meta), kind=None)
        else:
            print(f"distillation: reusing the teacher's logits cached in {directory}", file=sys.stderr)
        self.logits = TeacherCache(directory)
        self.cache = {
            "path": CACHE_DIR,  # in the run directory
            "positions": int(self.logits.offsets[-1]),
            "bytes": self.logits.size_bytes,
            "computed_now": built,
            "seconds": round(time.perf_counter() - start, 3),
        }
        self.release_teacher()

    def release_teacher(self) -> None:
        import gc

        self.teacher.model = None
        gc.collect()


def plan_distillation(
    recipe: Recipe,
    task: Task,
    teacher: Teacher,
    student_tokenizer: Any,
    student_model: Any,
    label_names: list[str],
    raw_train: Dataset,
    tokenised_train: Dataset,
) -> Distillation:
    """Check that `teacher` can teach this student (before anything is written) and size its cache."""
    assert recipe.train.distill is not None
    order = task.align_teacher(teacher, student_tokenizer, student_model, label_names)
    positions = sum(len(task.distillation_positions(row)) for row in tokenised_train)
    width = len(label_names) if order is not None else recipe.train.distill.top_k
    return Distillation(
        options=recipe.train.distill,
        teacher=teacher,
        order=order,
        raw_train=raw_train,
        positions=positions,
        width=width,
    )
