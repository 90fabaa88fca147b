"""Accuracy as an `evaluate` metric module, shipped with llmkit so it loads without the hub."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy: the share of predictions equal to their reference label."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted label ids.
    references (list of int): true label ids.
Returns:
    accuracy (float): between 0 and 1.
"""


class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        predicted, true = np.asarray(predictions), np.asarray(references)
        return {"accuracy": float((predicted == true).mean()) if len(true) else 0.0}
