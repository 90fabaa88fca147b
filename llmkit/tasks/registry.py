"""The task registry: a task is an options schema (the recipe's `task:` section) plus a `Task`
class that owns everything the task decides, from the auto model class to what `predict` writes.

Every task shares one pipeline (recipe -> data -> model -> method -> trainer -> run directory) and
every command; they differ only in the `Task` methods below. Adding a task means adding one module
that calls `register_task` and one row of tests; every registered method then works with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from pathlib import Path

    from datasets import Dataset
    from rich.console import Console
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmkit.data.loading import LabelledSplits
    from llmkit.distill.cache import TeacherRequest, TeacherTargets
    from llmkit.distill.teacher import Teacher
    from llmkit.methods import MethodOptions
    from llmkit.models.traits import ModelTraits
    from llmkit.recipe.schema import DataSection, EvalSection, Recipe


class TaskOptions(BaseModel):
    """Options common to every task; subclasses add their own and fix `name`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    summary: ClassVar[str]


class TaskReport:
    """What `llmkit evaluate` shows beyond the metrics (per-class scores, confusions...)."""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def print(self, console: Console) -> None:
        raise NotImplementedError


@dataclass
class TaskEvaluation:
    metrics: dict[str, float]  # "loss" and the task's metric names, as in results.json
    rows: int
    report: TaskReport


