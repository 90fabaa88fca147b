"""Multi-process runs: `--num-processes N` starts the same command N times through accelerate's
launcher (torchrun underneath); the processes then find each other through the environment the
launcher sets, exactly as they do under a user's own `accelerate launch -m llmkit ...`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from llmkit.errors import LlmkitError
from llmkit.world_size import requested_env

# Set in every launched process, so a launched command never launches again.
LAUNCHED_ENV = "LLMKIT_LAUNCHED"


def launched_by_accelerate() -> bool:
    return LAUNCHED_ENV in os.environ or "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def launch_command(
    num_processes: int | None, accelerate_config: Path | None, command: list[str]
) -> list[str]:
    """The `accelerate launch` command line that runs `llmkit COMMAND...` in each process."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config is not None:
        if not accelerate_config.is_file():
            raise LlmkitError(
                f"Accelerate config file '{accelerate_config}' does not exist.",
                hint="write one with `accelerate config --config_file FILE`",
            )
        launcher += ["--config_file", str(accelerate_config)]
    else:
        # Stated explicitly: accelerate otherwise warns about each default it fills in. Precision
        # comes from the recipe (train.precision), not from the launcher.
        launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if num_processes is not None:
        launcher += ["--num_processes", str(num_processes)]
        if num_processes > 1:
            # Starts one process per rank with torchrun; on a machine without CUDA the processes
            # use the gloo backend on CPU (see llmkit.pipeline.distributed_state).
            launcher += ["--multi_gpu"]
    return [*launcher, "-m", "llmkit", *command]


def check_gpus_for(num_processes: int | None) -> None:
    """With CUDA each process takes a GPU of its own: more processes than GPUs cannot start (the
    extra ranks fail with 'invalid device ordinal')."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and num_processes is not None and num_processes > gpus:
        raise LlmkitError(
            f"--num-processes {num_processes} starts one process per GPU, and this machine has {gpus}.",
            hint=f"use --num-processes {gpus} (train.batch_size stays the global batch), or hide the "
            "GPUs with CUDA_VISIBLE_DEVICES= to run the processes on CPU",
        )


def relaunch(num_processes: int | None, accelerate_config: Path | None, command: list[str]) -> None:
    """Run `llmkit COMMAND...` under accelerate's launcher; raise if any process failed."""
    if num_processes is not None and num_processes < 1:
        raise LlmkitError("--num-processes must be at least 1.")
    check_gpus_for(num_processes)
    argv = launch_command(num_processes, accelerate_config, command)
    env = {**os.environ, LAUNCHED_ENV: "1", **requested_env(num_processes, accelerate_config)}
    returncode = subprocess.call(argv, env=env)
    if returncode != 0:
        processes = f"one of the {num_processes} processes" if num_processes else "a launched process"
        raise LlmkitError(
            f"The run failed in {processes} (exit code {returncode}); the messages above say why.",
            hint="the launcher stops the other processes when one fails",
        )
