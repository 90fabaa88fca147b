"""The recipe schema: every key a recipe may hold, its type, default and cross-field checks.

This is the single source of truth for recipes: loading, validation, `recipe.yaml` in run
directories and the README's key reference all come from these classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict

from llmkit.methods import METHODS, MethodOptions
from llmkit.recipe.yaml_types import whole_floats_as_ints
from llmkit.tasks import DEFAULT_TASK, TASKS, TaskOptions

DATA_FILE_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
}


class Section(BaseModel):
    # Strict types, as the JSON schema states them (see llmkit.recipe.yaml_types); paths are
    # written as strings, so path fields take them.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _whole_floats_are_integers(cls, data: Any) -> Any:
        return whole_floats_as_ints(cls, data)


class ModelSection(Section):
    checkpoint: str = Field(
        description="Hub id (org/name), local directory or .gguf file (relative to the recipe file), "
        "or package:MODULE/relative/path for a checkpoint shipped in an installed package."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dropout: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Dropout probability for every dropout the model's configuration names (hidden, "
        "attention, classifier...); leave out to keep the checkpoint's. 0 turns them off: faster "
        "steps, and short fine-tuning often learns sooner.",
    )


def _extension_pattern() -> str:
    """DATA_FILE_FORMATS's extensions as a case-insensitive JSON Schema (ECMA 262) pattern."""
    letters = (
        "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext[1:])
        for ext in DATA_FILE_FORMATS
    )
    return rf"\.(?:{'|'.join(letters)})$"


DATA_FILE: JsonDict = {"pattern": _extension_pattern()}
# Data section rules that need the whole recipe: a recipe with `base:` may leave them to its base.
ONE_SOURCE_JSON_RULES = {
    "oneOf": [
        {"required": ["dataset"], "properties": {"dataset": {"type": "string"}}},
        {"required": ["train_file"], "properties": {"train_file": {"type": "string"}}},
    ],
    "if": {"required": ["config"], "properties": {"config": {"type": "string"}}},
    "then": {"required": ["dataset"], "properties": {"dataset": {"type": "string"}}},
}


# DistributedSection's rule that zero_stage belongs to DeepSpeed, as JSON Schema.
ZERO_STAGE_JSON_RULE = {
    "if": {"required": ["zero_stage"], "properties": {"zero_stage": {"type": "integer"}}},
    "then": {"required": ["strategy"], "properties": {"strategy": {"const": "deepspeed"}}},
}


