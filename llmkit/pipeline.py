"""`finetune`: recipe -> data -> model -> method -> tokenised splits -> trainer -> metrics -> run
directory. Inputs are checked (data read, model loaded, method applied) before the run directory
is touched, so a mistake found there costs seconds and leaves nothing behind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError, ModelError, RunDirectoryError
from llmkit.recipe.schema import Recipe
from llmkit.rundir import RunDirectory, now

# Recipe keys that may differ when resuming: none of them changes the training computed.
RESUME_MAY_CHANGE = {
    "output_dir",
    "train.logging_steps",
    "train.eval_batch_size",
    "train.micro_batch_size",
    "train.checkpoint_every",
    "train.keep_checkpoints",
}


class TrainingOutOfMemory(LlmkitError):
    """The device ran out of memory during training."""


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


def distributed_state() -> Any:
    """The process group accelerate's launcher set up (or a single process when not launched).

    Without CUDA the processes train on CPU over gloo; Trainer's `use_cpu` says the same, so the
    state it builds later is this one."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def quiet_libraries() -> None:
    import warnings

    import datasets
    import transformers

    # PEFT 0.21 calls a transformers method that transformers 5 deprecates; nothing for users to do.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # weight-loading bars; Trainer keeps its own
    datasets.logging.set_verbosity_error()


def prepare(recipe: Recipe, show_progress: bool = True) -> Prepared:
    import datasets
    from transformers import set_seed

    from llmkit.data.loading import load_splits
    from llmkit.data.tokenize import sorted_by_length, tokenize_split
    from llmkit.methods import get_method
    from llmkit.metrics import MetricSuite
    from llmkit.models.loading import load_classifier
    from llmkit.training.precision import check_precision

    quiet_libraries()
    if not show_progress:  # other processes of a multi-process run stay quiet
        datasets.disable_progress_bars()
    check_precision(recipe.train.precision)
    labelled = load_splits(recipe.data, seed=recipe.train.seed)
    metrics = MetricSuite.for_recipe(recipe.eval, labelled.label_names)
    set_seed(recipe.train.seed)  # the new classification head and adapters start from the seed
    loaded = load_classifier(recipe.model.checkpoint, labelled.label_names, recipe.model.revision)
    _check_positions(loaded.model.config, recipe)
    model = get_method(recipe.method.name).wrap(loaded.model, recipe.method, loaded.traits)
    _check_forward(model, loaded.tokenizer, labelled.splits["train"], recipe, loaded.traits.model_type)
    tokenised = {
        split: tokenize_split(ds, loaded.tokenizer, recipe.data.text_columns, recipe.data.max_length, split)
        for split, ds in labelled.splits.items()
    }
    for split in ("validation", "test"):
        if split in tokenised:
            tokenised[split] = sorted_by_length(tokenised[split])
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


def _check_positions(config: Any, recipe: Recipe) -> None:
    """Tokens per example plus prompt tokens must fit the model's position embeddings."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    virtual = getattr(recipe.method, "num_virtual_tokens", 0) if recipe.method.name == "prompt" else 0
    if limit and recipe.data.max_length + virtual > limit:
        prompt = f" + method.num_virtual_tokens ({virtual})" if virtual else ""
        raise ModelError(
            f"data.max_length ({recipe.data.max_length}){prompt} exceeds the {limit} positions this "
            f"{config.model_type} model has.",
            hint=f"lower data.max_length{' or method.num_virtual_tokens' if virtual else ''} so the "
            f"total is at most {limit}",
        )


def _check_forward(model: Any, tokenizer: Any, train: Any, recipe: Recipe, model_type: str) -> None:
    """One forward pass on two examples, so a method the architecture cannot run fails now."""
    import torch

    rows = train[:2]  # a slice is a dict of plain lists
    texts = [list(rows[column]) for column in recipe.data.text_columns]
    batch = tokenizer(
        *texts, truncation=True, max_length=recipe.data.max_length, padding=True, return_tensors="pt"
    )
    try:
        with torch.no_grad():
            model(**batch)
    except Exception as exc:
        from llmkit.versions import version_hint

        # Tested architectures fail here mostly after a library upgrade: say so before anything else.
        hint = version_hint() or (
            "tested: every method on BERT-family encoders, GPT-2 and Llama-architecture decoders, "
            "with the library versions in llmkit's requirements.lock; for other architectures try "
            "method full or lora"
        )
        raise ModelError(
            f"Method '{recipe.method.name}' does not work with this {model_type} model: {_first_line(exc)}",
            hint=hint,
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def finetune(recipe: Recipe, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train as the recipe says; returns the content written to results.json."""
    from llmkit.training.batching import BatchPlan
    from llmkit.training.trainer import latest_checkpoint

    assert recipe.output_dir is not None
    output_dir = Path(recipe.output_dir)
    state = distributed_state()
    plan = BatchPlan.for_recipe(recipe, state.num_processes)
    checkpoint = None
    if resume and overwrite:
        raise LlmkitError("--resume continues a run and --overwrite replaces it; give one of them.")
    if resume:
        run = RunDirectory.open_unfinished(output_dir)
        _check_resumable(run, recipe)
        checkpoint = latest_checkpoint(run.checkpoints_dir)
        if checkpoint is None:
            raise RunDirectoryError(
                f"Cannot resume: '{output_dir}' has no complete checkpoint (the run stopped before "
                "its first one was saved).",
                hint="start over with --overwrite; train.checkpoint_every=N saves every N steps",
            )
        run.writes = state.is_main_process
    else:
        RunDirectory.check_available(output_dir, overwrite)
    # The main process reads, tokenises and caches first; the others then reuse its caches.
    with state.main_process_first():
        prepared = prepare(recipe, show_progress=state.is_main_process)
    if checkpoint is not None:
        run.truncate_log(after_step=_checkpoint_step(checkpoint))
    elif state.is_main_process:
        run = RunDirectory.create(output_dir, overwrite)
        run.write_recipe(recipe.model_dump(mode="json"))
    else:
        run = RunDirectory(output_dir, writes=False)
    state.wait_for_everyone()
    run.set_status("running", started_at=now(), resumed_from=str(checkpoint) if checkpoint else None)
    try:
        results = _train(prepared, run, checkpoint, plan)
    except KeyboardInterrupt:
        run.set_status("failed", reason="interrupted (Ctrl-C)", **_resume_note(run))
        raise
    except Exception as exc:
        failure = _explain_failure(exc, run, recipe)
        run.set_status("failed", reason=str(failure), **_resume_note(run))
        if failure is exc:
            raise
        raise failure from exc
    run.write_results(results)
    run.set_status("completed", finished_at=results["finished_at"])
    run.remove_checkpoints()  # only needed to resume an unfinished run
    return results


