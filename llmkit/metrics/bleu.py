"""Corpus BLEU (sacrebleu, its default 13a tokenisation) against several references per
generation, as an `evaluate` metric module shipped with llmkit so it loads without the hub."""

from __future__ import annotations

import datasets
import evaluate

_DESCRIPTION = (
    "Corpus BLEU from sacrebleu, 0-100, every reference of a generation counted (a generation may "
    "have any number of them)."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    references (list of list of str): the references of each generation (one or more).
Returns:
    bleu (float): between 0 and 100.
"""


class Bleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post (2018), A Call for Clarity in Reporting BLEU Scores",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        import sacrebleu

        if not predictions:
            return {"bleu": 0.0}
        # sacrebleu takes reference streams (the k-th reference of every generation); a generation
        # with fewer references has None in the streams it lacks, which sacrebleu skips.
        streams = max(len(options) for options in references)
        columns = [
            [options[k] if k < len(options) else None for options in references] for k in range(streams)
        ]
        return {"bleu": float(sacrebleu.corpus_bleu(predictions, columns).score)}  # type: ignore[arg-type]
