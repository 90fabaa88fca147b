"""Metrics through `evaluate`, from modules shipped in this package (no hub access needed)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError

if TYPE_CHECKING:
    import evaluate

    from llmkit.recipe.schema import EvalSection

MODULE_DIR = Path(__file__).parent


@cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    import evaluate

    return evaluate.load(str(MODULE_DIR / f"{name}.py"), keep_in_memory=True)


@dataclass(frozen=True)
class MetricSuite:
    """The recipe's metrics with their options resolved against the label set."""

    names: tuple[str, ...]
    f1_average: str
    pos_label: int
    num_labels: int

    @classmethod
    def for_recipe(cls, evaluation: EvalSection, label_names: list[str]) -> MetricSuite:
        """The suite a recipe's `eval` section asks for, checked against the data's labels."""
        return cls.for_labels(
            list(evaluation.metrics), label_names, evaluation.f1_average, evaluation.positive_label
        )

    @classmethod
    def for_labels(
        cls, names: list[str], label_names: list[str], f1_average: str | None, positive_label: str | None
    ) -> MetricSuite:
        average = f1_average or ("binary" if len(label_names) == 2 else "macro")
        if average == "binary" and len(label_names) != 2:
            raise LlmkitError(
                f"eval.f1_average=binary needs two labels, the data has {len(label_names)}; "
                "use macro, micro or weighted"
            )
        if positive_label is not None and positive_label not in label_names:
            raise LlmkitError(
                f"eval.positive_label {positive_label!r} is not a label; labels are: "
                + ", ".join(label_names)
            )
        pos_label = label_names.index(positive_label) if positive_label is not None else 1
        return cls(tuple(names), average, pos_label, len(label_names))

    def compute(self, predictions: Any, references: Any) -> dict[str, float]:
        results: dict[str, float] = {}
        for name in self.names:
            options: dict[str, Any] = {}
            if name == "f1":
                options = {
                    "average": self.f1_average,
                    "pos_label": self.pos_label,
                    "num_labels": self.num_labels,
                }
            results.update(
                load_metric(name).compute(predictions=predictions, references=references, **options) or {}
            )
        return results