class DataSection(Section):
    dataset: str | None = Field(None, description="Hub dataset id, e.g. glue.")
    config: str | None = Field(None, description="Hub dataset configuration, e.g. sst2.")
    train_split: str = Field("train", description="Hub split to train on.")
    validation_split: str | None = Field(
        "validation", description="Hub split to validate on; null carves one from train."
    )
    test_split: str | None = Field(None, description="Hub split to test on (must be labelled).")
    train_file: Path | None = Field(
        None,
        strict=False,
        json_schema_extra=DATA_FILE,
        description="csv, tsv, json, jsonl or parquet; relative to the recipe file.",
    )
    validation_file: Path | None = Field(
        None,
        strict=False,
        json_schema_extra=DATA_FILE,
        description="Evaluated every epoch; null carves a split from train.",
    )
    test_file: Path | None = Field(
        None, strict=False, json_schema_extra=DATA_FILE, description="Evaluated once, at the end."
    )
    delimiter: str | None = Field(
        None, description="Field separator of csv/tsv files; null: tab for .tsv, comma otherwise."
    )
    quoting: Literal["minimal", "none", "auto"] = Field(
        "minimal",
        description="'none' reads quote characters as text (needed for GLUE's TSVs); 'auto' reads "
        "tab-separated files as 'none' unless a quoted field spans tabs or lines, others as "
        "'minimal', and says which it chose.",
    )
    encoding: str = Field("utf-8", description="Text encoding; a UTF-8 byte-order mark is skipped.")
    text_columns: list[str] = Field(
        default_factory=lambda: ["text"],
        description="One column, or two for sentence-pair tasks.",
    )
    label_column: str = Field("label", description="Integer or string labels.")
    label_names: list[str] | None = Field(
        None, description="Names for integer labels 0..n-1, in order (e.g. [negative, positive])."
    )
    max_train_samples: PositiveInt | None = Field(None, description="Use the first N train rows.")
    max_eval_samples: PositiveInt | None = Field(
        None, description="Use the first N validation and test rows."
    )
    max_length: PositiveInt = Field(128, ge=8, description="Tokens per example, after truncation.")
    validation_fraction: float = Field(
        0.1,
        gt=0,
        lt=0.5,
        description="Share of train carved out (seeded, stratified) when no validation split is given.",
    )

    @field_validator("text_columns", mode="before")
    @classmethod
    def _one_column_may_be_a_string(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("text_columns")
    @classmethod
    def _one_or_two_columns(cls, value: list[str]) -> list[str]:
        if not 1 <= len(value) <= 2:
            raise ValueError(
                f"got {len(value)} columns; sequence classification takes one text column, or two "
                "for a sentence pair (e.g. [premise, hypothesis]). Join extra columns into one."
            )
        if len(set(value)) != len(value):
            raise ValueError("the same column is named twice")
        return value

    @field_validator("train_file", "validation_file", "test_file")
    @classmethod
    def _known_format(cls, value: Path | None) -> Path | None:
        if value is not None and value.is_dir():
            inside = sorted(p.name for p in value.iterdir() if p.suffix.lower() in DATA_FILE_FORMATS)
            raise ValueError(
                f"'{value}' is a directory, not a data file"
                + (f"; give one of the files in it: {', '.join(inside[:5])}" if inside else "")
            )
        if value is not None and value.suffix.lower() not in DATA_FILE_FORMATS:
            known = ", ".join(sorted(DATA_FILE_FORMATS))
            raise ValueError(f"'{value}' has an unknown extension; use one of {known}")
        return value

    # As JSON Schema: ONE_SOURCE_JSON_RULES.
    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        if (self.dataset is None) == (self.train_file is None):
            raise ValueError(
                "give either data.dataset (a hub dataset) or data.train_file (local files), "
                "not both and not neither"
            )
        if self.dataset is None and self.config is not None:
            raise ValueError("data.config selects a hub dataset's configuration; set data.dataset")
        return self

    def file_format(self, path: Path) -> str:
        return DATA_FILE_FORMATS[path.suffix.lower()]

    def field_delimiter(self, path: Path) -> str:
        if self.delimiter is not None:
            return self.delimiter
        return "\t" if path.suffix.lower() == ".tsv" else ","


if TYPE_CHECKING:
    MethodSection = MethodOptions
else:  # a tagged union of every registered method's options, so each rejects the others' keys
    MethodSection = Annotated[
        Union[tuple(spec.options for spec in METHODS.values())],  # noqa: UP007
        Field(discriminator="name"),
    ]


if TYPE_CHECKING:
    TaskSection = TaskOptions
else:  # a tagged union of every registered task's options
    TaskSection = Annotated[
        Union[tuple(spec.options for spec in TASKS.values())],  # noqa: UP007
        Field(discriminator="name"),
    ]


class DistributedSection(Section):
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp",
        description="How several processes share the training: ddp (a full copy of the model in "
        "each, gradients averaged), fsdp (parameters, gradients and optimizer state sharded per "
        "transformer layer: PyTorch FSDP2; CUDA GPUs) or deepspeed (DeepSpeed ZeRO; GPUs or CPUs, "
        "with the deepspeed package). fsdp and deepspeed always run under accelerate's launcher.",
    )
    zero_stage: Literal[1, 2, 3] | None = Field(
        None,
        description="DeepSpeed ZeRO stage (deepspeed only): 1 shards optimizer state, 2 also "
        "gradients, 3 also parameters. null: 3.",
    )

    # As JSON Schema: ZERO_STAGE_JSON_RULE.
    @model_validator(mode="after")
    def _zero_stage_is_deepspeeds(self) -> DistributedSection:
        if self.zero_stage is not None and self.strategy != "deepspeed":
            raise ValueError(
                f"train.distributed.zero_stage is a DeepSpeed setting, and strategy is "
                f"{self.strategy}; set strategy: deepspeed or remove zero_stage"
            )
        return self

    @property
    def engine_owns_parameters(self) -> bool:
        """Whether FSDP or DeepSpeed rebuilds the model's parameters (flat, sharded or partitioned)
        and steps them with its own optimizer wrapper; DDP and one process keep the model's."""
        return self.strategy != "ddp"

    @property
    def shards(self) -> bool:
        """Whether parameters live in pieces across processes (saving must gather them)."""
        return self.strategy == "fsdp" or (self.strategy == "deepspeed" and self.zero_stage in (None, 3))


