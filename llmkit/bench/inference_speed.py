"""Inference throughput of a trained run: `llmkit predict`'s engine (the one `llmkit evaluate` uses
too) against a transformers `pipeline("text-classification")` on the same loaded model, the same
rows and the same batch size, in this process, one after the other. The pipeline gets the model as
plain transformers computes it: llmkit's last-layer shortcut (llmkit/models/first_position.py) is
taken off before it runs, since a user's pipeline does not have it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from llmkit.errors import LlmkitError

T = TypeVar("T")
WARM_UP_ROWS = 16  # first calls pay for lazy initialisation, not per row


def compare_with_pipeline(run_dir: Path, rows_file: Path, batch_size: int | None = None) -> dict[str, Any]:
    """Rows/s of both on every row of `rows_file`, and how often their labels agree."""
    from transformers import pipeline

    from llmkit.models.first_position import compute_every_position
    from llmkit.runs import load_model, read_run
    from llmkit.tasks.sequence_classification import predict_probabilities

    trained = read_run(run_dir)
    data = trained.recipe.data
    dataset = trained.task.read_unlabelled(str(rows_file), data, None)
    loaded = load_model(trained)
    batch_size = batch_size or trained.recipe.train.eval_batch_size
    tokenizer: Any = loaded.tokenizer  # the pipeline's type hints name concrete tokenizer classes
    if len(data.text_columns) == 1:
        inputs: list[Any] = list(dataset[data.text_columns[0]])
    else:
        first, second = data.text_columns
        inputs = [{"text": a, "text_pair": b} for a, b in zip(dataset[first], dataset[second], strict=True)]
    options = {"batch_size": batch_size, "truncation": True, "max_length": data.max_length}

    def ours(rows: Any) -> Any:
        return predict_probabilities(
            loaded.model, loaded.tokenizer, rows, data, batch_size, trained.recipe.train.precision
        )

    ours(dataset.select(range(min(WARM_UP_ROWS, len(dataset)))))
    llmkit_seconds, probabilities = _timed(lambda: ours(dataset))

    compute_every_position(loaded.model)
    # Left out of the pipeline's timing: building it wraps the loaded model, nothing per row.
    classifier = pipeline(
        "text-classification",
        model=loaded.model,
        tokenizer=tokenizer,
        device=next(loaded.model.parameters()).device,
    )

    def theirs(rows: list[Any]) -> list[Any]:
        return list(classifier(rows, **options))

    theirs(inputs[:WARM_UP_ROWS])
    pipeline_seconds, outputs = _timed(lambda: theirs(inputs))

    label_ids = loaded.model.config.label2id
    try:
        pipeline_labels = [label_ids[output["label"]] for output in outputs]
    except KeyError as exc:
        raise LlmkitError(f"The pipeline returned a label the model does not have: {exc}") from exc
    agreement = sum(int(a == b) for a, b in zip(probabilities.argmax(axis=-1), pipeline_labels, strict=True))
    count = len(inputs)
    return {
        "rows": count,
        "batch_size": batch_size,
        "llmkit_rows_per_second": round(count / llmkit_seconds, 1),
        "pipeline_rows_per_second": round(count / pipeline_seconds, 1),
        "ratio": round(pipeline_seconds / llmkit_seconds, 3),
        "label_agreement": round(agreement / count, 4),
    }


def _timed(work: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result
