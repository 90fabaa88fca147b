"""Training failures with a known remedy, turned into messages that say what to do."""

from __future__ import annotations

from llmkit.errors import LlmkitError
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
