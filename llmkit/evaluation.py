"""`llmkit evaluate`: a trained run's metrics on one of its recipe's splits or on any labelled
file, with the metric code training used, plus per-class scores and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import DataError, LlmkitError
from llmkit.inference import (
    load_model,
    mean_cross_entropy,
    predict_logits,
    read_labelled_file,
    read_run,
)

if TYPE_CHECKING:
    from datasets import Dataset
    from rich.console import Console

    from llmkit.inference import TrainedRun
    from llmkit.metrics.per_class import PerClassReport

SPLITS = ("train", "validation", "test")


@dataclass
class Evaluation:
    run_dir: str
    split: str  # train, validation, test, or "file" for --data
    source: str  # where the rows came from
    rows: int
    metrics: dict[str, float]  # loss and the recipe's eval.metrics, as in results.json
    per_class: PerClassReport

    def to_json(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir,
            "split": self.split,
            "source": self.source,
            "rows": self.rows,
            "metrics": self.metrics,
            **self.per_class.to_json(),
        }


def evaluate_run(
    run_dir: Path,
    data_file: Path | None = None,
    overrides: list[str] | None = None,
    split: str = "validation",
    batch_size: int | None = None,
    checkpoint: Path | None = None,
) -> Evaluation:
    from llmkit.data.tokenize import sorted_by_length, tokenize_split
    from llmkit.metrics import MetricSuite
    from llmkit.metrics.per_class import per_class_report

    overrides = overrides or []
    _check_data_overrides(overrides)
    trained = read_run(run_dir, overrides)
    recipe = trained.recipe
    if data_file is not None:
        dataset = read_labelled_file(data_file, recipe.data, trained.label_names)
        split, source = "file", str(data_file)
    else:
        dataset, source = _recipe_split(trained, split)
    loaded = load_model(trained, checkpoint)
    tokenised = sorted_by_length(
        tokenize_split(dataset, loaded.tokenizer, recipe.data.text_columns, recipe.data.max_length, split)
    )
    # Sorted and batched as training's evaluation sorts and batches them: the logits are then
    # bit-identical to training's, and the metrics equal results.json exactly.
    logits = predict_logits(
        loaded.model,
        loaded.tokenizer,
        tokenised,
        batch_size or recipe.train.eval_batch_size,
        sort_by_length=False,
        description=f"Evaluating {split}",
        precision=recipe.train.precision,
    )
    labels = list(tokenised["labels"])
    predictions = logits.argmax(axis=-1)
    suite = MetricSuite.for_recipe(recipe.eval, trained.label_names)
    metrics = {"loss": mean_cross_entropy(logits, labels), **suite.compute(predictions, labels)}
    return Evaluation(
        run_dir=str(run_dir),
        split=split,
        source=source,
        rows=len(labels),
        metrics=metrics,
        per_class=per_class_report(predictions, labels, trained.label_names),
    )


def _check_data_overrides(overrides: list[str]) -> None:
    others = [item for item in overrides if not item.startswith("data.")]
    if others:
        raise LlmkitError(
            f"evaluate takes data overrides only; got {', '.join(others)}.",
            hint="the model, method and training settings are the run's; choose the data with "
            "data.KEY=VALUE (e.g. data.test_file=new.csv) or --data FILE",
        )


def _recipe_split(trained: TrainedRun, split: str) -> tuple[Dataset, str]:
    """One split exactly as training built it (same files, caps and carved validation)."""
    from llmkit.data.loading import load_splits

    if split not in SPLITS:
        raise LlmkitError(f"Unknown split '{split}'.", hint=f"choose one of: {', '.join(SPLITS)}")
    data = trained.recipe.data
    labelled = load_splits(data, seed=trained.recipe.train.seed)
    if labelled.label_names != trained.label_names:
        raise DataError(
            f"The run's training data now has the labels {labelled.label_names}; the model was trained "
            f"with {trained.label_names}.",
            hint="the data files changed since training; evaluate a file with --data FILE",
        )
    if split not in labelled.splits:
        raise LlmkitError(
            f"The run's recipe has no {split} split.",
            hint=f"set data.{split}_file=FILE, or evaluate a file with --data FILE",
        )
    path = getattr(data, f"{split}_file", None)
    if labelled.validation_carved and split in ("train", "validation"):
        source = (
            f"{data.train_file} (validation carved out, data.validation_fraction {data.validation_fraction})"
        )
    else:
        source = str(path) if path is not None else f"{data.dataset} split {getattr(data, f'{split}_split')}"
    return labelled.splits[split], source


def print_evaluation(evaluation: Evaluation, console: Console | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(
        f"{evaluation.run_dir}: {evaluation.split} ({evaluation.rows} rows from {evaluation.source})"
    )
    summary = "  ".join(f"{name} {value:.4f}" for name, value in evaluation.metrics.items())
    console.print(summary)
    report = evaluation.per_class
    scores = Table()
    for column in ("label", "precision", "recall", "f1", "support"):
        scores.add_column(column, justify="left" if column == "label" else "right")
    for name, score in report.scores.items():
        scores.add_row(
            name, f"{score.precision:.4f}", f"{score.recall:.4f}", f"{score.f1:.4f}", str(score.support)
        )
    console.print("per class:")
    console.print(scores)
    confusion = Table()
    confusion.add_column("")
    for name in report.label_names:
        confusion.add_column(name, justify="right")
    for name, row in zip(report.label_names, report.confusion, strict=True):
        confusion.add_row(name, *map(str, row))
    console.print("confusion matrix (rows: true label, columns: predicted label):")
    console.print(confusion)
