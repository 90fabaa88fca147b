"""`llmkit evaluate`: a trained run's metrics on one of its recipe's splits or on any labelled
file, with the metric code training used, plus the task's report (for sequence classification:
per-class scores and the confusion matrix)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import DataError, LlmkitError
from llmkit.runs import check_data_overrides, load_model, read_run

if TYPE_CHECKING:
    from datasets import Dataset
    from rich.console import Console

    from llmkit.runs import TrainedRun
    from llmkit.tasks import TaskReport

SPLITS = ("train", "validation", "test")


@dataclass
class Evaluation:
    run_dir: str
    split: str  # train, validation, test, or "file" for --data
    source: str  # where the rows came from
    rows: int
    metrics: dict[str, float]  # loss and the task's metrics, as in results.json
    report: TaskReport

    def to_json(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir,
            "split": self.split,
            "source": self.source,
            "rows": self.rows,
            "metrics": self.metrics,
            **self.report.to_json(),
        }


def evaluate_run(
    run_dir: Path,
    data_file: Path | None = None,
    overrides: list[str] | None = None,
    split: str = "validation",
    batch_size: int | None = None,
    checkpoint: Path | None = None,
) -> Evaluation:
    overrides = overrides or []
    check_data_overrides(overrides, "evaluate")
    trained = read_run(run_dir, overrides, command="evaluate")
    recipe, task = trained.recipe, trained.task
    if data_file is not None:
        dataset = task.read_labelled_file(data_file, recipe.data, trained.label_names)
        split, source = "file", str(data_file)
    else:
        dataset, source = _recipe_split(trained, split)
    loaded = load_model(trained, checkpoint)
    result = task.evaluate(
        loaded.model,
        loaded.tokenizer,
        dataset,
        recipe.data,
        recipe.eval,
        trained.label_names,
        batch_size or recipe.train.eval_batch_size,
        recipe.train.precision,
        split,
    )
    return Evaluation(
        run_dir=str(run_dir),
        split=split,
        source=source,
        rows=result.rows,
        metrics=result.metrics,
        report=result.report,
    )


def _recipe_split(trained: TrainedRun, split: str) -> tuple[Dataset, str]:
    """One split exactly as training built it (same files, caps and carved validation)."""
    if split not in SPLITS:
        raise LlmkitError(f"Unknown split '{split}'.", hint=f"choose one of: {', '.join(SPLITS)}")
    data = trained.recipe.data
    labelled = trained.task.load_splits(data, seed=trained.recipe.train.seed)
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

    console = console or Console()
    console.print(
        f"{evaluation.run_dir}: {evaluation.split} ({evaluation.rows} rows from {evaluation.source})"
    )
    summary = "  ".join(f"{name} {value:.4f}" for name, value in evaluation.metrics.items())
    console.print(summary)
    evaluation.report.print(console)
