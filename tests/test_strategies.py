"""train.distributed: the recipe keys, the refusals before launch, the launcher command lines,
FSDP through the CLI for every method (on a CUDA machine: `gpu` tests; on CPU with accelerate's
GPU-only gate lifted), and DeepSpeed ZeRO on 2 CPU processes, each run's saved model reloaded and
evaluated in one process.

accelerate 1.15 turns its FSDP plugin on only for GPU process groups (on CPU it quietly trains
DDP), so FSDP itself is tested where there is a GPU. One GPU is enough: FSDP over a process group
of one runs the same code (fully_shard per layer, DTensor parameters, the full state dict gathered
to save); two ranks cannot share one GPU under NCCL. DeepSpeed runs on CPU as it is (its CPU
accelerator over gloo): those tests need only the deepspeed package."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_distributed import LAUNCH_TIMEOUT_S, _single_process_evaluation

from llmkit.errors import LlmkitError
from llmkit.launch import Machines, launch_command
from llmkit.recipe.schema import DistributedSection
from llmkit.training.strategies import StrategyUnavailable, check_strategy, launcher_arguments

from helpers import explain, failing_step_pythonpath, log_entries, results_of, write_recipe

# ----------------------------------------------------------------------------- recipe keys


def test_zero_stage_belongs_to_deepspeed(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, cli: Any, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train={"distributed": {"strategy": "fsdp"}})
    result = cli("finetune", recipe, "train.distributed.zero_stage=2", "--output-dir", tmp_path / "run")
    assert result.exit_code != 0, explain(result)
    assert "zero_stage is a DeepSpeed setting, and strategy is fsdp" in result.stderr
    assert not (tmp_path / "run").exists()


def test_an_unknown_strategy_is_refused_with_the_choices(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, cli: Any, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora")
    result = cli("finetune", recipe, "train.distributed.strategy=zero", "--output-dir", tmp_path / "run")
    assert result.exit_code != 0, explain(result)
    assert "train.distributed.strategy" in result.stderr
    assert "'ddp', 'fsdp' or 'deepspeed'" in result.stderr
    misspelt = cli("finetune", recipe, "train.distributed.stratgy=fsdp", "--output-dir", tmp_path / "run")
    assert "Did you mean 'train.distributed.strategy'?" in misspelt.stderr


def test_deepspeed_shards_parameters_at_stage_3_only() -> None:
    assert DistributedSection(strategy="fsdp").shards
    assert DistributedSection(strategy="deepspeed").shards  # stage 3 by default
    assert not DistributedSection(strategy="deepspeed", zero_stage=2).shards
    assert not DistributedSection().shards


# ----------------------------------------------------------------------------- refusals


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_fsdp_on_cpu_is_refused_before_launching(
    bert_checkpoint: Path, sentiment_data: Any, make_recipe: Any, cli: Any, tmp_path: Path
) -> None:
    recipe = make_recipe(bert_checkpoint, sentiment_data, "lora", train={"distributed": {"strategy": "fsdp"}})
    result = cli("finetune", recipe, "--num-processes", "2", "--output-dir", tmp_path / "run")
    assert result.exit_code == 2, explain(result)
    assert "train.distributed.strategy=fsdp needs CUDA GPUs" in result.stderr
    assert "on CPU use train.distributed.strategy=ddp (the default), or deepspeed" in result.stderr
    assert not (tmp_path / "run").exists()


def _without_deepspeed(monkeypatch: Any) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a),
    )


def test_deepspeed_without_its_package_says_what_to_install(monkeypatch: Any) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _without_deepspeed(monkeypatch)
    with pytest.raises(StrategyUnavailable) as refused:
        check_strategy(DistributedSection(strategy="deepspeed"))
    assert "needs the deepspeed package (`pip install deepspeed`" in str(refused.value)
    assert "or use train.distributed.strategy=fsdp" in str(refused.value)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no FSDP to offer on CPU
    with pytest.raises(StrategyUnavailable) as refused:
        check_strategy(DistributedSection(strategy="deepspeed"))
    assert "install deepspeed, or use train.distributed.strategy=ddp (the default)" in str(refused.value)


def test_deepspeed_needs_no_gpu(monkeypatch: Any) -> None:
    import importlib.util

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    check_strategy(DistributedSection(strategy="deepspeed"))
    with pytest.raises(StrategyUnavailable, match="runs in processes started by accelerate's launcher"):
        check_strategy(DistributedSection(strategy="deepspeed"), launched=False)


def test_a_sharded_strategy_needs_the_launcher(monkeypatch: Any) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(StrategyUnavailable) as refused:
        check_strategy(DistributedSection(strategy="fsdp"), launched=False)
    assert "runs in processes started by accelerate's launcher" in str(refused.value)
    check_strategy(DistributedSection(strategy="fsdp"), launched=True)
    check_strategy(DistributedSection(), launched=False)  # ddp: one process trains as it is


# ----------------------------------------------------------------------------- launcher


def _flags(argv: list[str]) -> list[str]:
    return argv[argv.index("accelerate.commands.launch") + 1 : argv.index("-m", 3)]


def test_launch_command_per_strategy_and_machines(tmp_path: Path) -> None:
    command = ["finetune", "recipe.yaml"]
    ddp = _flags(launch_command(2, None, command))
    assert ddp[ddp.index("--num_processes") + 1] == "2" and "--multi_gpu" in ddp
    assert ddp[ddp.index("--num_machines") + 1] == "1"

    fsdp = _flags(launch_command(None, None, command, distributed=DistributedSection(strategy="fsdp")))
    assert fsdp[fsdp.index("--num_processes") + 1] == "1"
    assert fsdp[fsdp.index("--fsdp_version") + 1] == "2" and "--use_fsdp" in fsdp
    assert "--multi_gpu" not in fsdp  # accelerate allows one of them

    deepspeed = _flags(launch_command(1, None, command, distributed=DistributedSection(strategy="deepspeed")))
    assert deepspeed[deepspeed.index("--zero_stage") + 1] == "3" and "--use_deepspeed" in deepspeed

    # --num-processes counts this machine's processes, accelerate's --num_processes all machines'.
    machines = Machines(count=2, rank=1, main_ip="10.0.0.1", main_port=29555)
    two = _flags(launch_command(4, None, command, machines))
    assert two[two.index("--num_processes") + 1] == "8"
    assert [two[two.index(flag) + 1] for flag in ("--num_machines", "--machine_rank")] == ["2", "1"]
    assert [two[two.index(flag) + 1] for flag in ("--main_process_ip", "--main_process_port")] == [
        "10.0.0.1",
        "29555",
    ]

    config = tmp_path / "accelerate.yaml"
    config.write_text("num_processes: 4\n")
    own = _flags(launch_command(None, config, command))
    assert own == ["--config_file", str(config)]  # the file's processes and machines stand
    # With a config file a strategy reaches accelerate through each process's environment: the
    # launcher's --use_deepspeed beside a file made accelerate refuse the recipe's configuration.
    sharded = DistributedSection(strategy="deepspeed", zero_stage=2)
    assert _flags(launch_command(None, config, command, distributed=sharded)) == [
        "--config_file",
        str(config),
    ]


def test_ddp_launcher_arguments_leave_one_process_alone() -> None:
    assert launcher_arguments(DistributedSection(), 1) == []
    assert launcher_arguments(DistributedSection(), None) == []  # an accelerate config file decides


MACHINE_SETTINGS = "compute_environment: LOCAL_MACHINE\nnum_machines: 1\nnum_processes: 2\n"


@pytest.mark.parametrize(
    ("file_settings", "strategy", "named"),
    [
        ("distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 2\n", "deepspeed", "deepspeed"),
        ("distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 2\n", "ddp", "deepspeed"),
        ("distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n", "ddp", "fsdp"),
    ],
)
def test_an_accelerate_config_file_that_sets_up_a_strategy_is_refused_before_launching(
    file_settings: str,
    strategy: str,
    named: str,
    bert_checkpoint: Path,
    sentiment_data: Any,
    make_recipe: Any,
    cli: Any,
    tmp_path: Path,
) -> None:
    """The recipe decides the strategy. A file's own DeepSpeed section beside the recipe's made
    accelerate raise a ValueError about its fields in every process; with a ddp recipe it would
    shard a run that says it does not."""
    config = tmp_path / "accelerate.yaml"
    config.write_text(MACHINE_SETTINGS + file_settings)
    recipe = make_recipe(
        bert_checkpoint, sentiment_data, "lora", train={"distributed": {"strategy": strategy}}
    )
    result = cli("finetune", recipe, "--accelerate-config", config, "--output-dir", tmp_path / "run")
    assert result.exit_code == 2, explain(result)
    assert f"Accelerate config file '{config}' sets up {named} itself" in result.stderr
    assert f"train.distributed.strategy: {strategy})" in result.stderr
    assert f"remove {named}_config" in result.stderr
    assert f"train.distributed.strategy={named}" in result.stderr
    assert not (tmp_path / "run").exists()
    assert config.read_text() == MACHINE_SETTINGS + file_settings  # the user's file is left as it was


def test_the_empty_strategy_sections_accelerate_config_writes_are_accepted(tmp_path: Path) -> None:
    config = tmp_path / "accelerate.yaml"
    config.write_text(
        MACHINE_SETTINGS + "distributed_type: MULTI_GPU\ndeepspeed_config: {}\nfsdp_config: {}\n"
    )
    assert _flags(launch_command(None, config, ["finetune", "r.yaml"])) == ["--config_file", str(config)]
    config.write_text("- not\n- a mapping\n")
    with pytest.raises(LlmkitError, match="is not a mapping of accelerate's settings"):
        launch_command(None, config, ["finetune", "r.yaml"])


# ----------------------------------------------------------------------------- FSDP on a GPU

GPU_TRAIN = {"epochs": 3, "batch_size": 8, "learning_rate": 2e-2, "eval_batch_size": 16}
GPU_METHODS = {
    "full": {"learning_rate": 1e-3},
    "lora": {},
    "prefix": {"learning_rate": 1e-2},
    "prompt": {"learning_rate": 3e-2},
}


def _launch_on_gpu(*args: Any) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "llmkit", *map(str, args)]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=dict(os.environ)
    )


@pytest.mark.gpu
@pytest.mark.parametrize("method", list(GPU_METHODS))
def test_fsdp_run_saves_an_ordinary_checkpoint_that_evaluates_the_same_in_one_process(
    method: str, gpt2_checkpoint: Path, sentiment_data: Any, make_recipe: Any, tmp_path: Path
) -> None:
    train = {**GPU_TRAIN, **GPU_METHODS[method]}
    plain = make_recipe(gpt2_checkpoint, sentiment_data, method, train=train, name="plain.yaml")
    sharded = make_recipe(
        gpt2_checkpoint,
        sentiment_data,
        method,
        train={**train, "distributed": {"strategy": "fsdp"}},
        name="fsdp.yaml",
    )
    result = _launch_on_gpu("finetune", sharded, "--num-processes", 1, "--output-dir", tmp_path / "fsdp")
    assert result.returncode == 0, result.stderr[-4000:]
    reference = _launch_on_gpu("finetune", plain, "--output-dir", tmp_path / "plain")
    assert reference.returncode == 0, reference.stderr[-4000:]

    results = results_of(tmp_path / "fsdp")
    assert (results["train"]["strategy"], results["train"]["distributed_type"]) == ("fsdp", "FSDP")
    assert results["model"]["architecture"] == "GPT2ForSequenceClassification"
    # The same files as a one-process run writes, with the same tensors in them.
    files = sorted(p.name for p in (tmp_path / "fsdp" / "model").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "plain" / "model").iterdir())
    config = tmp_path / "fsdp" / "model" / ("adapter_config.json" if method != "full" else "config.json")
    assert "FSDP" not in config.read_text()
    _assert_same_tensor_shapes(tmp_path / "fsdp" / "model", tmp_path / "plain" / "model")

    single = _single_process_evaluation(tmp_path / "fsdp", gpt2_checkpoint)
    validation = results["metrics"]["validation"]
    assert single["rows"] == results["data"]["validation_rows"]
    assert (validation["accuracy"], validation["f1"]) == (single["accuracy"], single["f1"])
    assert validation["loss"] == pytest.approx(single["loss"], abs=1e-4)
    # A process group of one computes what one process does: the same loss curve.
    losses = [e["loss"] for e in log_entries(tmp_path / "fsdp") if "loss" in e and "eval_loss" not in e]
    expected = [e["loss"] for e in log_entries(tmp_path / "plain") if "loss" in e and "eval_loss" not in e]
    assert losses == pytest.approx(expected, abs=5e-3)


def _assert_same_tensor_shapes(model_dir: Path, reference_dir: Path) -> None:
    from safetensors import safe_open

    (weights,) = model_dir.glob("*.safetensors")
    with safe_open(str(weights), "pt") as saved, safe_open(str(reference_dir / weights.name), "pt") as ref:
        assert sorted(saved.keys()) == sorted(ref.keys())
        for key in saved.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            assert saved.get_slice(key).get_shape() == ref.get_slice(key).get_shape(), key


@pytest.mark.gpu
def test_an_interrupted_fsdp_run_resumes_from_its_checkpoint(
    gpt2_checkpoint: Path, sentiment_data: Any, make_recipe: Any, tmp_path: Path
) -> None:
    train = {**GPU_TRAIN, "epochs": 2, "distributed": {"strategy": "fsdp"}}
    recipe = make_recipe(gpt2_checkpoint, sentiment_data, "lora", train=train)
    whole = _launch_on_gpu("finetune", recipe, "--output-dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-4000:]

    # Fails at step 30 of 50, after the checkpoint of the first epoch (step 25).
    pythonpath = failing_step_pythonpath(tmp_path / "inject", step=30, message="the GPU fell off the bus")
    run_dir = tmp_path / "run"
    failed = subprocess.run(
        [sys.executable, "-m", "llmkit", "finetune", str(recipe), "--output-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    assert failed.returncode != 0 and "the GPU fell off the bus" in failed.stderr
    status = json.loads((run_dir / "status.json").read_text())
    assert status["last_checkpoint"].endswith("checkpoint-25")

    resumed = _launch_on_gpu("finetune", recipe, "--output-dir", run_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    results, expected = results_of(run_dir), results_of(tmp_path / "whole")
    assert results["train"]["resumed_from_step"] == 25
    for split in ("validation", "test"):  # GPU kernels are not bitwise deterministic
        assert results["metrics"][split] == pytest.approx(expected["metrics"][split], abs=2e-3), split


# ----------------------------------------------------------------------------- FSDP on CPU

FSDP_ON_CPU = Path(__file__).parent / "fsdp_on_cpu"


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_fsdp_path_on_two_cpu_processes_with_accelerates_gpu_gate_lifted(
    method: str, gpt2_checkpoint: Path, sentiment_data: Any, make_recipe: Any, tmp_path: Path
) -> None:
    """llmkit's FSDP code on 2 CPU processes over gloo, with the two GPU-only steps of accelerate
    and torch replaced as tests/fsdp_on_cpu/sitecustomize.py says; the gpu tests above run it
    unchanged. The model is sharded (accelerate reports FSDP), trains, and saves an adapter that
    a one-process evaluation scores exactly as the sharded run did. The LoRA run is interrupted
    after its first checkpoint and resumed from it."""
    train = {**GPU_TRAIN, "epochs": 2, **GPU_METHODS[method], "distributed": {"strategy": "fsdp"}}
    recipe = make_recipe(gpt2_checkpoint, sentiment_data, method, train=train)
    pythonpath = os.pathsep.join(filter(None, [str(FSDP_ON_CPU), os.environ.get("PYTHONPATH")]))
    env = {"LLMKIT_TEST_FSDP_ON_CPU": "1", "PYTHONPATH": pythonpath}
    run_dir = tmp_path / "run"

    def finetune(*flags: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return _finetune_on_two_cpu_processes(recipe, run_dir, *flags, env={**env, **extra_env})

    if method == "lora":  # 25 steps an epoch: fails at step 30, after the first checkpoint
        failed = finetune(LLMKIT_TEST_FAIL_AT_STEP="30")
        assert failed.returncode != 0 and "interrupted at step 30" in failed.stderr
        checkpoint = run_dir / "checkpoints" / "checkpoint-25"
        # FSDP's checkpoint: whole model and optimizer state, as FULL_STATE_DICT saves them.
        assert {"pytorch_model_fsdp.bin", "optimizer.bin"} <= {p.name for p in checkpoint.iterdir()}
        result = finetune("--resume")
    else:
        result = finetune()
    # A completed run's processes end without the interpreter's teardown, where one of them
    # aborted in 2 of 3 CI runs on 2026-11-30 (llmkit.runtime.end_without_teardown).
    assert result.returncode == 0, result.stderr[-4000:]
    results = results_of(run_dir)
    assert (results["train"]["distributed_type"], results["train"]["world_size"]) == ("FSDP", 2)
    assert results["train"]["resumed_from_step"] == (25 if method == "lora" else None)
    assert len(results["train"]["peak_memory_mb_per_process"]) == 2
    training_peaks = results["train"]["training_peak_memory_mb_per_process"]
    assert all(
        0 < t <= w
        for t, w in zip(training_peaks, results["train"]["peak_memory_mb_per_process"], strict=True)
    )
    # Sharded: each process holds about half the fp32 weights and AdamW moments, not all of them.
    counts = results["parameters"]
    whole_state_mb = (counts["total"] * 4 + counts["trainable"] * 8) / 2**20
    shares = results["train"]["training_state_mb_per_process"]
    assert sum(shares) == pytest.approx(whole_state_mb, rel=0.1), (shares, whole_state_mb)
    assert max(shares) < 0.6 * whole_state_mb, (shares, whole_state_mb)
    assert {"adapter_config.json", "adapter_model.safetensors", "labels.json"} <= {
        p.name for p in (run_dir / "model").iterdir()
    }
    single = _single_process_evaluation(run_dir, gpt2_checkpoint)
    validation = results["metrics"]["validation"]
    assert single["rows"] == results["data"]["validation_rows"]
    assert (validation["accuracy"], validation["f1"]) == (single["accuracy"], single["f1"])
    assert validation["loss"] == pytest.approx(single["loss"], abs=1e-5)


# ----------------------------------------------------------------------------- DeepSpeed on CPU

DEEPSPEED_TRAIN = {"epochs": 2, "batch_size": 8, "eval_batch_size": 16}
DEEPSPEED_LEARNING_RATES = {"full": 1e-3, "lora": 2e-2}
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed runs need the deepspeed package (`pip install deepspeed`, llmkit's deepspeed extra)",
)


def _llmkit_on_cpu(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`llmkit ARGS...` as a new process with the GPUs hidden (launched processes train on CPU)."""
    return subprocess.run(
        [sys.executable, "-m", "llmkit", *args],
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})},
    )


