"""Reopening a completed run: its recipe (with overrides), label names, task and trained model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from llmkit.errors import LlmkitError, RunDirectoryError
from llmkit.recipe.schema import Recipe
from llmkit.rundir import RECIPE_FILE, RunDirectory

if TYPE_CHECKING:
    from llmkit.models.loading import LoadedModel
    from llmkit.tasks import Task


@dataclass
class TrainedRun:
    run: RunDirectory
    recipe: Recipe
    label_names: list[str]

    @property
    def task(self) -> Task:
        from llmkit.tasks import task_for

        return task_for(self.recipe.task)


def read_run(path: Path, overrides: list[str] | None = None, command: str = "this command") -> TrainedRun:
    """A completed run's recipe (with `KEY=VALUE` overrides) and label names, without the model;
    `command` names the command for messages about a run that is not complete."""
    from llmkit.models.loading import LABELS_FILE
    from llmkit.recipe.loading import apply_overrides

    run = RunDirectory.open(path, command)
    recipe_path = run.path / RECIPE_FILE
    try:
        tree = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
        label_names = json.loads((run.model_dir / LABELS_FILE).read_text())["label_names"]
    except (OSError, ValueError, KeyError, yaml.YAMLError) as exc:
        raise RunDirectoryError(
            f"'{path}' looks like a run, but its {RECIPE_FILE} or model/{LABELS_FILE} cannot be read: {exc}",
            hint="the run directory may be damaged; train it again",
        ) from exc
    if not isinstance(tree, dict):
        raise RunDirectoryError(f"'{recipe_path}' does not hold a recipe.")
    recipe = apply_overrides(tree, overrides or [], str(recipe_path))
    return TrainedRun(run=run, recipe=recipe, label_names=list(label_names))


def check_data_overrides(overrides: list[str], command: str) -> None:
    """`evaluate` and `predict` change only how data is read; the model is the run's."""
    others = [item for item in overrides if not item.startswith("data.")]
    if others:
        raise LlmkitError(
            f"{command} takes data overrides only; got {', '.join(others)}.",
            hint="the model, method and training settings are the run's; choose the data with "
            "data.KEY=VALUE (e.g. data.test_file=new.csv or data.text_columns=review)",
        )


def load_model(trained: TrainedRun, checkpoint: Path | None = None) -> LoadedModel:
    """The run's trained model (or `checkpoint`, e.g. its merged copy), in eval mode on the GPU
    if there is one, and its tokenizer."""
    import warnings

    import torch

    from llmkit.models.loading import load_trained
    from llmkit.runtime import set_up_process

    set_up_process()
    # PEFT notes that GPT-2's fused Conv1D layers need fan_in_fan_out, and sets it: nothing to do.
    warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False", category=UserWarning)
    model_section = trained.recipe.model
    source = checkpoint if checkpoint is not None else trained.run.model_dir
    if checkpoint is not None and not (checkpoint / "config.json").is_file():
        raise RunDirectoryError(
            f"'{checkpoint}' is not a model checkpoint: it has no config.json.",
            hint="give a directory written by `llmkit merge` or save_pretrained",
        )
    loaded = load_trained(source, model_section.checkpoint, model_section.revision, trained.task)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded.model = loaded.model.to(device).eval()
    return loaded
