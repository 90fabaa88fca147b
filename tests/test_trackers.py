"""`train.report_to`: transformers' experiment trackers, TensorBoard tested end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from helpers import explain, log_entries


def test_tensorboard_receives_the_loss_curve(
    make_recipe, cli, bert_checkpoint, sentiment_data, tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'llmkit[trackers]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train={"report_to": ["tensorboard"]})
    run_dir = tmp_path / "run"
    result = cli("finetune", recipe, "--output-dir", run_dir)
    assert result.exit_code == 0, explain(result)

    event_dirs = {path.parent for path in (run_dir / "tensorboard").rglob("events.out.tfevents.*")}
    assert len(event_dirs) == 1, f"expected one TensorBoard log directory, found {event_dirs}"
    events = EventAccumulator(str(event_dirs.pop()))
    events.Reload()
    logged = [(entry["step"], entry["loss"]) for entry in log_entries(run_dir) if "loss" in entry]
    curve = [(event.step, event.value) for event in events.Scalars("train/loss")]
    assert len(curve) == len(logged) > 1
    for (step, loss), (tb_step, tb_loss) in zip(logged, curve, strict=True):
        assert tb_step == step
        assert tb_loss == pytest.approx(loss, rel=1e-6)
    assert "eval/accuracy" in events.Tags()["scalars"]


def test_no_tracker_by_default(make_recipe, cli, bert_checkpoint, sentiment_data, tmp_path: Path) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "full", train={"max_steps": 2})
    result = cli("finetune", recipe, "--output-dir", tmp_path / "run")
    assert result.exit_code == 0, explain(result)
    assert not (tmp_path / "run" / "tensorboard").exists()
    assert not list((tmp_path / "run").rglob("events.out.tfevents.*"))


def test_missing_tracker_is_refused_before_training(
    make_recipe, cli, bert_checkpoint, sentiment_data, tmp_path: Path
) -> None:
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    recipe = make_recipe(bert_checkpoint, sentiment_data, "full", train={"report_to": ["wandb"]})
    result = cli("finetune", recipe, "--output-dir", tmp_path / "run")
    assert result.exit_code != 0
    assert "train.report_to names wandb, which is not installed" in result.stderr
    assert not (tmp_path / "run").exists(), "nothing is written before the check"


def test_unknown_tracker_is_a_recipe_error(make_recipe, cli, bert_checkpoint, sentiment_data) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "full", train={"report_to": ["tensorbord"]})
    result = cli("finetune", recipe, "--dry-run")
    assert result.exit_code != 0
    assert "train.report_to" in result.stderr and "tensorboard" in result.stderr


def test_tracker_names_are_transformers_own() -> None:
    from typing import get_args

    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    from llmkit.recipe.schema import Tracker

    assert set(get_args(Tracker)) <= set(INTEGRATION_TO_CALLBACK)
    assert json.dumps(list(get_args(Tracker)))  # plain strings, as the JSON schema lists them
