"""Resuming an unfinished run: which recipe changes its checkpoints survive, which checkpoint to
continue from, and what a failed run's status says about resuming."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.errors import RunDirectoryError
from llmkit.recipe.schema import Recipe
from llmkit.rundir import RunDirectory

# Recipe keys that may differ when resuming: none of them changes the training computed.
RESUME_MAY_CHANGE = {
    "output_dir",
    "train.logging_steps",
    "train.eval_batch_size",
    "train.micro_batch_size",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.report_to",
}


def check_resumable(run: RunDirectory, recipe: Recipe) -> None:
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


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])


def resume_note(run: RunDirectory) -> dict[str, str]:
    from llmkit.training.trainer import latest_checkpoint

    checkpoint = latest_checkpoint(run.checkpoints_dir)
    return {"last_checkpoint": str(checkpoint)} if checkpoint else {}
