"""`finetune`: recipe -> data -> model -> method -> tokenised splits -> trainer -> metrics -> run
directory. Inputs are checked (data read, model loaded, method applied) before the run directory
is touched, so a mistake found there costs seconds and leaves nothing behind. What depends on the
task (sequence classification, token classification...) is asked of the recipe's task."""

from __future__ import annotations

import sys
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError, RunDirectoryError
from llmkit.fsutil import check_writable
from llmkit.interrupts import Terminated, interrupted, stop_signals_raise
from llmkit.recipe.schema import Recipe
from llmkit.resume import check_resumable, checkpoint_step, resume_note
from llmkit.rundir import RunDirectory, now
from llmkit.runtime import distributed_state, set_up_process
from llmkit.training.failures import check_finite, explain_failure
from llmkit.training.stopping import check_stop_at, target_reached

if TYPE_CHECKING:
    from llmkit.distill.run import Distillation
    from llmkit.tasks import Task


@dataclass
class Prepared:
    """Everything a run needs, built and checked, before anything is written."""

    recipe: Recipe
    task: Task
    model: Any
    tokenizer: Any
    splits: dict[str, Any]  # tokenised
    label_names: list[str]
    traits: Any
    validation_carved: bool
    distillation: Distillation | None = None  # the teacher, checked against this student


def prepare(recipe: Recipe, show_progress: bool = True) -> Prepared:
    import datasets
    from transformers import set_seed

    from llmkit.data.tokenize import sorted_by_length
    from llmkit.methods import get_method
    from llmkit.models.checks import check_forward, check_positions, check_tokenizer
    from llmkit.models.loading import load_classifier
    from llmkit.tasks import task_for
    from llmkit.training.embedding_rows import wants_used_rows
    from llmkit.training.precision import check_precision
    from llmkit.training.tracking import check_trackers

    set_up_process()
    if not show_progress:  # other processes of a multi-process run stay quiet
        datasets.disable_progress_bars()
    check_precision(recipe.train.precision)
    wants_used_rows()  # an unclear LLMKIT_TRAIN_USED_EMBEDDING_ROWS fails here, before any writing
    check_trackers(recipe.train.report_to)
    task = task_for(recipe.task)
    distill = recipe.train.distill
    teacher = None
    if distill is not None:
        from llmkit.distill.teacher import load_teacher

        teacher = load_teacher(recipe, task)
    # A teacher that trains alone labels the training rows: their own labels are not read.
    alone = (
        teacher.label_names if teacher is not None and distill is not None and distill.weight == 1.0 else None
    )
    labelled = task.load_splits(recipe.data, seed=recipe.train.seed, teacher_labels=alone)
    task.check_metrics(recipe.eval, labelled.label_names)
    check_stop_at(recipe, task.metric_names(recipe.eval))
    set_seed(recipe.train.seed)  # the new head and adapters start from the seed
    loaded = load_classifier(
        recipe.model.checkpoint, labelled.label_names, recipe.model.revision, task, recipe.model.dropout
    )
    check_positions(loaded.model.config, recipe)
    check_tokenizer(loaded.tokenizer, labelled.splits["train"], recipe, task)
    model = get_method(recipe.method.name).wrap(loaded.model, recipe.method, loaded.traits)
    check_forward(model, loaded.tokenizer, labelled.splits["train"], recipe, task, loaded.traits.model_type)
    tokenised = {
        split: task.tokenize(ds, loaded.tokenizer, recipe.data, split, labelled.label_names)
        for split, ds in labelled.splits.items()
    }
    for split in ("validation", "test"):
        if split in tokenised:
            tokenised[split] = sorted_by_length(tokenised[split])
    distillation = None
    if teacher is not None:
        from llmkit.distill.run import plan_distillation

        distillation = plan_distillation(
            recipe,
            task,
            teacher,
            loaded.tokenizer,
            model,
            labelled.label_names,
            labelled.splits["train"],
            tokenised["train"],
        )
    return Prepared(
        recipe=recipe,
        task=task,
        model=model,
        tokenizer=loaded.tokenizer,
        splits=tokenised,
        label_names=labelled.label_names,
        traits=loaded.traits,
        validation_carved=labelled.validation_carved,
        distillation=distillation,
    )