# The trackers transformers can report to (its `report_to` names) that it can tell are installed.
Tracker = Literal[
    "azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "mlflow", "neptune",
    "swanlab", "tensorboard", "trackio", "wandb",
]  # fmt: skip


class DistillSection(Section):
    teacher: str = Field(
        description="The model the student learns from: a completed llmkit run directory (its "
        "model, method, precision and label names are read from the run) or a fine-tuned checkpoint "
        "directory for the task (e.g. `llmkit merge` output); relative to the recipe file. For "
        "classification it may have another architecture and tokenizer than the student."
    )
    temperature: PositiveFloat | None = Field(
        None,
        description="Softens both distributions before they are compared (T); null: the task's "
        "default, 1 for token classification and 2 for the others.",
    )
    weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="loss = (1 - weight) x task loss + weight x T^2 x KL(teacher_T, student_T): the KL "
        "divergence of the student's distribution from the teacher's, both at temperature T, averaged "
        "over the positions the task trains (T^2 keeps the distillation gradients at the task loss's "
        "scale whatever T is). 0: the task loss alone; 1: the teacher alone, so the training file's "
        "labels are not read and may be absent.",
    )
    loss: Literal["kl"] = Field(
        "kl",
        description="How the distributions are compared: KL divergence of the student's from the teacher's.",
    )
    top_k: PositiveInt = Field(
        32,
        description="Generation: the teacher's k likeliest next tokens kept per position in the cache "
        "(its distribution renormalised over them); classification keeps every label.",
    )

    @property
    def resolved_temperature(self) -> float:
        assert self.temperature is not None  # filled from the task's default when the recipe loads
        return self.temperature


class TrainSection(Section):
    epochs: PositiveFloat = Field(3.0, description="Passes over the training data; may be fractional.")
    max_steps: PositiveInt | None = Field(None, description="Stop after this many steps.")
    learning_rate: PositiveFloat | None = Field(
        None, description="Peak learning rate; null: the method's default."
    )
    batch_size: PositiveInt = Field(
        32, description="Examples per optimizer step, over all processes (the global batch)."
    )
    micro_batch_size: PositiveInt | None = Field(
        None,
        description="Examples per forward pass in each process; gradients accumulate up to "
        "batch_size. null: batch_size divided by the number of processes.",
    )
    eval_batch_size: PositiveInt = Field(64, description="Examples per evaluation forward pass.")
    seed: int = Field(42, description="Seeds head initialisation, adapters and data order.")
    weight_decay: NonNegativeFloat = Field(0.01, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps with linear warm-up.")
    max_warmup_steps: NonNegativeInt | None = Field(
        50,
        description="Warm-up lasts at most this many steps, whatever warmup_ratio gives (null: no "
        "limit). A long run needs no longer warm-up than a short one: 6% of SST-2's whole training "
        "set x 3 epochs is 379 steps at a learning rate near zero, which held MiniLM at chance "
        "for its first 125 (docs/bench-time-to-accuracy-sst2-cpu.md).",
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warm-up."
    )
    max_grad_norm: PositiveFloat = Field(1.0, description="Gradient clipping norm.")
    logging_steps: PositiveInt = Field(20, description="Steps between loss entries in log.jsonl.")
    group_by_length: bool = Field(
        True,
        description="Batch training examples of nearly one length (random chunks of 50 batches "
        "sorted by length, as Trainer's length grouping, batches in random order; random batches "
        "otherwise): on 600 SST-2 rows x 16, 7% of the computed tokens are padding against 19% "
        "in Trainer's length grouping and about two thirds in random batches.",
    )
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32",
        description="Training precision: fp32, bf16/fp16 mixed precision (fp16 needs a CUDA GPU), or "
        "auto: bf16 on a CPU that computes it natively (AVX512-BF16, AMX), else fp32. "
        "Evaluation and prediction compute as training did.",
    )
    report_to: list[Tracker] = Field(
        default_factory=list,
        description="Experiment trackers that receive the loss and metrics, as transformers' "
        "report_to (tensorboard writes to the run's tensorboard/ directory); [] reports to none.",
    )
    checkpoint_every: Literal["epoch"] | PositiveInt | None = Field(
        "epoch",
        description="Save a resumable checkpoint every epoch, every N steps, or never (null).",
    )
    keep_checkpoints: PositiveInt = Field(
        2, description="Most recent checkpoints kept; all are deleted once the run completes."
    )
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    distill: DistillSection | None = Field(
        None,
        description="Knowledge distillation: the student also learns the teacher's output "
        "distribution (teacher logits computed once, cached in the run directory); null: no teacher.",
    )

    @model_validator(mode="after")
    def _micro_batch_divides_batch(self) -> TrainSection:
        micro = self.micro_batch_size
        if micro is not None and (micro > self.batch_size or self.batch_size % micro):
            raise ValueError(
                f"train.micro_batch_size ({micro}) must divide train.batch_size "
                f"({self.batch_size}); e.g. micro_batch_size: {_largest_divisor(self.batch_size)}"
            )
        return self


