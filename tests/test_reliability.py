"""Interrupted runs resume to the same result, checkpoints are never half-written, failures during
training stop with a message and keep the last checkpoint, and resume never happens unasked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from helpers import explain, finetune_failing_at_step, results_of

# A 25-step epoch on the 200-row fixture, checkpointed every 5 steps: killing the process after
# checkpoint-10 lands it mid-epoch.
RESUMABLE = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2, "checkpoint_every": 5, "logging_steps": 5}
# Resumed and uninterrupted runs restore the same weights, optimizer, scheduler, RNG and data
# order; on CPU the arithmetic repeats exactly, so the tolerance is only float noise.
WEIGHT_TOLERANCE = 1e-6


def _adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "adapter_model.safetensors")


def _status(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "status.json").read_text())


def _checkpoint_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in folder.iterdir() if p.name.startswith("checkpoint-"))


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, cli: Any, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, {"name": "lora", "r": 4}, train=RESUMABLE)

    straight = tmp_path / "straight"
    result = cli("finetune", recipe, "--output-dir", straight)
    assert result.exit_code == 0, explain(result)

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "llmkit", "finetune", str(recipe), "--output-dir", str(killed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(step >= 10 for step in _checkpoint_steps(killed)):
        assert process.poll() is None, f"run ended before it could be killed: {process.stderr.read()!r}"
        assert time.monotonic() < deadline, "no checkpoint-10 within 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    assert not (killed / "model").exists()
    assert _status(killed)["state"] == "running"  # as a killed process leaves it

    # Resume never happens unasked.
    again = cli("finetune", recipe, "--output-dir", killed)
    assert again.exit_code != 0
    assert "already exists" in again.stderr and "--resume" in again.stderr and "--overwrite" in again.stderr

    resumed = cli("finetune", recipe, "--output-dir", killed, "--resume")
    assert resumed.exit_code == 0, explain(resumed)
    first, second = results_of(straight), results_of(killed)
    assert second["train"]["resumed_from_step"] >= 10
    assert second["metrics"] == first["metrics"]
    before, after = _adapter_weights(straight), _adapter_weights(killed)
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=WEIGHT_TOLERANCE)
    assert _status(killed)["state"] == "completed"
    assert not (killed / "checkpoints").exists()  # only needed while a run is unfinished
    steps = [entry["step"] for entry in map(json.loads, (killed / "log.jsonl").read_text().splitlines())]
    assert steps == sorted(steps), "a resumed run logs the steps after its checkpoint once"


def test_a_run_failed_in_its_second_epoch_resumes_to_the_uninterrupted_run(
    bert_checkpoint: Path,
    sentiment_data: Any,
    make_recipe: Any,
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An epoch's batch order comes from the random numbers of its start, which a run resumed in
    a later epoch gets back (from the checkpoint) only after skipping the trained batches: the
    checkpoint keeps the state the order was drawn from."""
    from llmkit.training.trainer import SAMPLER_STATE_FILE

    recipe = make_recipe(bert_checkpoint, sentiment_data, {"name": "lora", "r": 4}, train=RESUMABLE)
    straight = tmp_path / "straight"
    assert (result := cli("finetune", recipe, "--output-dir", straight)).exit_code == 0, explain(result)

    failed = tmp_path / "failed"
    # Epoch 2 of 25-step epochs, after checkpoint-30.
    result = finetune_failing_at_step(
        monkeypatch, recipe, failed, step=32, message="a crash in the second epoch"
    )
    assert result.exit_code != 0 and "a crash in the second epoch" in result.stderr
    epoch, _ = torch.load(failed / "checkpoints" / "checkpoint-30" / SAMPLER_STATE_FILE, weights_only=True)
    assert epoch == 1  # the second epoch's order

    resumed = cli("finetune", recipe, "--output-dir", failed, "--resume")
    assert resumed.exit_code == 0, explain(resumed)
    assert results_of(failed)["train"]["resumed_from_step"] == 30
    assert results_of(failed)["metrics"] == results_of(straight)["metrics"]
    before, after = _adapter_weights(straight), _adapter_weights(failed)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=WEIGHT_TOLERANCE)


