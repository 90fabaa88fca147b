"""`llmkit merge`: a trained run as one plain transformers checkpoint, loadable with
`AutoModelForSequenceClassification.from_pretrained` and nothing from llmkit or PEFT.

LoRA's update is a low-rank matrix added to existing weights, so it folds into them exactly (up to
float rounding). Prefix and prompt tuning add inputs (virtual tokens) rather than change weights:
no plain checkpoint computes the same function, so those runs cannot be merged."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from llmkit.errors import LlmkitError, RunDirectoryError
from llmkit.inference import load_model, read_run

# Merged logits may differ from the adapter's by float rounding only; more means a broken merge.
LOGIT_TOLERANCE = 1e-4
# Texts the merged model is checked on: varied lengths, no data files needed.
PROBE_TEXTS = [
    "ok",
    "the order arrived two weeks late and nobody answered my emails",
    "how do I change the password on my account",
    "I was charged twice this month, please refund one payment",
]

T = TypeVar("T")

NOT_MERGEABLE = {
    "prefix": "prefix tuning adds trained key/value vectors to every attention layer as extra "
    "positions; they are inputs, not changes to existing weights, so no plain checkpoint computes "
    "the same function",
    "prompt": "prompt tuning prepends trained embeddings to every input; they are inputs, not "
    "changes to existing weights, so no plain checkpoint computes the same function",
}


@dataclass
class MergeResult:
    method: str
    output_dir: Path
    message: str
    max_logit_difference: float | None = None


def merge_run(run_dir: Path, output_dir: Path, overwrite: bool = False) -> MergeResult:
    trained = read_run(run_dir)
    method = trained.recipe.method.name
    if method in NOT_MERGEABLE:
        raise LlmkitError(
            f"A {method} run cannot be merged: {NOT_MERGEABLE[method]}.",
            hint=f"use the run as it is (llmkit predict {run_dir} ...), or load {trained.run.model_dir} "
            "with peft.AutoPeftModelForSequenceClassification",
        )
    _check_output_dir(output_dir, run_dir, overwrite)
    if not (trained.run.model_dir / "adapter_config.json").is_file():
        # Full fine-tuning (or any method that trains the weights themselves) saves a plain checkpoint.
        _replace_dir(output_dir, lambda target: shutil.copytree(trained.run.model_dir, target))
        return MergeResult(
            method,
            output_dir,
            f"{method} runs save a plain transformers checkpoint already ({trained.run.model_dir}); "
            f"copied it to {output_dir}.",
        )
    loaded = load_model(trained)
    columns = trained.recipe.data.text_columns
    before = _probe_logits(loaded.model, loaded.tokenizer, columns)
    merged = loaded.model.merge_and_unload()

    def save_and_check(target: Path) -> float:
        _save(merged, loaded.tokenizer, target)
        difference = _reloaded_difference(target, before, columns)
        if difference > LOGIT_TOLERANCE:
            raise LlmkitError(
                f"The merged model's logits differ from the adapter's by {difference:.2e} (more than "
                f"{LOGIT_TOLERANCE:g}): the merge is not faithful, so nothing was written.",
                hint="please report this with the run's recipe.yaml",
            )
        return difference

    difference = _replace_dir(output_dir, save_and_check)
    return MergeResult(
        method,
        output_dir,
        f"merged the {method} adapter into the base weights: {output_dir} loads with "
        "AutoModelForSequenceClassification.from_pretrained",
        max_logit_difference=difference,
    )


def _check_output_dir(output_dir: Path, run_dir: Path, overwrite: bool) -> None:
    if output_dir.resolve() == run_dir.resolve() or run_dir.resolve() in output_dir.resolve().parents:
        raise RunDirectoryError(
            f"'{output_dir}' is inside the run directory.", hint="write the merged model elsewhere"
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise RunDirectoryError(f"'{output_dir}' exists and is not a directory.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise RunDirectoryError(
            f"'{output_dir}' already exists.",
            hint="pass --overwrite to replace it, or choose another directory",
        )


def _replace_dir(output_dir: Path, write: Callable[[Path], T]) -> T:
    """Write (and check) in a sibling staging directory, then rename it into place: a merge that
    fails or is killed leaves no directory that looks complete."""
    staging = output_dir.with_name(f".{output_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = write(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save(model: Any, tokenizer: Any, target: Path) -> None:
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _probe_logits(model: Any, tokenizer: Any, columns: list[str]) -> Any:
    import torch

    texts = [PROBE_TEXTS] * len(columns)  # a pair task reads each text against itself
    batch = tokenizer(*texts, padding=True, return_tensors="pt").to(next(model.parameters()).device)
    with torch.inference_mode():
        return model(**batch).logits.float().cpu()


def _reloaded_difference(output_dir: Path, before: Any, columns: list[str]) -> float:
    """Largest logit difference between the adapter and the merged checkpoint, reloaded from disk
    as a user would load it: plain transformers, no llmkit or PEFT code."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reloaded = AutoModelForSequenceClassification.from_pretrained(output_dir).eval()
    after = _probe_logits(reloaded, AutoTokenizer.from_pretrained(output_dir), columns)
    return float((after - before).abs().max())
