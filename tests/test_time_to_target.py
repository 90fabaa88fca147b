"""Evaluations during training (`eval.every_steps`), each with the training time before it, and
stopping at a target (`eval.stop_at`): what the bench's time-to-accuracy figure reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import DataFiles, explain, log_entries, results_of


def test_every_evaluation_is_listed_with_the_training_time_before_it(
    make_recipe: Any, cli: Any, bert_checkpoint: Path, sentiment_data: DataFiles, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "full", train={"epochs": 1, "batch_size": 8})
    out = tmp_path / "run"
    result = cli("finetune", recipe, "eval.every_steps=3", "--output-dir", out)
    assert result.exit_code == 0, explain(result)
    results = results_of(out)
    train, evaluations = results["train"], results["train"]["evaluations"]
    steps = train["steps"]
    # Every third step, then the end (evaluated after training when the last step is not a multiple).
    expected = [*range(3, steps + 1, 3), *([steps] if steps % 3 else [])]
    assert [e["step"] for e in evaluations] == expected
    times = [e["training_s"] for e in evaluations]
    assert all(t > 0 for t in times) and times == sorted(times)
    assert times[-1] <= train["runtime_s"] * 1.05 + 0.05  # evaluation time is not training time
    # Each entry holds the validation figures, the last one the run's final ones.
    assert all({"loss", "accuracy", "f1"} <= set(e) and "runtime" not in e for e in evaluations)
    assert evaluations[-1]["accuracy"] == results["metrics"]["validation"]["accuracy"]
    logged = [e for e in log_entries(out) if "eval_loss" in e]
    assert [e["step"] for e in logged] == expected[: len(logged)]
    assert train["reached_stop_at"] is None


def test_training_stops_at_the_first_evaluation_that_reaches_the_target(
    make_recipe: Any, cli: Any, bert_checkpoint: Path, sentiment_data: DataFiles, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "full", train={"epochs": 3, "batch_size": 8})
    out = tmp_path / "run"
    # Accuracy >= 0 holds at the first evaluation: training ends there, at step 2 of many.
    result = cli("finetune", recipe, "eval.every_steps=2", "eval.stop_at={accuracy: 0}", "--output-dir", out)
    assert result.exit_code == 0, explain(result)
    train = results_of(out)["train"]
    assert train["steps"] == 2 and [e["step"] for e in train["evaluations"]] == [2]
    assert train["reached_stop_at"] is True
    # An unreachable target leaves the run whole, and says it was not reached.
    out = tmp_path / "unreached"
    overrides = ["train.epochs=1", "eval.every_steps=2", "eval.stop_at={f1: 1.5}"]
    result = cli("finetune", recipe, *overrides, "--output-dir", out)
    assert result.exit_code == 0, explain(result)
    train = results_of(out)["train"]
    assert train["epochs"] == 1 and train["reached_stop_at"] is False


def test_a_target_on_a_metric_the_task_does_not_compute_is_refused(
    make_recipe: Any, cli: Any, bert_checkpoint: Path, sentiment_data: DataFiles, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "full")
    out = tmp_path / "run"
    result = cli("finetune", recipe, "eval.stop_at={bleu: 20}", "--output-dir", out)
    assert result.exit_code == 2, explain(result)
    assert "eval.stop_at names 'bleu', which this task does not compute" in result.stderr
    assert "name the task's metrics: accuracy, f1" in result.stderr
    assert not (out / "model").exists()


def test_warm_up_is_the_ratio_of_the_steps_up_to_max_warmup_steps() -> None:
    from llmkit.recipe.schema import TrainSection
    from llmkit.training.trainer import warmup_steps

    default = TrainSection()
    assert (default.warmup_ratio, default.max_warmup_steps) == (0.06, 50)
    # A short run keeps the ratio, which Trainer turns into ceil(0.06 x steps): unchanged runs.
    assert warmup_steps(default, 833) == 0.06  # 50 steps exactly
    # A long run (SST-2's whole training set x 3 epochs: 6315 steps, 6% = 379) warms up 50.
    assert warmup_steps(default, 6315) == 50
    assert warmup_steps(TrainSection(max_warmup_steps=None), 6315) == 0.06
    assert warmup_steps(TrainSection(max_steps=1000), None) == 50  # max_steps counts when set


def test_a_long_warm_up_ratio_is_cut_to_max_warmup_steps_in_training(
    make_recipe: Any, cli: Any, bert_checkpoint: Path, sentiment_data: DataFiles, tmp_path: Path
) -> None:
    from llmkit.training.batching import BatchPlan

    train = {"epochs": 1, "batch_size": 8, "logging_steps": 1, "learning_rate": 1e-3, "warmup_ratio": 0.5}
    recipe = make_recipe(bert_checkpoint, sentiment_data, "full", train=train)
    out = tmp_path / "run"
    result = cli("finetune", recipe, "train.max_warmup_steps=2", "--output-dir", out)
    assert result.exit_code == 0, explain(result)
    results = results_of(out)
    steps = results["train"]["steps"]
    # llmkit counts the run's steps as Trainer does (it decides whether the limit applies).
    assert BatchPlan(1, 8, 1).optimizer_steps(results["data"]["train_rows"], 1) == steps
    rates = [e["learning_rate"] for e in log_entries(out) if "learning_rate" in e]
    # Warm-up over 2 steps (each entry is the rate after its step: 0, half, whole), then linear
    # decay: the peak comes at once, not half way through as the ratio 0.5 would have it.
    assert rates[:3] == [0.0, 5e-4, 1e-3] and 1e-3 > rates[3] > rates[-1] and steps > 10