def test_resume_refuses_a_changed_recipe_and_names_the_change(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, cli: Any, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train={**RESUMABLE, "max_steps": 10})
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    # An unfinished run: its recipe and one complete checkpoint, as a crash would leave them.
    from llmkit.recipe.loading import load_recipe
    from llmkit.rundir import RunDirectory

    RunDirectory(run_dir).write_recipe(load_recipe(recipe).model_dump(mode="json"))
    (run_dir / "checkpoints" / "checkpoint-5").mkdir()

    result = cli("finetune", recipe, "train.learning_rate=0.5", "--output-dir", run_dir, "--resume")
    assert result.exit_code != 0
    assert "Cannot resume" in result.stderr
    assert "train.learning_rate: 0.01 -> 0.5" in result.stderr
    assert "--overwrite" in result.stderr
    assert "Traceback" not in result.output


def test_resume_without_a_checkpoint_or_after_completion_says_why(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, cli: Any, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train={"max_steps": 2})
    nothing = cli("finetune", recipe, "--output-dir", tmp_path / "absent", "--resume")
    assert nothing.exit_code != 0
    assert "not an llmkit run directory" in nothing.stderr

    run_dir = tmp_path / "done"
    assert cli("finetune", recipe, "--output-dir", run_dir).exit_code == 0
    done = cli("finetune", recipe, "--output-dir", run_dir, "--resume")
    assert done.exit_code != 0
    assert "already completed" in done.stderr

    both = cli("finetune", recipe, "--output-dir", run_dir, "--resume", "--overwrite")
    assert both.exit_code != 0
    assert "give one of them" in both.stderr

    from llmkit.rundir import RunDirectory

    RunDirectory(run_dir).set_status("failed", reason="test")
    no_checkpoint = cli("finetune", recipe, "--output-dir", run_dir, "--resume")
    assert no_checkpoint.exit_code != 0
    assert "no complete checkpoint" in no_checkpoint.stderr
    assert "checkpoint_every" in no_checkpoint.stderr


def test_a_checkpoint_interrupted_while_saving_is_never_taken_as_complete(
    bert_checkpoint: Path,
    sentiment_data: Any,
    make_recipe: Any,
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers import Trainer

    from llmkit.training.trainer import STAGING_DIR, latest_checkpoint

    saves = {"count": 0}
    original = Trainer._save_optimizer_and_scheduler

    def crash_during_second_save(self: Any, output_dir: str) -> None:
        saves["count"] += 1
        if saves["count"] == 2:  # the model files of checkpoint-10 are written, the rest is not
            raise OSError("disk unplugged")
        original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", crash_during_second_save)
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train=RESUMABLE)
    run_dir = tmp_path / "run"
    result = cli("finetune", recipe, "--output-dir", run_dir)
    assert result.exit_code != 0
    assert _checkpoint_steps(run_dir) == [5]
    assert (run_dir / "checkpoints" / STAGING_DIR / "checkpoint-10").is_dir()  # the partial one
    assert latest_checkpoint(run_dir / "checkpoints") == run_dir / "checkpoints" / "checkpoint-5"
    status = _status(run_dir)
    assert status["state"] == "failed"
    assert "disk unplugged" in status["reason"]
    assert status["last_checkpoint"].endswith("checkpoint-5")
    assert not (run_dir / "results.json").exists()


def test_a_diverging_loss_stops_with_the_step_and_learning_rate(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, cli: Any, tmp_path: Path
) -> None:
    recipe = make_recipe(
        bert_checkpoint,
        sentiment_data,
        "full",
        train={
            "learning_rate": 1e30,
            "lr_scheduler": "constant",
            "warmup_ratio": 0,
            "max_grad_norm": 1e30,
            "checkpoint_every": 1,
        },
    )
    run_dir = tmp_path / "run"
    result = cli("finetune", recipe, "--output-dir", run_dir)
    assert result.exit_code != 0
    assert "Training diverged" in result.stderr
    assert "at step" in result.stderr and "learning rate 1e+30" in result.stderr
    assert "lower train.learning_rate" in result.stderr
    assert "Traceback" not in result.output
    status = _status(run_dir)
    assert status["state"] == "failed" and "Training diverged" in status["reason"]
    assert _checkpoint_steps(run_dir), "the checkpoints before the failure are kept"
    assert status["last_checkpoint"].endswith(f"checkpoint-{_checkpoint_steps(run_dir)[-1]}")


