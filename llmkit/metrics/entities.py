"""Entity-level precision, recall and F1 (overall and per entity type) and token accuracy, as an
`evaluate` metric module over seqeval, shipped with llmkit so it loads without the hub.

`mode: strict` (the default) counts an entity only when its tags follow the scheme exactly (an
`I-PER` after `O` starts no entity in IOB2); `mode: conlleval` is seqeval's default, the
conlleval-compatible reading that starts an entity at such a tag, which run_ner reports."""

from __future__ import annotations

from typing import Any

import datasets
import evaluate

_DESCRIPTION = "Entity-level precision/recall/F1 (seqeval) per type and overall, and token accuracy."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of str): predicted tags per sentence.
    references (list of list of str): true tags per sentence.
    mode (str): strict (default) or conlleval.
    scheme (str): IOB2 (default), IOB1 or BIOES; used by strict mode.
Returns:
    precision, recall, f1 (float): entity-level, micro-averaged over types.
    accuracy (float): share of tokens whose tag is right.
    per_type (dict): {type: {precision, recall, f1, support}}.
"""


class Entities(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(
        self,
        predictions: list[list[str]],
        references: list[list[str]],
        mode: str = "strict",
        scheme: str = "IOB2",
    ) -> dict[str, Any]:
        from seqeval import scheme as schemes
        from seqeval.metrics import accuracy_score, classification_report

        options: dict[str, Any] = {"zero_division": 0, "output_dict": True}
        if mode == "strict":
            options.update(mode="strict", scheme=getattr(schemes, scheme))
        report = classification_report(references, predictions, **options)
        overall = report.pop("micro avg")
        for average in ("macro avg", "weighted avg"):
            report.pop(average, None)
        per_type = {
            kind: {
                "precision": float(scores["precision"]),
                "recall": float(scores["recall"]),
                "f1": float(scores["f1-score"]),
                "support": int(scores["support"]),
            }
            for kind, scores in sorted(report.items())
        }
        return {
            "precision": float(overall["precision"]),
            "recall": float(overall["recall"]),
            "f1": float(overall["f1-score"]),
            "accuracy": float(accuracy_score(references, predictions)),
            "per_type": per_type,
        }
