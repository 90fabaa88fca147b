"""Per-class precision, recall and F1 with the confusion matrix they come from: what `evaluate`
shows beside the recipe's accuracy and F1 (which stay with `MetricSuite`, exactly as in training).

A class with no predictions has precision 0, one with no examples has recall 0, as scikit-learn
reports them with `zero_division=0`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int  # examples whose true label is this class


@dataclass(frozen=True)
class PerClassReport:
    label_names: list[str]
    scores: dict[str, ClassScores]
    # confusion[i][j]: examples of true class i predicted as class j.
    confusion: list[list[int]]

    def to_json(self) -> dict[str, Any]:
        return {
            "per_class": {name: vars(score) for name, score in self.scores.items()},
            "confusion_matrix": {
                "labels": self.label_names,
                "rows": "true label",
                "columns": "predicted label",
                "matrix": self.confusion,
            },
        }


def confusion_matrix(predictions: Any, references: Any, num_labels: int) -> np.ndarray:
    predicted = np.asarray(predictions, dtype=np.int64)
    true = np.asarray(references, dtype=np.int64)
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (true, predicted), 1)
    return confusion


def per_class_report(predictions: Any, references: Any, label_names: list[str]) -> PerClassReport:
    confusion = confusion_matrix(predictions, references, len(label_names))
    hits = np.diag(confusion).astype(float)
    predicted_count, true_count = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = _safe_divide(hits, predicted_count)
    recall = _safe_divide(hits, true_count)
    f1 = _safe_divide(2 * hits, predicted_count + true_count)
    scores = {
        name: ClassScores(float(precision[i]), float(recall[i]), float(f1[i]), int(true_count[i]))
        for i, name in enumerate(label_names)
    }
    return PerClassReport(list(label_names), scores, confusion.tolist())


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    denominator = denominator.astype(float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=float), where=denominator > 0)