def test_out_of_memory_stops_with_a_hint_and_keeps_the_checkpoint(
    bert_checkpoint: Path,
    sentiment_data: Any,
    make_recipe: Any,
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmkit.training.trainer import LlmkitTrainer

    original = LlmkitTrainer.training_step

    def allocate_too_much(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.state.global_step == 3:
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory"
            )
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LlmkitTrainer, "training_step", allocate_too_much)
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train={"checkpoint_every": 2})
    run_dir = tmp_path / "run"
    result = cli("finetune", recipe, "--output-dir", run_dir)
    assert result.exit_code != 0
    assert "Out of memory while training (micro batch 8, max_length 128)" in result.stderr
    assert "train.micro_batch_size" in result.stderr and "data.max_length" in result.stderr
    assert "checkpoint-2" in result.stderr and "--resume" in result.stderr
    assert "Traceback" not in result.output
    assert _checkpoint_steps(run_dir) == [2]


def test_failed_run_records_why_and_writes_no_results(
    bert_checkpoint: Path,
    sentiment_data: Any,
    make_recipe: Any,
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmkit.training.trainer import LlmkitTrainer

    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise ValueError("something broke inside training")

    monkeypatch.setattr(LlmkitTrainer, "training_step", broken)
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora")
    run_dir = tmp_path / "run"
    result = cli("finetune", recipe, "--output-dir", run_dir)
    assert result.exit_code == 1
    assert "unexpected ValueError: something broke inside training" in result.stderr
    assert "--debug" in result.stderr
    status = _status(run_dir)
    assert status["state"] == "failed"
    assert "something broke inside training" in status["reason"]
    assert not (run_dir / "results.json").exists()
    assert (run_dir / "recipe.yaml").exists()


def test_problems_in_several_data_files_are_reported_together(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, cli: Any, tmp_path: Path
) -> None:
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,label\ngood film,1\nbad, very bad,0\n", encoding="utf-8")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9 au lait,1\n".encode("latin-1"))
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora")
    result = cli(
        "finetune",
        recipe,
        f"data.train_file={ragged}",
        f"data.validation_file={latin}",
        f"data.test_file={tmp_path / 'missing.csv'}",
        "--output-dir",
        tmp_path / "run",
    )
    assert result.exit_code != 0
    assert "3 problems with the data files" in result.stderr
    assert "line 3 has 3 fields separated by ','; the header has 2" in result.stderr
    assert "not valid utf-8 text" in result.stderr and "data.encoding" in result.stderr
    assert "missing.csv' does not exist" in result.stderr
    assert not (tmp_path / "run").exists(), "nothing is written before the inputs check out"


def test_missing_labels_are_reported_with_row_numbers(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, cli: Any, tmp_path: Path
) -> None:
    holes = tmp_path / "holes.csv"
    holes.write_text("text,label\ngood,1\nbad,\nfine,1\nawful,\nmeh,0\n", encoding="utf-8")
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora")
    result = cli("finetune", recipe, f"data.train_file={holes}", "--output-dir", tmp_path / "run")
    assert result.exit_code != 0
    assert "2 rows" in result.stderr and "(data rows 2, 4)" in result.stderr


def test_a_directory_without_a_model_and_absent_lora_targets_are_explained(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, cli: Any, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora")
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    result = cli("finetune", recipe, f"model.checkpoint={empty}", "--output-dir", tmp_path / "a")
    assert result.exit_code != 0
    assert "is not a model directory: it has no config.json" in result.stderr

    result = cli("finetune", recipe, "method.target_modules=[q_proj]", "--output-dir", tmp_path / "b")
    assert result.exit_code != 0
    assert "does not have: q_proj" in result.stderr
    assert "query" in result.stderr and "value" in result.stderr  # the candidates are listed


def test_run_module_entry_point_matches_console_script() -> None:
    # The SIGKILL test starts `python -m llmkit`; make sure that is the same app.
    result = subprocess.run(
        [sys.executable, "-m", "llmkit", "--version"], capture_output=True, text=True, env=os.environ
    )
    assert result.returncode == 0 and result.stdout.startswith("llmkit ")
