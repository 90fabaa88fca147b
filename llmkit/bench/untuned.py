"""An untuned run: the model of an llmkit run's recipe evaluated as loaded, before any method wraps
it or any step trains it, on that recipe's validation split with its task's metrics. It gives the
floor a bench's trained runs are read against (an instruction model's BLEU on E2E before it has
seen the format; a classification head as initialised, about chance)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.fsutil import write_json
from llmkit.recipe.schema import Recipe
from llmkit.rundir import now

METHOD_NAME = "untuned"  # what the bench's tables show in the method column


def evaluate_untuned(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """Evaluate; write and return results.json content (no training figures: none were made)."""
    import torch
    from transformers import set_seed

    from llmkit.models.loading import load_classifier
    from llmkit.models.parameters import parameter_counts
    from llmkit.runtime import set_up_process
    from llmkit.tasks import task_for
    from llmkit.training.precision import resolve_precision

    set_up_process()
    started_at = now()
    task = task_for(recipe.task)
    labelled = task.load_splits(recipe.data, seed=recipe.train.seed)
    set_seed(recipe.train.seed)  # a new head starts from the seed, as the trained run's did
    loaded = load_classifier(recipe.model.checkpoint, labelled.label_names, recipe.model.revision, task)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = loaded.model.to(device).eval()
    precision = resolve_precision(recipe.train.precision)
    validation = labelled.splits["validation"]
    evaluated = task.evaluate(
        model,
        loaded.tokenizer,
        validation,
        recipe.data,
        recipe.eval,
        labelled.label_names,
        recipe.train.eval_batch_size,
        precision,
        "validation",
    )
    total = parameter_counts(model)["total"]
    results = {
        "status": "completed",
        "started_at": started_at,
        "finished_at": now(),
        "model": {"checkpoint": recipe.model.checkpoint},
        "task": recipe.task.model_dump(mode="json"),
        "method": {"name": METHOD_NAME},
        "data": {"train_rows": 0, "validation_rows": evaluated.rows, "label_names": labelled.label_names},
        "metrics": {"validation": evaluated.metrics},
        "train": {"epochs": 0, "samples": 0, "precision": precision},
        "parameters": {"trainable": 0, "total": total, "trainable_percent": 0.0},
        "report": evaluated.report.to_json(),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "results.json", results)
    return results