def _largest_divisor(n: int) -> int:
    return next(d for d in range(n // 2, 0, -1) if n % d == 0) if n > 1 else 1


class EvalSection(Section):
    metrics: list[Literal["accuracy", "f1"]] = Field(
        default=["accuracy", "f1"],
        description="Computed with `evaluate`, offline.",
        json_schema_extra={"minItems": 1},  # _at_least_one
    )
    f1_average: Literal["binary", "macro", "micro", "weighted"] | None = Field(
        None, description="null: binary for two labels, macro otherwise."
    )
    positive_label: str | None = Field(
        None, description="The positive class for binary F1; null: the second label."
    )
    every_steps: PositiveInt | None = Field(
        None,
        description="Evaluate on the validation split every this many optimizer steps (and once at "
        "the end); null: at the end of each epoch. results.json lists every evaluation with the "
        "training time before it (train.evaluations): time to accuracy.",
    )
    stop_at: dict[str, float] = Field(
        default_factory=dict,
        description="Stop training at the first evaluation where every named validation metric "
        "reaches its value, e.g. {accuracy: 0.85}; the learning-rate schedule stays the whole "
        "run's. Names: the task's metrics (loss excluded: lower is better).",
    )

    @field_validator("metrics")
    @classmethod
    def _at_least_one(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one metric: accuracy, f1")
        return value


# A method section without `name` is this method's.
DEFAULT_METHOD = "full"


class Recipe(Section):
    model: ModelSection
    data: DataSection
    task: TaskSection = Field(
        default_factory=lambda: TASKS[DEFAULT_TASK].options(name=DEFAULT_TASK),
        description="What the model learns to do; default: sequence classification.",
    )
    method: MethodSection
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output_dir: Path | None = Field(
        None,
        strict=False,
        description="Run directory, relative to the recipe file; null: runs/<recipe name> in the "
        "current directory.",
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_method_defaults(cls, data: Any) -> Any:
        """Default to sequence classification and full fine-tuning, to the chosen method's own
        learning rate and to the task's own distillation temperature."""
        if not isinstance(data, dict):
            return data
        task = data.get("task")
        if isinstance(task, str):  # `task: token_classification` names a task with default options
            data["task"] = {"name": task}
        elif isinstance(task, dict):
            task.setdefault("name", DEFAULT_TASK)
        method = data.setdefault("method", {})
        if isinstance(method, dict):
            method.setdefault("name", DEFAULT_METHOD)
            spec = METHODS.get(method["name"]) if isinstance(method["name"], str) else None
            train = data.setdefault("train", {})
            if spec is not None and isinstance(train, dict) and train.get("learning_rate") is None:
                train["learning_rate"] = spec.options.default_learning_rate
        train = data.get("train")
        distill = train.get("distill") if isinstance(train, dict) else None
        task = data.get("task")
        task_name = task.get("name") if isinstance(task, dict) else getattr(task, "name", DEFAULT_TASK)
        task_spec = TASKS.get(task_name) if isinstance(task_name, str) else None
        if isinstance(distill, dict) and distill.get("temperature") is None and task_spec is not None:
            distill["temperature"] = task_spec.task.distill_temperature
        return data

    @property
    def learning_rate(self) -> float:
        assert self.train.learning_rate is not None  # filled from the method's default
        return self.train.learning_rate
