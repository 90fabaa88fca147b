"""`llmkit finetune --dry-run`: everything `finetune` would check and set up, without training or
writing anything: the resolved recipe, parameter counts for the method, one tokenised example
decoded back to text, the number of optimizer steps, and an estimate of peak memory."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmkit.recipe.schema import Recipe
from llmkit.training.batching import BatchPlan

MB = 2**20


@dataclass(frozen=True)
class MemoryEstimate:
    """Training memory for the model's tensors, in MB; an estimate, not a measurement.

    Counts the weights, gradients and AdamW's two moment tensors for trainable parameters, and
    activations kept for the backward pass by a rule of thumb for transformer layers (Korthikanti
    et al. 2022: per layer, batch x tokens x hidden x (34 + 5 x heads x tokens / hidden) bytes at
    16 bits, scaled to the weights' precision) for the longest micro batch. It leaves out the
    framework itself (CUDA context, allocator caching, Python and libraries), which `results.json`'s
    measured `peak_memory_mb` includes on CPU."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    micro_batch: int
    tokens: int  # the longest sequence the model sees: longest training example + virtual tokens

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


@dataclass(frozen=True)
class DryRun:
    recipe: Recipe
    architecture: str
    parameters: dict[str, Any]  # as results.json's `parameters`
    rows: dict[str, int]
    example: list[str]  # the task's lines showing the first training row and its targets
    truncated_rows: int  # training rows cut at data.max_length
    steps_per_epoch: int
    steps: int
    memory: MemoryEstimate
    output_dir_exists: bool
    plan: BatchPlan
    distillation: list[str]  # the teacher, the label-space check and the cache size; [] without one
    dropout: dict[str, float | None]  # the model's dropout probabilities, by its configuration's names


def dry_run(recipe: Recipe, num_processes: int = 1) -> DryRun:
    """What `finetune` (in `num_processes` processes) would do, without training."""
    from llmkit.models.dropout import dropout_attributes
    from llmkit.models.parameters import base_model, parameter_counts
    from llmkit.pipeline import prepare

    plan = BatchPlan.for_recipe(recipe, num_processes)  # a batch the processes cannot share fails now
    prepared = prepare(recipe)
    train = prepared.splits["train"]
    lengths = [len(ids) for ids in train["input_ids"]]
    example = prepared.task.describe_example(train[0], prepared.tokenizer, prepared.label_names)
    steps_per_epoch, steps = training_steps(recipe, len(train), plan)
    micro_batch = min(plan.micro_batch_size, len(train))
    tokens = max(lengths) + recipe.method.virtual_tokens
    output_dir = Path(recipe.output_dir) if recipe.output_dir is not None else None
    config = base_model(prepared.model).config
    return DryRun(
        recipe=recipe,
        architecture=type(base_model(prepared.model)).__name__,
        dropout={name: getattr(config, name) for name in dropout_attributes(config)},
        parameters=parameter_counts(prepared.model),
        rows={split: len(dataset) for split, dataset in prepared.splits.items()},
        example=example,
        truncated_rows=sum(length >= recipe.data.max_length for length in lengths),
        steps_per_epoch=steps_per_epoch,
        steps=steps,
        memory=estimate_memory(prepared.model, micro_batch, tokens),
        plan=plan,
        distillation=(
            prepared.distillation.describe_lines(prepared.label_names) if prepared.distillation else []
        ),
        output_dir_exists=output_dir is not None and output_dir.is_dir() and any(output_dir.iterdir()),
    )


def training_steps(recipe: Recipe, train_rows: int, plan: BatchPlan) -> tuple[int, int]:
    """Optimizer steps per epoch and in all, counted as Trainer counts them: each of the plan's
    processes gets its share of the rows (the distributed sampler pads the last)."""
    rows_per_process = math.ceil(train_rows / plan.world_size)
    batches = math.ceil(rows_per_process / plan.micro_batch_size)
    per_epoch = max(math.ceil(batches / plan.accumulation_steps), 1)
    return per_epoch, recipe.train.max_steps or math.ceil(recipe.train.epochs * per_epoch)


def estimate_memory(model: Any, micro_batch: int, tokens: int) -> MemoryEstimate:
    parameters = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in parameters)
    trainable = sum(p.numel() * p.element_size() for p in parameters if p.requires_grad)
    config = model.config
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    bytes_per_value = parameters[0].element_size() if parameters else 4
    per_layer = 0.0
    if hidden and heads:
        per_layer = micro_batch * tokens * hidden * (34 + 5 * heads * tokens / hidden) * bytes_per_value / 2
    return MemoryEstimate(
        weights=weights / MB,
        gradients=trainable / MB,
        optimizer=2 * trainable / MB,
        activations=layers * per_layer / MB,
        micro_batch=micro_batch,
        tokens=tokens,
    )


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def describe(result: DryRun) -> str:
    """The dry run as text: the resolved recipe (YAML), then what training would do."""
    recipe, params, memory = result.recipe, result.parameters, result.memory
    rows = ", ".join(f"{split} {count}" for split, count in result.rows.items())
    plan = result.plan
    parts = [f"micro batch {plan.micro_batch_size}"]
    parts += [f"{plan.world_size} processes"] if plan.world_size > 1 else []
    parts += [f"{plan.accumulation_steps} accumulated"] if plan.accumulation_steps > 1 else []
    batching = f"batch {recipe.train.batch_size}" + (f" ({' x '.join(parts)})" if len(parts) > 1 else "")
    lines = [
        "# resolved recipe",
        yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True).rstrip(),
        "",
        "# dry run: nothing was trained or written",
        f"task: {recipe.task.name}",
        f"model: {result.architecture}, method {recipe.method.name}: trainable parameters "
        f"{_count(params['trainable'])} of {_count(params['total'])} ({params['trainable_percent']:.2f}%)",
        _dropout_line(result.dropout, recipe.model.dropout),
        f"data: {rows} rows; {result.truncated_rows} training rows cut at data.max_length "
        f"{recipe.data.max_length}",
        *result.example,
        f"training: {result.steps} optimizer steps ({result.steps_per_epoch} per epoch, {batching}, "
        f"{'train.max_steps' if recipe.train.max_steps else f'{recipe.train.epochs:g} epochs'}), "
        f"learning rate {recipe.learning_rate:g}",
        *result.distillation,
        f"estimated peak memory: {memory.total:,.0f} MB = weights {memory.weights:,.1f} + gradients "
        f"{memory.gradients:,.1f} + AdamW states {memory.optimizer:,.1f} + activations "
        f"{memory.activations:,.1f} (micro batch {memory.micro_batch} x {memory.tokens} tokens)",
        "  an estimate of the model's tensors only; the framework itself (CUDA context, libraries) "
        "comes on top",
        f"run directory: {recipe.output_dir}"
        + (" (exists: finetune needs --overwrite or --resume)" if result.output_dir_exists else ""),
    ]
    return "\n".join(lines)


def _dropout_line(dropout: dict[str, float | None], requested: float | None) -> str:
    source = "model.dropout" if requested is not None else "the checkpoint's; model.dropout sets them all"
    if not dropout:
        return "dropout: none in the model's configuration"
    values = ", ".join(f"{name} {'null' if p is None else f'{p:g}'}" for name, p in dropout.items())
    return f"dropout: {values} ({source})"
