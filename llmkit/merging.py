"""`llmkit merge`: a trained run as one plain transformers checkpoint, loadable with the task's
auto class (`AutoModelForSequenceClassification.from_pretrained`...) and nothing from llmkit or PEFT.

LoRA's update is a low-rank matrix added to existing weights, so it folds into them exactly (up to
float rounding). Methods that add inputs (virtual tokens) rather than change weights say why they
cannot be merged (their options' `merge_refusal`)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import LlmkitError, RunDirectoryError
from llmkit.fsutil import check_replaceable, replace_dir
from llmkit.runs import TrainedRun, load_model, read_run

if TYPE_CHECKING:
    from llmkit.recipe.schema import DataSection
    from llmkit.tasks import Task

# Merged logits may differ from the adapter's by float rounding only; more means a broken merge.
LOGIT_TOLERANCE = 1e-4

MARKER_KIND = "merge"


@dataclass
class MergeResult:
    method: str
    output_dir: Path
    message: str
    max_logit_difference: float | None = None


def merge_run(run_dir: Path, output_dir: Path, overwrite: bool = False) -> MergeResult:
    trained = read_run(run_dir, command="merge")
    method, task = trained.recipe.method.name, trained.task
    auto_class = task.auto_model_class().__name__
    refusal = trained.recipe.method.merge_refusal
    if refusal is not None:
        raise LlmkitError(
            f"A {method} run cannot be merged: {refusal}.",
            hint=f"use the run as it is (llmkit predict {run_dir} ...), or load {trained.run.model_dir} "
            "with plain transformers and PEFT as its README.md shows",
        )
    _check_output_dir(output_dir, run_dir, overwrite, trained.recipe.model.checkpoint)
    if not (trained.run.model_dir / "adapter_config.json").is_file():
        # Full fine-tuning (or any method that trains the weights themselves) saves a plain checkpoint.
        def copy(target: Path) -> None:
            shutil.copytree(trained.run.model_dir, target, dirs_exist_ok=True)
            _share(trained, target, output_dir)

        replace_dir(output_dir, copy, kind=MARKER_KIND)
        return MergeResult(
            method,
            output_dir,
            f"{method} runs save a plain transformers checkpoint already ({trained.run.model_dir}); "
            f"copied it to {output_dir}.",
        )
    loaded = load_model(trained)
    data = trained.recipe.data
    before = _probe_logits(loaded.model, loaded.tokenizer, task, data)
    merged = loaded.model.merge_and_unload()

    def save_and_check(target: Path) -> float:
        _save(merged, loaded.tokenizer, target)
        _share(trained, target, output_dir)
        difference = _reloaded_difference(target, before, task, data)
        if difference > LOGIT_TOLERANCE:
            raise LlmkitError(
                f"The merged model's logits differ from the adapter's by {difference:.2e} (more than "
                f"{LOGIT_TOLERANCE:g}): the merge is not faithful, so nothing was written.",
                hint="please report this with the run's recipe.yaml",
            )
        return difference

    difference = replace_dir(output_dir, save_and_check, kind=MARKER_KIND)
    return MergeResult(
        method,
        output_dir,
        f"merged the {method} adapter into the base weights: {output_dir} loads with "
        f"{auto_class}.from_pretrained",
        max_logit_difference=difference,
    )


def _check_output_dir(output_dir: Path, run_dir: Path, overwrite: bool, base: str) -> None:
    """Before any work: the output is not the run or inside it, holds neither the run nor the
    base checkpoint, and is new, empty, or an earlier merge (with --overwrite)."""
    if output_dir.resolve() == run_dir.resolve() or run_dir.resolve() in output_dir.resolve().parents:
        raise RunDirectoryError(
            f"'{output_dir}' is inside the run directory.", hint="write the merged model elsewhere"
        )
    inputs = [run_dir, *([Path(base)] if Path(base).exists() else [])]
    check_replaceable(output_dir, overwrite, "output directory", MARKER_KIND, inputs)


def _save(model: Any, tokenizer: Any, target: Path) -> None:
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _share(trained: TrainedRun, target: Path, output_dir: Path) -> None:
    """The merged checkpoint's own model card, and its files free of this machine's paths."""
    import json

    from llmkit.models.card import card_facts, write_card
    from llmkit.models.sharing import record_base
    from llmkit.rundir import RESULTS_FILE

    results = json.loads((trained.run.path / RESULTS_FILE).read_text(encoding="utf-8"))
    facts = card_facts(trained.recipe, results, output_dir, is_adapter=False)
    record_base(target, facts.base)
    write_card(target, facts)


def _probe_logits(model: Any, tokenizer: Any, task: Task, data: DataSection) -> Any:
    import torch

    device = next(model.parameters()).device
    batch = task.probe_batch(tokenizer, data, None)
    with torch.inference_mode():
        return model(**{name: tensor.to(device) for name, tensor in batch.items()}).logits.float().cpu()


def _reloaded_difference(output_dir: Path, before: Any, task: Task, data: DataSection) -> float:
    """Largest logit difference between the adapter and the merged checkpoint, reloaded from disk
    as a user would load it: plain transformers, no llmkit or PEFT code."""
    from transformers import AutoTokenizer

    reloaded = task.auto_model_class().from_pretrained(output_dir).eval()
    after = _probe_logits(reloaded, AutoTokenizer.from_pretrained(output_dir), task, data)
    return float((after - before).abs().max())
