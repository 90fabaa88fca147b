"""Experiment trackers (`train.report_to`): transformers' integrations, checked before training
and pointed at the run directory where they write files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError

TENSORBOARD_DIR = "tensorboard"


def check_trackers(names: Sequence[str]) -> None:
    """Every tracker asked for is installed; found now rather than when Trainer starts."""
    if not names:
        return
    from transformers.integrations import get_available_reporting_integrations

    missing = [name for name in names if name not in get_available_reporting_integrations()]
    if missing:
        raise LlmkitError(
            f"train.report_to names {', '.join(missing)}, which is not installed.",
            hint="install it (tensorboard: pip install 'llmkit[trackers]') or remove it from train.report_to",
        )


def report_to(names: Sequence[str]) -> list[str] | str:
    return list(names) or "none"


def place_tracker_files(trainer: Any, run_dir: Path) -> None:
    """TensorBoard writes under the Trainer's output directory by default: llmkit's checkpoint
    directory, deleted when the run completes. Its event files go to RUN_DIR/tensorboard instead
    (unless TENSORBOARD_LOGGING_DIR says otherwise)."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(run_dir / TENSORBOARD_DIR)
