"""The teacher of a distilled run: a completed llmkit run (its model, method, precision, label
names and data.max_length are the run's) or a fine-tuned checkpoint directory, loaded once, in
eval mode, without gradients, on the device training uses; and how its label space is matched
to the student's, by name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError, ModelError

if TYPE_CHECKING:
    from llmkit.recipe.schema import DistillSection, Recipe
    from llmkit.tasks import Task

HINT = "set train.distill.teacher to a completed `llmkit finetune` run directory or a fine-tuned checkpoint"


@dataclass
class Teacher:
    source: Path
    kind: str  # "run" or "checkpoint"
    model: Any  # eval mode, requires_grad off
    tokenizer: Any
    label_names: list[str]
    precision: str  # what its inference computes in: the run's train.precision
    max_length: int  # tokens per example when it reads the text itself
    checkpoint: str  # the run's model.checkpoint, or the checkpoint directory
    method: str | None  # the run's method
    validation: dict[str, float] | None  # the run's validation metrics

    @property
    def architecture(self) -> str:
        return type(_base(self.model)).__name__ if self.model is not None else self._architecture

    def __post_init__(self) -> None:
        # Kept for the record once the model is released (after the cache is written).
        self._architecture = type(_base(self.model)).__name__

    def describe(self) -> dict[str, Any]:
        """The teacher as results.json records it."""
        return {
            "source": str(self.source),
            "kind": self.kind,
            "checkpoint": self.checkpoint,
            "architecture": self.architecture,
            "method": self.method,
            "precision": self.precision,
            "max_length": self.max_length,
            "label_names": self.label_names,
            "validation_metrics": self.validation,
        }

    def summary(self) -> str:
        """One line for --dry-run."""
        what = (
            f"run {self.source} ({self.checkpoint}, method {self.method})"
            if self.kind == "run"
            else (f"checkpoint {self.source}")
        )
        shown = ""
        if self.validation:
            shown = ", validation " + ", ".join(
                f"{k} {v:.4f}" for k, v in self.validation.items() if isinstance(v, int | float)
            )
        return f"teacher: {what}: {self.architecture}, {self.precision}{shown}"


def load_teacher(recipe: Recipe, task: Task) -> Teacher:
    """The recipe's teacher, loaded without disturbing the random-number state the student's
    initialisation and data order are seeded from (loading an adapter run builds a head first)."""
    import torch

    distill = recipe.train.distill
    assert distill is not None
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        teacher = _load(Path(distill.teacher), recipe, task)
    teacher.model.requires_grad_(False)
    teacher.model.eval()
    return teacher


def _load(source: Path, recipe: Recipe, task: Task) -> Teacher:
    from llmkit.rundir import RECIPE_FILE

    if (source / RECIPE_FILE).is_file():
        return _load_run(source, recipe, task)
    if (source / "config.json").is_file():
        return _load_checkpoint(source, recipe, task)
    found = "does not exist" if not source.exists() else "has neither a recipe.yaml (a run) nor a config.json"
    raise LlmkitError(f"The distillation teacher '{source}' {found}.", hint=HINT)


def _load_run(source: Path, recipe: Recipe, task: Task) -> Teacher:
    from llmkit.rundir import RESULTS_FILE
    from llmkit.runs import load_model, read_run

    trained = read_run(source, command="distillation")
    if trained.recipe.task.name != recipe.task.name:
        raise LlmkitError(
            f"The teacher run '{source}' was trained for {trained.recipe.task.name}; this recipe's task "
            f"is {recipe.task.name}.",
            hint=f"choose a teacher run of task {recipe.task.name}",
        )
    loaded = load_model(trained)
    validation = None
    try:
        results = json.loads((source / RESULTS_FILE).read_text(encoding="utf-8"))
        validation = results.get("metrics", {}).get("validation")
    except (OSError, ValueError):
        pass  # metrics are a record, not needed to teach
    return Teacher(
        source=source,
        kind="run",
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        label_names=trained.label_names,
        precision=trained.recipe.train.precision,
        max_length=trained.recipe.data.max_length,
        checkpoint=trained.recipe.model.checkpoint,
        method=trained.recipe.method.name,
        validation=validation,
    )


def _load_checkpoint(source: Path, recipe: Recipe, task: Task) -> Teacher:
    """A fine-tuned checkpoint: it must carry a trained head for the task (a base checkpoint would
    get a random one, which teaches nothing)."""
    import torch

    from llmkit.models.loading import WEIGHTS_DTYPE, load_tokenizer

    try:
        model, info = task.auto_model_class().from_pretrained(
            source, dtype=WEIGHTS_DTYPE, output_loading_info=True
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"Could not load the teacher checkpoint '{source}': {exc}", hint=HINT) from exc
    if info["missing_keys"]:
        missing = sorted({key.rsplit(".", 1)[0] for key in info["missing_keys"]})
        raise ModelError(
            f"The teacher checkpoint '{source}' has no trained weights for {', '.join(missing[:3])}: it is "
            f"not fine-tuned for {recipe.task.name}, so its outputs would be random.",
            hint=HINT,
        )
    tokenizer = task.adapt_tokenizer(load_tokenizer(str(source)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    id2label = getattr(model.config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label)] if id2label else []
    return Teacher(
        source=source,
        kind="checkpoint",
        model=model.to(device),
        tokenizer=tokenizer,
        label_names=names,
        precision=recipe.train.precision,
        max_length=recipe.data.max_length,
        checkpoint=str(source),
        method=None,
        validation=None,
    )


def label_order(teacher: Teacher, label_names: list[str]) -> list[int]:
    """For each of the student's labels, the teacher's column of the same name; a clear error
    listing the difference when the names differ."""
    only_teacher = [name for name in teacher.label_names if name not in label_names]
    only_student = [name for name in label_names if name not in teacher.label_names]
    if only_teacher or only_student:
        parts = []
        if only_student:
            parts.append(f"only in the training data: {', '.join(only_student)}")
        if only_teacher:
            parts.append(f"only in the teacher: {', '.join(only_teacher)}")
        raise LlmkitError(
            f"The teacher's labels differ from the training data's ({'; '.join(parts)}). Teacher: "
            f"{', '.join(teacher.label_names)}; data: {', '.join(label_names)}.",
            hint="distillation compares probabilities label by label, matched by name: train the teacher "
            "on the same label set (data.label_names names integer labels)",
        )
    return [teacher.label_names.index(name) for name in label_names]


def check_same_vocabulary(teacher: Teacher, student_tokenizer: Any, student_model: Any) -> None:
    """Token-level distillation compares next-token distributions position by position: teacher
    and student must share the tokenizer's vocabulary and the output width."""
    teacher_vocab, student_vocab = teacher.tokenizer.get_vocab(), student_tokenizer.get_vocab()
    teacher_width = _base(teacher.model).config.vocab_size
    student_width = _base(student_model).config.vocab_size
    if teacher_vocab == student_vocab and teacher_width == student_width:
        return
    differing = sorted(set(teacher_vocab.items()) ^ set(student_vocab.items()))
    examples = ", ".join(repr(token) for token, _ in differing[:5])
    raise LlmkitError(
        f"The teacher's vocabulary differs from the student's (teacher: {len(teacher_vocab)} tokens, "
        f"{teacher_width} outputs; student: {len(student_vocab)} tokens, {student_width} outputs"
        + (f"; differing tokens include {examples}" if differing else "")
        + "). Generation distils the next-token distribution position by position, which needs the "
        "same vocabulary.",
        hint="choose a teacher with the student's tokenizer (the same model family), or distil a "
        "classification task, where teacher and student may tokenize differently",
    )


def _base(model: Any) -> Any:
    from llmkit.models.parameters import base_model

    return base_model(model)


def teacher_path(distill: DistillSection) -> Path:
    return Path(distill.teacher).expanduser()