class Task:
    """One task's decisions. Instances hold the recipe's `task:` options; methods that need other
    recipe sections take them as arguments, so a task is built from a finished run's recipe too."""

    # PEFT's TaskType name: the PeftModel class that feeds virtual tokens and labels.
    peft_task_type: ClassVar[str]
    # The Hub's pipeline tag (model cards' `pipeline_tag`, transformers' pipeline task name).
    hub_pipeline_tag: ClassVar[str]
    # The training loss is a mean over labelled tokens, whose number varies from batch to batch.
    # Then each token weighs the same whatever batch it lands in (llmkit.training.trainer): with
    # length-grouped batches, a per-batch mean would weigh a word in a batch of two-word headlines
    # twenty times as much as one in a batch of forty-word sentences.
    token_level_loss: ClassVar[bool] = False
    # The model's own loss divides by the `num_items_in_batch` Trainer passes it (causal LM losses
    # do), so Trainer must not divide by the accumulation steps again. Classification heads
    # ignore it and return a per-batch mean: Trainer must divide, which it skips for any model
    # whose forward takes **kwargs (all of transformers 5), multiplying the loss and gradients by
    # the accumulation steps (train.micro_batch_size).
    model_loss_counts_items: ClassVar[bool] = False
    # train.distill.temperature when the recipe gives none (the T that softens the teacher's and
    # the student's distributions; Hinton et al. used 2 and more for classification).
    distill_temperature: ClassVar[float] = 2.0

    def __init__(self, options: TaskOptions) -> None:
        self.options = options

    # ---------------------------------------------------------------- model
    def auto_model_class(self) -> Any:
        """The transformers auto class (AutoModelFor...) that builds the task's model."""
        raise NotImplementedError

    def check_model_type(self, model_type: str, reference: str) -> None:
        """Raise ModelError when transformers has no model of this type for the task."""
        raise NotImplementedError

    def adapt_model(self, model: PreTrainedModel, traits: ModelTraits) -> None:
        """Adjust a freshly loaded model (e.g. hooks) before any method wraps it."""

    def adapt_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
        """Adjust the loaded tokenizer (e.g. a prefix space for pre-split words)."""
        return tokenizer

    def pipeline_example(self, text_columns: list[str]) -> str:
        """A call of the task's transformers pipeline (bound to `classifier`) on an example
        input, for the model card's loading code."""
        raise NotImplementedError

    # ---------------------------------------------------------------- data
    def load_splits(
        self, data: DataSection, seed: int, teacher_labels: list[str] | None = None
    ) -> LabelledSplits:
        """The recipe's train/validation(/test) splits with targets, checked. `teacher_labels`: the
        label names of a teacher that trains alone (train.distill.weight 1.0); a task that can
        reads the training split without its labels then, others read it as usual."""
        raise NotImplementedError

    def read_labelled_file(self, path: Path, data: DataSection, label_names: list[str]) -> Dataset:
        """A labelled file (`llmkit evaluate --data`) with targets as the run's label ids."""
        raise NotImplementedError

    def read_unlabelled(self, source: str, data: DataSection, id_column: str | None) -> Dataset:
        """Inputs for `llmkit predict`: a file, or `-` for standard input."""
        raise NotImplementedError

    def tokenize(
        self,
        dataset: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        data: DataSection,
        split: str,
        label_names: list[str],
    ) -> Dataset:
        """Model inputs and aligned targets, unpadded (the collator pads each batch)."""
        raise NotImplementedError

    def collator(
        self, tokenizer: PreTrainedTokenizerBase, method: MethodOptions | None = None
    ) -> Callable[[list[Any]], Any]:
        """Pads a list of tokenised rows into a batch of tensors. `method` (the recipe's method
        options), for targets that depend on what the method adds (virtual tokens)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- metrics
    def metric_names(self, evaluation: EvalSection) -> tuple[str, ...]:
        """Names of the metrics reported besides `loss`, in order: results.json, the progress
        line, `evaluate` and the bench all use these."""
        raise NotImplementedError

    def metric_label(self, name: str) -> str:
        """How tables and messages name a metric (e.g. 'F1', 'entity F1')."""
        return name

    def check_metrics(self, evaluation: EvalSection, label_names: list[str]) -> None:
        """Raise when the recipe's metric options do not fit the data's labels."""

    def logits_for_metrics(self) -> Callable[[Any, Any], Any]:
        """Trainer's `preprocess_logits_for_metrics`: what of each evaluation batch is kept."""
        raise NotImplementedError

    def compute_metrics(
        self, evaluation: EvalSection, label_names: list[str]
    ) -> Callable[[Any], dict[str, float]]:
        """Trainer's `compute_metrics`: the kept outputs of a split to `loss` and the metrics."""
        raise NotImplementedError

    def final_metrics(
        self, model: Any, tokenizer: PreTrainedTokenizerBase, dataset: Dataset, recipe: Recipe
    ) -> dict[str, float]:
        """Metrics that need more than the evaluation forward pass (generated text), computed once
        for the validation and test splits at the end of training; none by default."""
        return {}

    # ---------------------------------------------------------------- trained runs
    def probe_batch(
        self,
        tokenizer: PreTrainedTokenizerBase,
        data: DataSection,
        rows: Dataset | None,
        method: MethodOptions | None = None,
    ) -> dict[str, Any]:
        """A small padded batch (tensors) for one forward pass: the check before training (from
        `rows`, the first training rows, read but not tokenised) and `merge`'s comparison of the
        adapter with the merged checkpoint (from built-in text when `rows` is None)."""
        raise NotImplementedError

    def evaluate(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        dataset: Dataset,
        data: DataSection,
        evaluation: EvalSection,
        label_names: list[str],
        batch_size: int,
        precision: str,
        split: str,
    ) -> TaskEvaluation:
        raise NotImplementedError

    def predict(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        dataset: Dataset,
        data: DataSection,
        label_names: list[str],
        batch_size: int,
        precision: str,
    ) -> Iterator[dict[str, Any]]:
        """One output record per input row, in input order."""
        raise NotImplementedError

    def csv_columns(self, label_names: list[str]) -> list[str] | None:
        """Flat columns for csv/tsv prediction output; None when only JSON lines fit."""
        return None

    def csv_values(self, record: dict[str, Any], label_names: list[str]) -> list[Any]:
        """One `predict` record as the values of `csv_columns`."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the bench's peer
    # The bench sets each task's hand-written peer script (shared/bench/peer_*.py) beside llmkit.
    # Every script takes --model, --train, --limit, --epochs, --bs, --lr, --max-len and --method
    # (llmkit/bench/peer.py passes those); the rest of its command line, and what its JSON line
    # reports, is the task's to say.

    # Methods the task's peer script trains.
    peer_methods: ClassVar[tuple[str, ...]] = ("full", "lora")

    def peer_arguments(self, recipe: Recipe) -> list[str]:
        """The peer script's task arguments: where it reads its evaluation rows, which columns,
        and how it evaluates, from the recipe."""
        assert recipe.data.validation_file is not None  # peer_problems says when it is missing
        return ["--dev", str(recipe.data.validation_file)]

    def peer_expert_arguments(self, recipe: Recipe) -> list[str]:
        """What a user who knows Trainer turns on by hand in the task's peer script, for the
        bench's expert peer (`expert: true`; bf16 where llmkit trains in it is added for every
        task): Trainer's length-grouped sampler, one flag that removes most of the padding."""
        return ["--group-by-length"]

    def peer_problems(self, recipe: Recipe) -> list[str]:
        """Why the task's peer script cannot do what the recipe describes (empty when it can)."""
        return []

    def peer_notes(self, recipe: Recipe) -> list[str]:
        """Differences between the peer script's run and the recipe that do not change its speed."""
        if recipe.data.max_eval_samples is not None:
            return ["the script evaluates every validation row (data.max_eval_samples is not passed)"]
        return []

    def peer_metrics(self, reported: dict[str, Any], evaluation: EvalSection) -> dict[str, float]:
        """The validation figures of the peer script's JSON line under the task's metric names."""
        return {name: reported[name] for name in self.metric_names(evaluation) if name in reported}

    def describe_example(
        self, row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, label_names: list[str]
    ) -> list[str]:
        """`--dry-run`'s lines showing one tokenised training row and its targets."""
        raise NotImplementedError

    # ---------------------------------------------------------------- distillation
    def align_teacher(
        self, teacher: Teacher, tokenizer: PreTrainedTokenizerBase, model: Any, label_names: list[str]
    ) -> list[int] | None:
        """Raise when `teacher` cannot teach this student; else, for each of the student's labels,
        the teacher's output column (None: outputs compared as they are). Labels are matched by
        name, so a teacher with another tokenizer and architecture can teach."""
        from llmkit.distill.teacher import label_order

        return label_order(teacher, label_names)

    def distillation_positions(self, row: dict[str, Any]) -> list[int]:
        """The positions of a tokenised training row at which the student learns the teacher's
        distribution (indices into `distilled_logits`' second dimension)."""
        raise NotImplementedError

    def distilled_logits(self, logits: Any, input_width: int) -> Any:
        """The student's logits at its positions, (rows, positions, classes), from the model's
        output for a batch `input_width` tokens wide. Token-level tasks: one per input token
        (positions a method prepends, prompt tuning's virtual tokens, dropped)."""
        return logits[:, -input_width:]

    def teacher_targets(self, request: TeacherRequest) -> TeacherTargets:
        """The teacher's logits at every row's distillation positions, in the student's label order
        (`order`): the teacher reads `raw_train` with its own tokenizer where the task allows,
        else the student's tokenised rows (`train`)."""
        raise NotImplementedError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    options: type[TaskOptions]
    task: type[Task]

    def build(self, options: TaskOptions | None = None) -> Task:
        return self.task(options if options is not None else self.options(name=self.name))


TASKS: dict[str, TaskSpec] = {}
DEFAULT_TASK = "sequence_classification"  # what a recipe without a task section trains


def register_task(options: type[TaskOptions], task: type[Task]) -> None:
    name = options.model_fields["name"].default
    if not isinstance(name, str):
        raise TypeError(f"{options.__name__}.name needs a Literal default naming the task")
    if name in TASKS:
        raise ValueError(f"a task named {name!r} is registered already ({TASKS[name].options.__name__})")
    TASKS[name] = TaskSpec(name=name, options=options, task=task)


def get_task(name: str) -> TaskSpec:
    return TASKS[name]


def task_for(options: TaskOptions | None = None) -> Task:
    """The task a recipe's `task:` section names (sequence classification when None)."""
    return get_task(options.name if options is not None else DEFAULT_TASK).build(options)
