"""Several machines, simulated on this one: two launchers with `--num-machines 2`, machine ranks 0
and 1, one CPU process each, meeting at 127.0.0.1 over gloo: the code path of two hosts sharing a
run directory. The run writes what a one-machine run writes, its metrics equal a one-process
evaluation of the saved weights, its loss curve equals the 2-process one-machine run's, and an
interrupted run resumes on both machines (launched through hand-written accelerate configs)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_distributed import LAUNCH_TIMEOUT_S, _launch, _single_process_evaluation

from helpers import failing_step_pythonpath, log_entries, results_of, write_recipe

TRAIN = {"epochs": 3, "batch_size": 8, "learning_rate": 2e-2, "eval_batch_size": 16, "logging_steps": 5}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _launch_machines(
    per_machine_args: list[list[Any]], env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """`llmkit ARGS...` once per machine, all at once, as the machines' own shells would."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    launchers = [
        subprocess.Popen(
            [sys.executable, "-m", "llmkit", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for args in per_machine_args
    ]
    results = []
    for launcher in launchers:
        try:
            stdout, stderr = launcher.communicate(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other in launchers:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(launcher.args, launcher.returncode, stdout, stderr))
    return results


def _machine_flags(rank: int, port: int) -> list[Any]:
    return [
        "--num-machines",
        2,
        "--machine-rank",
        rank,
        "--main-process-ip",
        "127.0.0.1",
        "--main-process-port",
        port,
    ]


@dataclass
class Runs:
    recipe: Path
    two_machines: Path
    two_processes: Path


@pytest.fixture(scope="module")
def runs(bert_checkpoint: Path, sentiment_data: Any, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The same LoRA recipe on two machines of one process each, and on one machine of two."""
    root = tmp_path_factory.mktemp("machines")
    recipe = write_recipe(root / "recipe.yaml", bert_checkpoint, sentiment_data, "lora", train=TRAIN)
    port = _free_port()
    machines = _launch_machines(
        [
            ["finetune", recipe, "--output-dir", root / "two-machines", *_machine_flags(r, port)]
            for r in (0, 1)
        ]
    )
    for machine in machines:
        assert machine.returncode == 0, machine.stderr[-4000:]
    single = _launch("finetune", recipe, "--num-processes", 2, "--output-dir", root / "two-processes")
    assert single.returncode == 0, single.stderr[-4000:]
    return Runs(recipe, root / "two-machines", root / "two-processes")


def test_two_machines_write_one_run_whose_metrics_match_one_process(
    runs: Runs, bert_checkpoint: Path, sentiment_data: Any
) -> None:
    run_dir = runs.two_machines
    assert sorted(p.name for p in run_dir.parent.iterdir() if p.name.startswith("two-machines")) == [
        "two-machines"
    ]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".llmkit",  # the marker and lock file, held by the main process only
        "log.jsonl",
        "model",
        "recipe.yaml",
        "results.json",
        "status.json",
    ]
    results = results_of(run_dir)
    assert (results["train"]["world_size"], results["train"]["distributed_type"]) == (2, "MULTI_CPU")
    assert (results["train"]["micro_batch_size"], results["train"]["gradient_accumulation_steps"]) == (4, 1)
    single = _single_process_evaluation(run_dir, bert_checkpoint)
    validation = results["metrics"]["validation"]
    assert validation["accuracy"] > 0.6, "a model that learnt (21 of 41 share a label): its predictions vary"
    assert single["rows"] == results["data"]["validation_rows"] == 41  # each example counted once
    assert (validation["accuracy"], validation["f1"]) == (single["accuracy"], single["f1"])
    assert validation["loss"] == pytest.approx(single["loss"], abs=1e-5)


def test_two_machines_train_as_two_processes_on_one_machine(runs: Runs) -> None:
    def losses(run_dir: Path) -> list[tuple[int, float]]:
        return [(e["step"], e["loss"]) for e in log_entries(run_dir) if "loss" in e and "eval_loss" not in e]

    machines, processes = losses(runs.two_machines), losses(runs.two_processes)
    assert len(machines) >= 4
    assert [step for step, _ in machines] == [step for step, _ in processes]
    assert [loss for _, loss in machines] == pytest.approx([loss for _, loss in processes], abs=1e-5)
    _assert_same_metrics(results_of(runs.two_machines), results_of(runs.two_processes))


def _assert_same_metrics(results: dict[str, Any], expected: dict[str, Any]) -> None:
    assert results["metrics"].keys() == expected["metrics"].keys()
    for split, metrics in results["metrics"].items():
        assert metrics == pytest.approx(expected["metrics"][split], abs=1e-5), split


def _accelerate_config(path: Path, rank: int, port: int) -> Path:
    """What `accelerate config` writes for machine `rank` of two with one process each. Its
    MULTI_GPU type starts processes with torchrun; without CUDA they train on CPU over gloo."""
    config = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU",
        "num_machines": 2,
        "num_processes": 2,
        "machine_rank": rank,
        "main_process_ip": "127.0.0.1",
        "main_process_port": port,
        "rdzv_backend": "static",
        "same_network": True,
        "mixed_precision": "no",
        "dynamo_config": {"dynamo_backend": "NO"},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_an_interrupted_two_machine_run_resumes_on_both_from_the_shared_run_directory(
    runs: Runs, tmp_path: Path
) -> None:
    # Machine 1's process fails at step 12, after the checkpoint of step 10.
    pythonpath = failing_step_pythonpath(tmp_path / "inject", step=12, message="machine 1 lost power", rank=1)
    run_dir = tmp_path / "run"
    every_10 = "train.checkpoint_every=10"
    port = _free_port()
    failed = _launch_machines(
        [
            ["finetune", runs.recipe, every_10, "--output-dir", run_dir, *_machine_flags(rank, port)]
            for rank in (0, 1)
        ],
        env={"PYTHONPATH": pythonpath},
    )
    assert all(machine.returncode != 0 for machine in failed)
    assert "machine 1 lost power" in failed[1].stderr
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed"
    assert status["last_checkpoint"].endswith("checkpoint-10")
    assert not (run_dir / "results.json").exists()
    checkpoint = run_dir / "checkpoints" / "checkpoint-10"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}

    port = _free_port()
    configs = [_accelerate_config(tmp_path / f"machine-{rank}.yaml", rank, port) for rank in (0, 1)]
    resumed = _launch_machines(
        [
            [
                "finetune",
                runs.recipe,
                every_10,
                "--output-dir",
                run_dir,
                "--resume",
                "--accelerate-config",
                config,
            ]
            for config in configs
        ]
    )
    for machine in resumed:
        assert machine.returncode == 0, machine.stderr[-4000:]
    results = results_of(run_dir)
    assert results["train"]["resumed_from_step"] == 10
    assert results["train"]["world_size"] == 2
    _assert_same_metrics(results, results_of(runs.two_machines))
    steps = [e["step"] for e in log_entries(run_dir) if "loss" in e and "eval_loss" not in e]
    assert steps == sorted(set(steps)), "the resumed run logs each step once"


def test_bad_machine_flags_are_refused_before_launching(runs: Runs, cli: Any, tmp_path: Path) -> None:
    cases = [
        (["--num-machines", "2"], "--num-machines 2 needs --main-process-ip"),
        (
            ["--num-machines", "2", "--machine-rank", "2", "--main-process-ip", "127.0.0.1"],
            "--machine-rank 2 is not",
        ),
        (
            ["--num-machines", "2", "--main-process-ip", "h", "--main-process-port", "70000"],
            "is not a TCP port",
        ),
    ]
    for flags, message in cases:
        result = cli("finetune", runs.recipe, "--output-dir", tmp_path / "run", *flags)
        assert result.exit_code == 2, result.output
        assert message in result.stderr
        assert not (tmp_path / "run").exists()