def _finetune_on_two_cpu_processes(
    recipe: Path, run_dir: Path, *flags: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = ["finetune", str(recipe), "--num-processes", "2", "--output-dir", str(run_dir), *flags]
    return _llmkit_on_cpu(*command, env=env)


def _deepspeed_test_train(method: str, distributed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tests' train section for the method; `distributed` None: DDP."""
    train = {**DEEPSPEED_TRAIN, "learning_rate": DEEPSPEED_LEARNING_RATES[method]}
    return train if distributed is None else {**train, "distributed": distributed}


@pytest.fixture(scope="module")
def ddp_reference(
    bert_checkpoint: Path, sentiment_data: Any, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """`ddp_reference(method)`: the run directory of the DeepSpeed tests' training for the method
    under DDP on 2 CPU processes (trained once per module)."""
    runs: dict[str, Path] = {}

    def run(method: str) -> Path:
        if method not in runs:
            root = tmp_path_factory.mktemp(f"ddp-{method}")
            train = _deepspeed_test_train(method)
            recipe = write_recipe(root / "recipe.yaml", bert_checkpoint, sentiment_data, method, train=train)
            result = _finetune_on_two_cpu_processes(recipe, root / "run")
            assert result.returncode == 0, result.stderr[-4000:]
            runs[method] = root / "run"
        return runs[method]

    return run


def _training_losses(run_dir: Path) -> list[float]:
    return [e["loss"] for e in log_entries(run_dir) if "loss" in e and "eval_loss" not in e]


@needs_deepspeed
@pytest.mark.parametrize(
    ("method", "zero_stage"),
    [("full", 2), ("full", None), ("lora", 3)],
    ids=["full-zero2", "full-zero3-default-resumed", "lora-zero3"],
)
def test_deepspeed_zero_on_two_cpu_processes_trains_as_ddp_and_saves_an_ordinary_checkpoint(
    method: str,
    zero_stage: int | None,
    ddp_reference: Callable[[str], Path],
    bert_checkpoint: Path,
    sentiment_data: Any,
    make_recipe: Any,
    tmp_path: Path,
) -> None:
    """DeepSpeed ZeRO through the CLI on 2 CPU processes over gloo, unpatched. Each process holds
    its partition of the optimizer state (stage 2) or of everything (stage 3), trains the loss
    curve DDP trains, and the run saves the files a one-process run writes, which a one-process
    evaluation scores exactly as the run did. The default (stage-3) run is interrupted after its
    first checkpoint and resumed from it."""
    distributed = {"strategy": "deepspeed", **({"zero_stage": zero_stage} if zero_stage else {})}
    recipe = make_recipe(
        bert_checkpoint, sentiment_data, method, train=_deepspeed_test_train(method, distributed)
    )
    run_dir = tmp_path / "run"
    resumed = zero_stage is None
    if resumed:  # 25 steps an epoch: fails at step 30, after the first checkpoint
        pythonpath = failing_step_pythonpath(tmp_path / "inject", step=30, message="interrupted at step 30")
        failed = _finetune_on_two_cpu_processes(recipe, run_dir, env={"PYTHONPATH": pythonpath})
        assert failed.returncode != 0 and "interrupted at step 30" in failed.stderr
        # DeepSpeed's own checkpoint: every process's partition of the weights and optimizer state.
        saved = [p.name for p in (run_dir / "checkpoints" / "checkpoint-25" / "global_step25").iterdir()]
        assert sum("optim_states" in name for name in saved) == 2, saved
        result = _finetune_on_two_cpu_processes(recipe, run_dir, "--resume")
    else:
        result = _finetune_on_two_cpu_processes(recipe, run_dir)
    assert result.returncode == 0, result.stderr[-4000:]

    reference_dir = ddp_reference(method)
    results, reference = results_of(run_dir), results_of(reference_dir)
    train = results["train"]
    assert (train["strategy"], train["distributed_type"], train["world_size"]) == (
        "deepspeed",
        "DEEPSPEED",
        2,
    )
    assert train["resumed_from_step"] == (25 if resumed else None)
    # Data parallel as DDP is: the same loss curve and metrics, to float rounding.
    assert _training_losses(run_dir) == pytest.approx(_training_losses(reference_dir), abs=1e-5)
    for split in ("validation", "test"):
        assert results["metrics"][split] == pytest.approx(reference["metrics"][split], abs=1e-5), split

    # Per process, counted from the tensors: fp32 weights (4 bytes a parameter), and for the
    # trained parameters ZeRO's fp32 copy of its partition for the optimizer (4; a copy on CPU)
    # and AdamW's two moments (8). Stage 2 splits the last two over the processes and keeps the
    # weights whole; stage 3 splits all. DDP holds whole weights and moments in each.
    counts = results["parameters"]
    weights, optimizer = 4 * counts["total"], 12 * counts["trainable"]
    held = weights / 2 + optimizer / 2 if zero_stage in (3, None) else weights + optimizer / 2
    assert train["training_state_mb_per_process"] == pytest.approx([held / 2**20] * 2, rel=0.01)
    ddp_held = weights + 8 * counts["trainable"]
    assert reference["train"]["training_state_mb_per_process"] == pytest.approx(
        [ddp_held / 2**20] * 2, rel=0.01
    )

    # The same files as a DDP run writes, with the same tensors in them.
    model_files = sorted(p.name for p in (run_dir / "model").iterdir())
    assert model_files == sorted(p.name for p in (reference_dir / "model").iterdir())
    _assert_same_tensor_shapes(run_dir / "model", reference_dir / "model")
    single = _single_process_evaluation(run_dir, bert_checkpoint)
    validation = results["metrics"]["validation"]
    assert single["rows"] == results["data"]["validation_rows"]
    assert (validation["accuracy"], validation["f1"]) == (single["accuracy"], single["f1"])
    assert validation["loss"] == pytest.approx(single["loss"], abs=1e-5)


@needs_deepspeed
def test_deepspeed_runs_through_an_accelerate_config_file(
    ddp_reference: Callable[[str], Path], bert_checkpoint: Path, sentiment_data: Any, tmp_path: Path
) -> None:
    """`--accelerate-config FILE` (the processes and machines) with the recipe's strategy: the
    run is DeepSpeed's, and trains as DDP does."""
    distributed = {"strategy": "deepspeed", "zero_stage": 2}
    train = _deepspeed_test_train("full", distributed)
    recipe = write_recipe(tmp_path / "recipe.yaml", bert_checkpoint, sentiment_data, "full", train=train)
    config = tmp_path / "accelerate.yaml"
    config.write_text(
        "distributed_type: MULTI_GPU\nnum_machines: 1\nnum_processes: 2\nmixed_precision: 'no'\n"
    )
    run_dir = tmp_path / "run"
    result = _llmkit_on_cpu(
        "finetune", str(recipe), "--accelerate-config", str(config), "--output-dir", str(run_dir)
    )
    assert result.returncode == 0, result.stderr[-4000:]
    train_results = results_of(run_dir)["train"]
    assert (train_results["distributed_type"], train_results["world_size"]) == ("DEEPSPEED", 2)
    assert _training_losses(run_dir) == pytest.approx(_training_losses(ddp_reference("full")), abs=1e-5)