def _check_resumable(run: RunDirectory, recipe: Recipe) -> None:
    stored = _flatten(run.stored_recipe())
    current = _flatten(recipe.model_dump(mode="json"))
    changed = [
        f"{key}: {stored.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(set(stored) | set(current))
        if key not in RESUME_MAY_CHANGE and stored.get(key) != current.get(key)
    ]
    if changed:
        listing = "\n".join(f"    {line}" for line in changed)
        raise RunDirectoryError(
            f"Cannot resume '{run.path}': the recipe changed in ways its checkpoints depend on:\n{listing}",
            hint="resume with the recipe as it was, or start over with --overwrite",
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])


def _resume_note(run: RunDirectory) -> dict[str, str]:
    from llmkit.training.trainer import latest_checkpoint

    checkpoint = latest_checkpoint(run.checkpoints_dir)
    return {"last_checkpoint": str(checkpoint)} if checkpoint else {}


def _explain_failure(exc: Exception, run: RunDirectory, recipe: Recipe) -> Exception:
    """User-facing errors for failures with a known remedy; others are returned unchanged."""
    import torch

    from llmkit.training.trainer import latest_checkpoint

    checkpoint = latest_checkpoint(run.checkpoints_dir)
    text = str(exc)
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text:
        micro = recipe.train.micro_batch_size or recipe.train.batch_size
        # A smaller micro batch leaves the training unchanged, so the checkpoint stays usable.
        kept = (
            f"; the last checkpoint ({checkpoint.name}) is kept, so --resume continues from it"
            if checkpoint
            else ""
        )
        return TrainingOutOfMemory(
            f"Out of memory while training (micro batch {micro}, max_length {recipe.data.max_length}){kept}.",
            hint="lower train.micro_batch_size (gradients accumulate up to train.batch_size, so "
            "training stays the same) or data.max_length",
        )
    return exc


def _train(prepared: Prepared, run: RunDirectory, resume_from: Path | None, plan: Any) -> dict[str, Any]:
    from llmkit.memory import peak_memory_mb as measured_peak_memory_mb
    from llmkit.models.loading import save_trained
    from llmkit.training.flops import flops_per_example
    from llmkit.training.precision import resolve_precision
    from llmkit.training.trainer import build_trainer
    from llmkit.versions import run_versions

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
        plan=plan,
    )
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    training_seconds = output.metrics["train_runtime"] - trainer.evaluation_seconds
    epochs_done = trainer.state.epoch or 0.0
    samples = round(len(splits["train"]) * epochs_done)
    if resume_from is not None:  # throughput of this session's steps only
        steps_now = trainer.state.global_step - _checkpoint_step(resume_from)
        samples = min(samples, steps_now * recipe.train.batch_size)
    lengths = [len(ids) for ids in splits["train"]["input_ids"]]
    tokens = sum(lengths) / len(lengths) * samples
    model_flops = flops_per_example(trainer.model, recipe.method, lengths) * samples
    peak_memory_mb = measured_peak_memory_mb()

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
            "architecture": type(base_model(trainer.model)).__name__,
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
            "resumed_from_step": _checkpoint_step(resume_from) if resume_from else None,
            "learning_rate": recipe.learning_rate,
            "batch_size": recipe.train.batch_size,
            "world_size": plan.world_size,
            "micro_batch_size": plan.micro_batch_size,
            "gradient_accumulation_steps": plan.accumulation_steps,
            "precision": resolve_precision(recipe.train.precision),
            "final_loss": output.training_loss,
            "runtime_s": round(training_seconds, 3),
            "samples_per_second": round(samples / training_seconds, 3),
            "tokens_per_second": round(tokens / training_seconds, 1),
            # The arithmetic the training needs at the least (llmkit/training/flops.py says what
            # is counted); over the hardware's peak it gives MFU, which `llmkit bench` reports.
            "model_flops": float(f"{model_flops:.4g}"),
            "model_flops_per_second": float(f"{model_flops / training_seconds:.4g}"),
            "peak_memory_mb": peak_memory_mb,
            "device": str(trainer.args.device),
        },
        "parameters": parameter_counts(trainer.model),
        "versions": run_versions(),
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


def base_model(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def parameter_counts(model: Any) -> dict[str, Any]:
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "trainable_percent": round(100 * trainable / total, 4)}
