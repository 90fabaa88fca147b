"""Normalised exact match against several references, as an `evaluate` metric module shipped with
llmkit so it loads without the hub."""

from __future__ import annotations

import re
import string

import datasets
import evaluate

_DESCRIPTION = (
    "Exact match: the share of generations equal to one of their references after normalising both "
    "(lower case, punctuation removed, whitespace collapsed)."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    references (list of list of str): the references of each generation (one or more).
Returns:
    exact_match (float): between 0 and 1.
"""
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalise(text: str) -> str:
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


class ExactMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        hits = [
            normalise(prediction) in {normalise(reference) for reference in options}
            for prediction, options in zip(predictions, references, strict=True)
        ]
        return {"exact_match": sum(hits) / len(hits) if hits else 0.0}
