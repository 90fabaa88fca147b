"""Multi-process training through accelerate's launcher, on 2 CPU processes over gloo: runs
complete, only one run directory is written, and validation metrics count every example once
(the distributed sampler pads the last batch by repeating examples)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import ARCHITECTURES, METHODS, explain, failing_step_pythonpath, read_labels

# The launcher and two workers each import torch and transformers: give them time on a busy machine.
LAUNCH_TIMEOUT_S = 300


def _launch(*args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "llmkit", *map(str, args)]
    # CPU processes over gloo on any machine: a machine with one GPU cannot start two GPU ranks.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=env)


def _single_process_evaluation(run_dir: Path, checkpoint: Path) -> dict[str, float]:
    """The saved model evaluated in this one process, example by example, without Trainer."""
    from llmkit.data.loading import load_splits
    from llmkit.data.tokenize import tokenize_split
    from llmkit.metrics import MetricSuite
    from llmkit.models.loading import load_trained
    from llmkit.recipe.loading import validate_recipe

    recipe = validate_recipe(
        __import__("yaml").safe_load((run_dir / "recipe.yaml").read_text()), source="recipe.yaml"
    )
    labelled = load_splits(recipe.data, seed=recipe.train.seed)
    loaded = load_trained(run_dir / "model", str(checkpoint))
    model = loaded.model.eval()
    validation = tokenize_split(
        labelled.splits["validation"], loaded.tokenizer, recipe.data.text_columns, recipe.data.max_length, "v"
    )
    predictions, losses = [], []
    with torch.inference_mode():
        for row in validation:
            inputs = {k: torch.tensor([v]) for k, v in row.items() if k != "labels"}
            logits = model(**inputs).logits
            losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor([row["labels"]])).item())
            predictions.append(int(logits.argmax(-1)))
    suite = MetricSuite.for_labels(["accuracy", "f1"], labelled.label_names, None, None)
    return {
        **suite.compute(predictions, validation["labels"]),
        "loss": sum(losses) / len(losses),
        "rows": len(losses),
    }


@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_processes_count_every_validation_example_once(
    method: str, bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, tmp_path: Path
) -> None:
    assert len(read_labels(sentiment_data.validation)) % 2 == 1, "an odd split exercises the padding"
    recipe = make_recipe(
        bert_checkpoint,
        sentiment_data,
        method,
        train={"epochs": 2, "batch_size": 8, "learning_rate": 5e-3, "eval_batch_size": 16},
    )
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    result = _launch("finetune", recipe, "--num-processes", 2, "--output-dir", outputs / "run")
    assert result.returncode == 0, result.stderr[-4000:]

    run_dir = outputs / "run"
    assert [p.name for p in outputs.iterdir()] == ["run"]  # the other process wrote nothing else
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".llmkit",  # the marker and lock file, held by the main process only
        "log.jsonl",
        "model",
        "recipe.yaml",
        "results.json",
        "status.json",
    ]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["train"]["world_size"] == 2
    assert results["train"]["micro_batch_size"] == 4  # the global batch of 8, split over 2
    assert results["train"]["gradient_accumulation_steps"] == 1
    assert results["data"]["validation_rows"] == len(read_labels(sentiment_data.validation))
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert len(steps) == len(set((s, i) for i, s in enumerate(steps))), "one writer for the step log"

    single = _single_process_evaluation(run_dir, bert_checkpoint)
    distributed = results["metrics"]["validation"]
    assert single["rows"] == results["data"]["validation_rows"]
    assert distributed["accuracy"] == single["accuracy"]
    assert distributed["f1"] == single["f1"]
    assert distributed["loss"] == pytest.approx(single["loss"], abs=1e-5)


def test_global_batch_is_kept_with_micro_batches_and_accumulation(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train={"max_steps": 3, "batch_size": 8})
    result = _launch(
        "finetune", recipe, "train.micro_batch_size=2", "--num-processes", 2, "--output-dir", tmp_path / "run"
    )
    assert result.returncode == 0, result.stderr[-4000:]
    train = json.loads((tmp_path / "run" / "results.json").read_text())["train"]
    assert (train["world_size"], train["micro_batch_size"], train["gradient_accumulation_steps"]) == (2, 2, 2)


def test_a_failure_in_one_process_ends_the_run_with_a_message(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, tmp_path: Path
) -> None:
    # Make rank 1 fail at its second training step, inside the launched processes.
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train={"max_steps": 20})
    pythonpath = failing_step_pythonpath(
        tmp_path / "inject", step=1, message="rank 1 lost its data shard", rank=1
    )
    result = _launch(
        "finetune",
        recipe,
        "--num-processes",
        2,
        "--output-dir",
        tmp_path / "run",
        env={"PYTHONPATH": pythonpath},
    )
    assert result.returncode != 0
    assert "rank 1 lost its data shard" in result.stderr
    assert "The run failed in one of the 2 processes" in result.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_batch_that_cannot_be_split_is_refused_before_launching(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, cli: Any, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train={"batch_size": 9})
    result = cli("finetune", recipe, "--num-processes", "2", "--output-dir", tmp_path / "run")
    assert result.exit_code != 0
    assert "train.batch_size (9) must be a multiple of" in result.stderr
    assert "processes (2)" in result.stderr
    assert not (tmp_path / "run").exists()


def test_more_processes_than_gpus_is_refused_before_launching(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, cli: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora")
    result = cli("finetune", recipe, "--num-processes", "2", "--output-dir", tmp_path / "run")
    assert result.exit_code == 2, explain(result)
    assert "--num-processes 2 starts one process per GPU, and this machine has 1." in result.stderr
    assert "use --num-processes 1" in result.stderr and "CUDA_VISIBLE_DEVICES=" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_fp16_without_a_gpu_is_refused_with_what_to_use_instead(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, cli: Any, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train={"precision": "fp16"})
    result = cli("finetune", recipe, "--output-dir", tmp_path / "run")
    assert result.exit_code != 0, explain(result)
    assert "train.precision=fp16 needs a CUDA GPU" in result.stderr
    assert "bf16" in result.stderr
    assert not (tmp_path / "run").exists()


def test_bf16_trains_on_cpu(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, cli: Any, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train={"max_steps": 2, "precision": "bf16"})
    result = cli("finetune", recipe, "--output-dir", tmp_path / "run")
    assert result.exit_code == 0, explain(result)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["train"]["precision"] == "bf16"


@pytest.mark.slow  # 8 launches; lora and full on BERT run in the fast suite above with the same setting
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("method", METHODS)
def test_two_processes_train_every_method_without_searching_for_unused_parameters(
    method: str,
    arch: str,
    checkpoints: dict[str, Path],
    sentiment_data: Any,
    make_recipe: Any,
    tmp_path: Path,
) -> None:
    """DDP's find_unused_parameters is off unless a method declares it needs it: a method that
    left a trainable parameter without a gradient would fail at its second step here."""
    from llmkit.methods import get_method

    recipe = make_recipe(
        checkpoints[arch],
        sentiment_data,
        method,
        train={"max_steps": 3, "batch_size": 8, "checkpoint_every": None},
    )
    result = _launch(
        "finetune",
        recipe,
        "data.max_train_samples=48",
        "--num-processes",
        2,
        "--output-dir",
        tmp_path / "run",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["train"]["steps"] == 3
    if not get_method(method).options.may_leave_parameters_unused:
        assert "find_unused_parameters=True" not in result.stderr
    assert "processes: 2, devices: cpu" in result.stdout


def test_a_launch_given_fewer_processes_than_requested_says_so(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, tmp_path: Path
) -> None:
    """accelerate's MULTI_CPU config without an MPI hostfile starts one process, whether through
    --accelerate-config or the user's own `accelerate launch`."""
    config = tmp_path / "multi-cpu.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_machines: 1\n"
        "num_processes: 2\nmixed_precision: 'no'\nuse_cpu: true\n"
    )
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train={"max_steps": 1})
    result = _launch("finetune", recipe, "--accelerate-config", config, "--output-dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "warning: 2 processes were requested, but this run trains in 1 process" in result.stderr
    assert "use `llmkit finetune --num-processes N`" in result.stderr
    assert "processes: 1, devices: cpu" in result.stdout


def test_world_size_warning_for_a_users_own_accelerate_launch() -> None:
    from llmkit.world_size import world_size_warning

    # accelerate's simple launcher, asked for 2 processes, sets MASTER_ADDR and starts one.
    assert "asked for several processes" in (world_size_warning(1, {"MASTER_ADDR": "127.0.0.1"}) or "")
    assert world_size_warning(2, {"MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2"}) is None
    assert world_size_warning(1, {}) is None
    assert world_size_warning(2, {"LLMKIT_REQUESTED_PROCESSES": "2"}) is None
    assert "4 processes were requested" in (world_size_warning(2, {"LLMKIT_REQUESTED_PROCESSES": "4"}) or "")


LEAVE_GROUP_SCRIPT = """
import atexit, os, sys
import torch.distributed as dist
from llmkit.runtime import distributed_state

state = distributed_state()
distributed_state()  # asked for again, as Trainer's accelerator does
assert state.num_processes == 2 and dist.is_initialized()
atexit._run_exitfuncs()  # what the interpreter runs at exit, before it tears itself down
print("left" if not dist.is_initialized() else "still in the group")
"""


def test_launched_processes_leave_their_process_group_before_the_interpreter_shuts_down(
    tmp_path: Path,
) -> None:
    """Each launched process destroys its process group at exit while the interpreter is whole,
    as torch asks of every program (the abort the next test is about needs more than this)."""
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_GROUP_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    # The two processes print into one stream, so their lines may run into each other.
    assert result.stdout.count("left") == 2 and "still" not in result.stdout, result.stdout


# A command run as llmkit's entry point runs it, which leaves behind an object whose finaliser
# aborts the process: only the interpreter's teardown would run it.
TEARDOWN_ABORT_SCRIPT = """
import os, sys
from llmkit.runtime import distributed_state, run_command


class AbortsInTeardown:
    def __del__(self, abort=os.abort):  # bound now: the module's names are gone by then
        abort()


def command():
    state = distributed_state()
    sys.modules[__name__].planted = AbortsInTeardown()
    print(f"ran in {state.num_processes} processes", flush=True)
    raise SystemExit(int(os.environ.get("EXIT_CODE", "0")))


run_command(command)
"""


def _run_teardown_script(
    tmp_path: Path, processes: int, exit_code: int = 0
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "teardown.py"
    script.write_text(TEARDOWN_ABORT_SCRIPT)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    command = [*(launcher if processes > 1 else [sys.executable]), str(script)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "EXIT_CODE": str(exit_code)}
    return subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=env)


def test_launched_processes_end_with_their_commands_exit_code_without_the_interpreters_teardown(
    tmp_path: Path,
) -> None:
    """A completed 2-process run could abort in the interpreter's teardown (a thread of gloo's
    asking for the GIL while Python finalizes: "terminate called without an active exception",
    exit -6, in about 1 of 60 CPU runs). Launched processes end once every exit handler ran,
    without that teardown, and with the exit code their command ended with."""
    alone = _run_teardown_script(tmp_path, processes=1)
    # The planted finaliser does abort where a process has its ordinary teardown: one process,
    # no process group.
    assert "ran in 1 processes" in alone.stdout and alone.returncode == -6, (alone.returncode, alone.stderr)

    launched = _run_teardown_script(tmp_path, processes=2)
    assert launched.returncode == 0, launched.stderr[-4000:]
    assert launched.stdout.count("ran in 2 processes") == 2, launched.stdout

    failed = _run_teardown_script(tmp_path, processes=2, exit_code=3)
    assert failed.returncode != 0
    assert "exitcode  : 3" in failed.stderr, failed.stderr[-4000:]  # torchrun's report of each process


def test_the_exit_code_python_gives_each_ending() -> None:
    from llmkit.runtime import exit_code_of

    assert [exit_code_of(SystemExit(code)) for code in (None, 0, 2, "a message")] == [0, 0, 2, 1]
