"""ROUGE-L F-measure (rouge-score, stemmed) against several references per generation, as an
`evaluate` metric module shipped with llmkit so it loads without the hub."""

from __future__ import annotations

import datasets
import evaluate

_DESCRIPTION = (
    "ROUGE-L: the F-measure of the longest common subsequence with the best-matching reference, "
    "averaged over generations."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    references (list of list of str): the references of each generation (one or more).
Returns:
    rouge_l (float): between 0 and 1.
"""


class RougeL(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin (2004), ROUGE: A Package for Automatic Evaluation of Summaries",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        scores = [
            scorer.score_multi(options, prediction)["rougeL"].fmeasure
            for prediction, options in zip(predictions, references, strict=True)
        ]
        return {"rouge_l": sum(scores) / len(scores) if scores else 0.0}
