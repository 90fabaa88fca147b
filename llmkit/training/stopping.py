"""Stopping at a target (`eval.stop_at`): training ends at the first evaluation where every named
validation metric has reached its value. The schedule is left as the whole run's, so a run that
stops at its target has trained exactly as the same run without a target up to that step: what
"time to accuracy" measures."""

from __future__ import annotations

from typing import Any

from llmkit.errors import LlmkitError
from llmkit.recipe.schema import Recipe


def check_stop_at(recipe: Recipe, metric_names: tuple[str, ...]) -> None:
    """Refuse targets on metrics the task does not compute (they would never be reached)."""
    unknown = [name for name in recipe.eval.stop_at if name not in metric_names]
    if unknown:
        raise LlmkitError(
            f"eval.stop_at names {', '.join(map(repr, unknown))}, which this task does not compute.",
            hint=f"name the task's metrics: {', '.join(metric_names)}",
        )


def target_reached(metrics: dict[str, Any], targets: dict[str, float], prefix: str = "eval") -> bool:
    """Whether every target is reached in an evaluation's metrics (keys `{prefix}_{name}`)."""
    for name, target in targets.items():
        value = metrics.get(f"{prefix}_{name}" if prefix else name)
        if value is None or value < target:
            return False
    return True
