"""Where a training step's time goes: `python -m llmkit.bench.profile RECIPE [KEY=VALUE ...]
[--steps N]` prepares the recipe as `llmkit finetune` does (same model, method, data and
Trainer), trains N steps under torch's profiler after two warm-up steps, and prints the operators
by self time, grouped into families and the single ones with the most, with the share of the
batches' tokens that were padding.
Nothing is written besides a scratch directory that is removed."""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:
    from llmkit.pipeline import Prepared

# Operator families, first match wins (aten names, lower case).
FAMILIES = (
    ("matrix multiplication", ("mm", "addmm", "bmm", "linear", "matmul", "baddbmm")),
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention", "softmax")),
    ("optimizer", ("fused_adam", "adam", "foreach", "lerp", "addcdiv", "sqrt", "clamp")),
    ("normalisation", ("layer_norm", "rms_norm", "native_layer_norm", "pow", "rsqrt", "mean")),
    ("precision casts and copies", ("copy_", "to", "_to_copy", "clone", "contiguous", "cat")),
    ("activations", ("gelu", "silu", "tanh", "dropout", "native_dropout", "mul", "add", "sub")),
    ("embedding", ("embedding", "index_select", "gather", "index")),
)
WARM_UP_STEPS = 2
TOP_OPERATORS = 12  # the single operators behind a family's share


def profile_training(recipe_path: Path, overrides: list[str], steps: int) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from llmkit.pipeline import prepare
    from llmkit.recipe.loading import load_recipe
    from llmkit.training.embedding_rows import used_rows_while_training
    from llmkit.training.precision import frozen_weights_in_half_precision, resolve_precision

    recipe = load_recipe(recipe_path, [*overrides, f"train.max_steps={steps + WARM_UP_STEPS}"])
    prepared = prepare(recipe)
    engine_owned = recipe.train.distributed.engine_owns_parameters
    with (
        tempfile.TemporaryDirectory() as scratch,
        used_rows_while_training(prepared.model, prepared.tokenizer, prepared.splits["train"], engine_owned),
        frozen_weights_in_half_precision(prepared.model, recipe.train.precision, engine_owned),
    ):
        trainer = scratch_trainer(prepared, Path(scratch))
        padding = _padding_share(trainer, steps + WARM_UP_STEPS)
        recorder = _StepProfiler(profile(activities=[ProfilerActivity.CPU]), WARM_UP_STEPS, steps)
        trainer.add_callback(recorder)
        trainer.train()
        recorder.stop()
    table = recorder.families()
    total = sum(table.values()) or 1.0
    lines = [
        f"{recipe_path} ({recipe.method.name}, precision {resolve_precision(recipe.train.precision)}, "
        f"batch {recipe.train.batch_size}, torch threads {torch.get_num_threads()}): "
        f"{steps} steps profiled after {WARM_UP_STEPS} warm-up steps",
        f"padding: {padding:.1%} of the tokens in the profiled batches",
        "",
        "| operator family | self CPU s | share |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | {seconds:.2f} | {seconds / total:.1%} |" for name, seconds in table.items()]
    lines += ["", f"| top {TOP_OPERATORS} operators | calls a step | self CPU s | share |"]
    lines += ["| --- | --- | --- | --- |"]
    lines += [
        f"| {name} | {calls / steps:.0f} | {seconds:.2f} | {seconds / total:.1%} |"
        for name, calls, seconds in recorder.top_operators(TOP_OPERATORS)
    ]
    return "\n".join(lines)


def scratch_trainer(prepared: Prepared, scratch: Path) -> Any:
    """The Trainer `llmkit finetune` builds for a prepared recipe, on one process, writing only its
    step log under `scratch` (no checkpoints)."""
    from llmkit.training.batching import BatchPlan
    from llmkit.training.trainer import build_trainer

    recipe = prepared.recipe
    return build_trainer(
        recipe.model_copy(update={"train": recipe.train.model_copy(update={"checkpoint_every": None})}),
        prepared.model,
        prepared.tokenizer,
        prepared.splits["train"],
        prepared.splits["validation"],
        prepared.task,
        prepared.label_names,
        output_dir=scratch,
        log_path=scratch / "log.jsonl",
        plan=BatchPlan.for_recipe(recipe, 1),
    )


def _padding_share(trainer: Any, steps: int) -> float:
    """Share of padding tokens in the batches the training's sampler makes (its first `steps`)."""
    padded = real = 0
    for index, batch in enumerate(trainer.get_train_dataloader()):
        if index >= steps:
            break
        mask = batch["attention_mask"]
        padded += mask.numel()
        real += int(mask.sum())
    return 1 - real / padded if padded else 0.0


class _StepProfiler(TrainerCallback):
    """Starts the profiler once the warm-up steps are done."""

    def __init__(self, profiler: Any, warm_up: int, steps: int) -> None:
        self.profiler, self.warm_up, self.steps = profiler, warm_up, steps
        self.started = self.stopped = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.warm_up and not self.started:
            self.profiler.__enter__()
            self.started = True
        elif state.global_step == self.warm_up + self.steps:
            self.stop()  # before the final evaluation

    def stop(self) -> None:
        if self.started and not self.stopped:
            self.profiler.__exit__(None, None, None)
            self.stopped = True

    def top_operators(self, count: int) -> list[tuple[str, int, float]]:
        """The operators with the most self time: name, calls, seconds."""
        events = sorted(self.profiler.key_averages(), key=lambda event: -event.self_cpu_time_total)
        return [(event.key, event.count, event.self_cpu_time_total / 1e6) for event in events[:count]]

    def families(self) -> dict[str, float]:
        seconds: dict[str, float] = defaultdict(float)
        for event in self.profiler.key_averages():
            # aten::_fused_adamw_, aten::_scaled_dot_product_flash_attention_for_cpu, ...
            name = event.key.removeprefix("aten::").lower().lstrip("_")
            family = next((f for f, ops in FAMILIES if any(name.startswith(op) for op in ops)), "other")
            seconds[family] += event.self_cpu_time_total / 1e6
        return dict(sorted(seconds.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("overrides", nargs="*", help="recipe KEY=VALUE overrides")
    parser.add_argument("--steps", type=int, default=10)
    options = parser.parse_args()
    print(profile_training(options.recipe, options.overrides, options.steps))


if __name__ == "__main__":
    main()
