"""Training failures with a known remedy, turned into messages that say what to do."""

from __future__ import annotations

from typing import Any

from llmkit.errors import LlmkitError, RunDirectoryError
from llmkit.recipe.schema import Recipe
from llmkit.rundir import RunDirectory


class TrainingOutOfMemory(LlmkitError):
    """The device ran out of memory during training."""


def explain_failure(exc: Exception, run: RunDirectory, recipe: Recipe) -> Exception:
    """User-facing errors for failures with a known remedy; others are returned unchanged."""
    import torch

    from llmkit.training.trainer import latest_checkpoint

    checkpoint = latest_checkpoint(run.checkpoints_dir)
    text = str(exc)
    if isinstance(exc, OSError) and exc.filename and str(exc.filename).startswith(str(run.path)):
        kept = f"; --resume continues it from {checkpoint.name}" if checkpoint else ""
        return RunDirectoryError(
            f"Could not write '{exc.filename}' in the run directory ({exc.strerror or exc}){kept}.",
            hint="check that the run directory is writable and has space",
        )
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


class BrokenModel(LlmkitError):
    """Training ended with non-finite weights or metrics: not a model to publish."""


def check_finite(model: Any, metrics: dict[str, dict[str, float]], recipe: Recipe) -> None:
    """A run whose weights or final evaluation are NaN or infinite has failed, whatever its loss
    did on the way (a loss can stay finite up to the step whose update breaks the weights)."""
    import math

    import torch

    broken = [
        name for name, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())
    ]
    figures = [
        f"{split} {name} {value}"
        for split, found in metrics.items()
        for name, value in found.items()
        if isinstance(value, float) and not math.isfinite(value)
    ]
    if not broken and not figures:
        return
    what = []
    if figures:
        what.append("the final evaluation gives " + ", ".join(figures))
    if broken:
        what.append(f"{len(broken)} trained weight tensors hold NaN or infinite values ({broken[0]}, ...)")
    raise BrokenModel(
        f"Training produced a broken model: {' and '.join(what)} (learning rate {recipe.learning_rate:g}); "
        "no model was saved.",
        hint="lower train.learning_rate, raise train.warmup_ratio or lower train.max_grad_norm, then "
        "start again with --overwrite",
    )