def finetune(recipe: Recipe, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train as the recipe says; returns the content written to results.json."""
    from llmkit.launch import launched_by_accelerate
    from llmkit.training import strategies
    from llmkit.training.batching import BatchPlan
    from llmkit.training.trainer import latest_checkpoint

    assert recipe.output_dir is not None
    output_dir = Path(recipe.output_dir)
    strategies.check_strategy(recipe.train.distributed, launched=launched_by_accelerate())
    strategies.set_process_environment(recipe.train.distributed)
    state = distributed_state()
    _warn_about_world_size(state)
    plan = BatchPlan.for_recipe(recipe, state.num_processes)
    checkpoint = None
    run: RunDirectory | None = None
    inputs = recipe_inputs(recipe)
    if resume and overwrite:
        raise LlmkitError("--resume continues a run and --overwrite replaces it; give one of them.")
    try:
        if resume:
            # Only the main process of a multi-process run holds the run's lock.
            run = RunDirectory.open_unfinished(output_dir, lock=state.is_main_process)
            check_resumable(run, recipe)
            checkpoint = latest_checkpoint(run.checkpoints_dir)
            if checkpoint is None:
                raise RunDirectoryError(
                    f"Cannot resume: '{output_dir}' has no complete checkpoint (the run stopped before "
                    "its first one was saved).",
                    hint="start over with --overwrite; train.checkpoint_every=N saves every N steps",
                )
            if state.is_main_process:
                check_writable(output_dir, "run directory")
            run.writes = state.is_main_process
        elif state.is_main_process:
            RunDirectory.check_available(output_dir, overwrite, inputs)
        # The main process reads, tokenises and caches first; the others then reuse its caches.
        with state.main_process_first():
            prepared = prepare(recipe, show_progress=state.is_main_process)
        if run is not None and checkpoint is not None:
            run.truncate_log(after_step=checkpoint_step(checkpoint))
        elif state.is_main_process:
            run = RunDirectory.create(output_dir, overwrite, inputs)
            # Paths absolute, so the run's commands work from any directory.
            run.write_recipe({**recipe.model_dump(mode="json"), "output_dir": str(output_dir.resolve())})
        else:
            run = RunDirectory(output_dir, writes=False)
        state.wait_for_everyone()
        return _run(prepared, run, checkpoint, plan)
    finally:
        if run is not None:
            run.close()


def recipe_inputs(recipe: Recipe) -> list[Path]:
    """Files and directories the run reads, which its output may never replace."""
    data = recipe.data
    found = [Path(p) for p in (data.train_file, data.validation_file, data.test_file) if p is not None]
    checkpoint = Path(recipe.model.checkpoint).expanduser()
    found += [checkpoint] if checkpoint.exists() else []
    if recipe.train.distill is not None:
        found.append(Path(recipe.train.distill.teacher).expanduser())
    return found


def _run(prepared: Prepared, run: RunDirectory, checkpoint: Path | None, plan: Any) -> dict[str, Any]:
    """Train in the prepared run directory, recording the outcome in status.json: completed, or
    failed with the reason and the last checkpoint (Ctrl-C and SIGTERM included)."""
    run.set_status("running", started_at=now(), resumed_from=str(checkpoint) if checkpoint else None)
    try:
        with stop_signals_raise():
            results = _train(prepared, run, checkpoint, plan)
    except (KeyboardInterrupt, Terminated) as exc:
        raise interrupted(run, exc, record_failure) from None
    except Exception as exc:
        failure = explain_failure(exc, run, prepared.recipe)
        record_failure(run, str(failure))
        if failure is exc:
            raise
        raise failure from exc
    run.write_results(results)
    run.set_status("completed", finished_at=results["finished_at"])
    run.remove_checkpoints()  # only needed to resume an unfinished run
    return results


def record_failure(run: RunDirectory, reason: str) -> None:
    """status.json says failed, why, and the last checkpoint; an unwritable run directory keeps
    what it has (the error raised says what went wrong)."""
    with suppress(OSError):
        run.set_status("failed", reason=reason, **resume_note(run))


def _train(prepared: Prepared, run: RunDirectory, resume_from: Path | None, plan: Any) -> dict[str, Any]:
    from llmkit.memory import peaks_per_process, restart_peak, training_state_mb_per_process
    from llmkit.models.parameters import base_model, parameter_counts
    from llmkit.training.embedding_rows import used_rows_while_training
    from llmkit.training.flops import flops_per_example
    from llmkit.training.precision import frozen_weights_in_half_precision, resolve_precision
    from llmkit.training.strategies import (
        engine_tensors_at_rest,
        gathered_state_dict,
        plain_class_name,
        unsharded_prompt_encoder,
    )
    from llmkit.training.trainer import build_trainer
    from llmkit.versions import run_versions

    recipe, splits = prepared.recipe, prepared.splits
    started_at = now()
    distillation = prepared.distillation
    if distillation is not None:
        from llmkit.distill.cache import ROW

        # The main process computes (or finds) the cache first; the others then read it.
        with distributed_state().main_process_first():
            distillation.cache_logits(
                run.path, splits["train"], prepared.task, recipe.data, recipe.train.eval_batch_size
            )
        splits = {**splits, "train": splits["train"].add_column(ROW, list(range(len(splits["train"]))))}
    engine_owned = recipe.train.distributed.engine_owns_parameters
    with (
        used_rows_while_training(
            prepared.model, prepared.tokenizer, splits["train"], engine_owned
        ) as used_rows,
        frozen_weights_in_half_precision(prepared.model, recipe.train.precision, engine_owned),
    ):
        trainer = build_trainer(
            recipe,
            prepared.model,
            prepared.tokenizer,
            splits["train"],
            splits["validation"],
            prepared.task,
            prepared.label_names,
            output_dir=run.checkpoints_dir,
            log_path=run.log_path,
            plan=plan,
            distillation=distillation,
        )
        before_training = restart_peak()
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    training_seconds = output.metrics["train_runtime"] - trainer.evaluation_seconds
    epochs_done = trainer.state.epoch or 0.0
    samples = round(len(splits["train"]) * epochs_done)
    if resume_from is not None:  # throughput of this session's steps only
        steps_now = trainer.state.global_step - checkpoint_step(resume_from)
        samples = min(samples, steps_now * recipe.train.batch_size)
    lengths = [len(ids) for ids in splits["train"]["input_ids"]]
    tokens = sum(lengths) / len(lengths) * samples
    model_flops = flops_per_example(trainer.model, recipe.method, lengths) * samples
    peaks, training_peaks = peaks_per_process(before_training)
    training_state = training_state_mb_per_process(
        trainer.model, trainer.optimizer, engine_tensors_at_rest(trainer, recipe.train.distributed)
    )

    names = ("loss", *prepared.task.metric_names(recipe.eval))
    metrics = {"validation": _final_validation(trainer, names)}
    if "test" in splits:
        metrics["test"] = _strip(trainer.evaluate(splits["test"], metric_key_prefix="test"), "test", names)
    check_finite(trainer.model, metrics, recipe)  # before generating with broken weights
    for split, values in metrics.items():
        values.update(prepared.task.final_metrics(trainer.model, prepared.tokenizer, splits[split], recipe))
    evaluations = _evaluations(trainer, metrics["validation"], training_seconds)
    results = {
        "status": "completed",
        "started_at": started_at,
        "finished_at": now(),
        "model": {
            "checkpoint": recipe.model.checkpoint,
            "model_type": prepared.traits.model_type,
            "architecture": plain_class_name(base_model(trainer.model)),
        },
        "task": recipe.task.model_dump(mode="json"),
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
            "resumed_from_step": checkpoint_step(resume_from) if resume_from else None,
            "learning_rate": recipe.learning_rate,
            "batch_size": recipe.train.batch_size,
            "world_size": plan.world_size,
            "strategy": recipe.train.distributed.strategy,
            # What accelerate actually ran (FSDP, DEEPSPEED, MULTI_GPU, MULTI_CPU for DDP on CPU, NO).
            "distributed_type": str(trainer.accelerator.distributed_type.value),
            "micro_batch_size": plan.micro_batch_size,
            "gradient_accumulation_steps": plan.accumulation_steps,
            "precision": resolve_precision(recipe.train.precision),
            # Rows of the word embedding trained as their own parameter: those of the tokens in the
            # training split (llmkit/training/embedding_rows.py); null: the table as one, or frozen.
            "embedding_rows_trained": len(used_rows.used_ids) if used_rows is not None else None,
            "final_loss": output.training_loss,
            # Each validation evaluation, with the training time before it (this session's).
            "evaluations": evaluations,
            "reached_stop_at": target_reached(metrics["validation"], recipe.eval.stop_at, prefix="")
            if recipe.eval.stop_at
            else None,
            "runtime_s": round(training_seconds, 3),
            "samples_per_second": round(samples / training_seconds, 3),
            "tokens_per_second": round(tokens / training_seconds, 1),
            # The arithmetic the training needs at the least (llmkit/training/flops.py says what
            # is counted); over the hardware's peak it gives MFU, which `llmkit bench` reports.
            "model_flops": float(f"{model_flops:.4g}"),
            "model_flops_per_second": float(f"{model_flops / training_seconds:.4g}"),
            "peak_memory_mb": peaks[0],
            "peak_memory_mb_per_process": peaks,
            # From the start of training (loading's transient peak excluded): what sharding divides.
            "training_peak_memory_mb_per_process": training_peaks,
            # Parameters and optimizer state each process holds (its shard under FSDP/ZeRO-3).
            "training_state_mb_per_process": training_state,
            "device": str(trainer.args.device),
        },
        "parameters": parameter_counts(trainer.model),
        **({"distill": distillation.record()} if distillation is not None else {}),
        "versions": run_versions(),
    }
    # Sharded weights are gathered by every process (a collective), then written by the main one.
    weights = gathered_state_dict(trainer, recipe.train.distributed)
    with unsharded_prompt_encoder(trainer.model):
        _save_model(
            run, lambda path: _save_shared(trainer.model, prepared, results, path, run.model_dir, weights)
        )
    if run.checkpoints_dir.is_dir() and not any(run.checkpoints_dir.iterdir()):
        run.checkpoints_dir.rmdir()
    return results


def _save_shared(
    model: Any,
    prepared: Prepared,
    results: dict[str, Any],
    staging: Path,
    final: Path,
    weights: dict[str, Any] | None = None,
) -> None:
    """The trained model with what other tools need to use it: the tokenizer truncating as
    training did, the base named without this machine's paths, and a model card."""
    from llmkit.models.card import card_facts, write_card
    from llmkit.models.loading import save_trained
    from llmkit.models.sharing import ADAPTER_CONFIG_FILE, record_base

    recipe = prepared.recipe
    save_trained(model, prepared.tokenizer, prepared.label_names, staging, recipe.data.max_length, weights)
    facts = card_facts(recipe, results, final, is_adapter=(staging / ADAPTER_CONFIG_FILE).is_file())
    record_base(staging, facts.base)
    write_card(staging, facts)


def _warn_about_world_size(state: Any) -> None:
    from llmkit.world_size import world_size_warning

    warning = world_size_warning(state.num_processes)
    if warning and state.is_main_process:
        print(f"warning: {warning}", file=sys.stderr, flush=True)


def _save_model(run: RunDirectory, write: Any) -> None:
    """The trained model into the run; if that fails this late, into a temporary directory
    instead, so the training is not lost."""
    import tempfile

    try:
        run.save_model(write)
    except OSError as exc:
        try:
            rescued = Path(tempfile.mkdtemp(prefix="llmkit-rescued-model-"))
            write(rescued)
            kept = f"the trained model was saved to {rescued} instead"
        except OSError:
            kept = "it could not be saved elsewhere either"
        raise RunDirectoryError(
            f"Could not write the trained model to '{run.model_dir}' ({exc.strerror or exc}); {kept}.",
            hint="check that the run directory is writable and has space",
        ) from exc


def _evaluations(trainer: Any, final: dict[str, float], training_seconds: float) -> list[dict[str, Any]]:
    """The evaluations made during training, and the final one when it came after training."""
    evaluations = list(trainer.evaluations)
    if not evaluations or evaluations[-1]["step"] != trainer.state.global_step:
        step, epoch = trainer.state.global_step, round(trainer.state.epoch or 0.0, 4)
        evaluations.append({"step": step, "epoch": epoch, "training_s": round(training_seconds, 3), **final})
    return evaluations


def _final_validation(trainer: Any, names: tuple[str, ...]) -> dict[str, float]:
    """Validation metrics of the final weights, reusing the last epoch's if it ran at this step."""
    history = trainer.state.log_history
    last_eval = next((e for e in reversed(history) if "eval_loss" in e), None)
    if last_eval is not None and last_eval.get("step") == trainer.state.global_step:
        return _strip(last_eval, "eval", names)
    return _strip(trainer.evaluate(), "eval", names)


def _strip(metrics: dict[str, Any], prefix: str, names: tuple[str, ...]) -> dict[str, float]:
    """The task's metrics (and loss) of a Trainer evaluation, without Trainer's timings."""
    return {
        k.removeprefix(f"{prefix}_"): v for k, v in metrics.items() if k.removeprefix(f"{prefix}_") in names
    }
