"""`finetune`: recipe -> data -> model -> method -> tokenised splits -> trainer -> metrics -> run
directory. Inputs are checked (data read, model loaded, method applied) before the run directory
is touched, so a mistake found there costs seconds and leaves nothing behind."""

from __future__ import annotations

import platform
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError
from llmkit.recipe.schema import Recipe
from llmkit.rundir import RunDirectory, now


@dataclass
class Prepared:
    """Everything a run needs, built and checked, before anything is written."""

    recipe: Recipe
    model: Any
    tokenizer: Any
    splits: dict[str, Any]  # tokenised
    label_names: list[str]
    metrics: Any
    traits: Any
    validation_carved: bool


def quiet_libraries() -> None:
    import warnings

    import datasets
    import transformers

    # PEFT 0.21 calls a transformers method that transformers 5 deprecates; nothing for users to do.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # weight-loading bars; Trainer keeps its own
    datasets.logging.set_verbosity_error()


def prepare(recipe: Recipe) -> Prepared:
    from transformers import set_seed

    from llmkit.data.loading import load_splits
    from llmkit.data.tokenize import tokenize_split
    from llmkit.methods import get_method
    from llmkit.metrics import MetricSuite
    from llmkit.models.loading import load_classifier

    quiet_libraries()
    labelled = load_splits(recipe.data, seed=recipe.train.seed)
    try:
        metrics = MetricSuite.for_labels(
            list(recipe.eval.metrics),
            labelled.label_names,
            recipe.eval.f1_average,
            recipe.eval.positive_label,
        )
    except ValueError as exc:
        raise LlmkitError(str(exc)) from exc
    set_seed(recipe.train.seed)  # the new classification head and adapters start from the seed
    loaded = load_classifier(recipe.model.checkpoint, labelled.label_names, recipe.model.revision)
    model = get_method(recipe.method.name).wrap(loaded.model, recipe.method, loaded.traits)
    tokenised = {
        split: tokenize_split(ds, loaded.tokenizer, recipe.data.text_columns, recipe.data.max_length, split)
        for split, ds in labelled.splits.items()
    }
    return Prepared(
        recipe=recipe,
        model=model,
        tokenizer=loaded.tokenizer,
        splits=tokenised,
        label_names=labelled.label_names,
        metrics=metrics,
        traits=loaded.traits,
        validation_carved=labelled.validation_carved,
    )


def finetune(recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    """Train as the recipe says; returns the content written to results.json."""
    assert recipe.output_dir is not None
    output_dir = Path(recipe.output_dir)
    RunDirectory.check_available(output_dir, overwrite)
    prepared = prepare(recipe)
    run = RunDirectory.create(output_dir, overwrite)
    run.write_recipe(recipe.model_dump(mode="json"))
    run.set_status("running", started_at=now())
    try:
        results = _train(prepared, run)
    except KeyboardInterrupt:
        run.set_status("failed", reason="interrupted (Ctrl-C)")
        raise
    except Exception as exc:
        run.set_status("failed", reason=f"{type(exc).__name__}: {exc}")
        raise
    run.write_results(results)
    run.set_status("completed", finished_at=results["finished_at"])
    return results


def _train(prepared: Prepared, run: RunDirectory) -> dict[str, Any]:
    from llmkit.data.tokenize import real_token_count
    from llmkit.models.loading import save_trained
    from llmkit.training.trainer import build_trainer

    recipe, splits = prepared.recipe, prepared.splits
    started_at = now()
    trainer = build_trainer(
        recipe,
        prepared.model,
        prepared.tokenizer,
        splits["train"],
        splits["validation"],
        prepared.metrics,
        output_dir=run.checkpoints_dir,
        log_path=run.log_path,
    )
    output = trainer.train()
    training_seconds = output.metrics["train_runtime"] - trainer.evaluation_seconds
    epochs_done = trainer.state.epoch or 0.0
    samples = round(len(splits["train"]) * epochs_done)
    tokens = real_token_count(splits["train"]) * epochs_done
    peak_memory_mb = _peak_memory_mb()

    metrics = {"validation": _final_validation(trainer)}
    if "test" in splits:
        metrics["test"] = _strip(trainer.evaluate(splits["test"], metric_key_prefix="test"), "test")
    run.save_model(lambda path: save_trained(trainer.model, prepared.tokenizer, prepared.label_names, path))
    if run.checkpoints_dir.is_dir() and not any(run.checkpoints_dir.iterdir()):
        run.checkpoints_dir.rmdir()

    return {
        "status": "completed",
        "started_at": started_at,
        "finished_at": now(),
        "model": {
            "checkpoint": recipe.model.checkpoint,
            "model_type": prepared.traits.model_type,
            "architecture": type(_base_model(trainer.model)).__name__,
        },
        "method": recipe.method.model_dump(mode="json"),
        "data": {
            "train_rows": len(splits["train"]),
            "validation_rows": len(splits["validation"]),
            "test_rows": len(splits["test"]) if "test" in splits else None,
            "validation_carved_from_train": prepared.validation_carved,
            "label_names": prepared.label_names,
        },
        "metrics": metrics,
        "train": {
            "epochs": round(epochs_done, 4),
            "steps": trainer.state.global_step,
            "samples": samples,
            "learning_rate": recipe.learning_rate,
            "batch_size": recipe.train.batch_size,
            "final_loss": output.training_loss,
            "runtime_s": round(training_seconds, 3),
            "samples_per_second": round(samples / training_seconds, 3),
            "tokens_per_second": round(tokens / training_seconds, 1),
            "peak_memory_mb": peak_memory_mb,
            "device": str(trainer.args.device),
        },
        "parameters": _parameter_counts(trainer.model),
        "versions": _versions(),
    }


def _final_validation(trainer: Any) -> dict[str, float]:
    """Validation metrics of the final weights, reusing the last epoch's if it ran at this step."""
    history = trainer.state.log_history
    last_eval = next((e for e in reversed(history) if "eval_loss" in e), None)
    if last_eval is not None and last_eval.get("step") == trainer.state.global_step:
        return _strip(last_eval, "eval")
    return _strip(trainer.evaluate(), "eval")


def _strip(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    keep = ("loss", "accuracy", "f1")
    return {
        k.removeprefix(f"{prefix}_"): v for k, v in metrics.items() if k.removeprefix(f"{prefix}_") in keep
    }


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    # Peak resident set size of this process (kilobytes on Linux, bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _base_model(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _parameter_counts(model: Any) -> dict[str, Any]:
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "trainable_percent": round(100 * trainable / total, 4)}


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import llmkit

    packages = ("torch", "transformers", "peft", "datasets", "accelerate", "evaluate")
    return {
        "llmkit": llmkit.__version__,
        "python": platform.python_version(),
        **{p: version(p) for p in packages},
    }
