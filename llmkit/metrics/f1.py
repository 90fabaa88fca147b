"""F1 (binary, macro, micro or weighted) as an `evaluate` metric module, shipped with llmkit so it
loads without the hub. Computed from the confusion matrix; classes absent from both predictions
and references are left out of the macro average, as scikit-learn does with `labels=None`."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "F1: the harmonic mean of precision and recall."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted label ids.
    references (list of int): true label ids.
    average (str): 'binary' (F1 of pos_label), 'macro', 'micro' or 'weighted'.
    pos_label (int): the positive class id for 'binary'.
    num_labels (int, optional): the number of classes, when some may be absent.
Returns:
    f1 (float): between 0 and 1.
"""


class F1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(
        self,
        predictions: list[int],
        references: list[int],
        average: str = "binary",
        pos_label: int = 1,
        num_labels: int | None = None,
    ) -> dict[str, float]:
        predicted, true = np.asarray(predictions, dtype=np.int64), np.asarray(references, dtype=np.int64)
        size = max(
            num_labels or 0, int(predicted.max(initial=-1)) + 1, int(true.max(initial=-1)) + 1, pos_label + 1
        )
        confusion = np.zeros((size, size), dtype=np.int64)
        np.add.at(confusion, (true, predicted), 1)
        tp = np.diag(confusion).astype(float)
        predicted_count, true_count = confusion.sum(axis=0), confusion.sum(axis=1)
        per_class = _safe_divide(2 * tp, predicted_count + true_count)
        if average == "binary":
            return {"f1": float(per_class[pos_label])}
        if average == "micro":
            return {"f1": float(_safe_divide(2 * tp.sum(), predicted_count.sum() + true_count.sum()))}
        present = (predicted_count + true_count) > 0
        if average == "macro":
            return {"f1": float(per_class[present].mean()) if present.any() else 0.0}
        if average == "weighted":
            total = true_count.sum()
            return {"f1": float((per_class * true_count).sum() / total) if total else 0.0}
        raise ValueError(f"unknown average {average!r}; use binary, macro, micro or weighted")


def _safe_divide(numerator: np.ndarray | float, denominator: np.ndarray | float) -> np.ndarray:
    numerator, denominator = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
