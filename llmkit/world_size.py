"""Whether a run got the processes it asked for. accelerate's launcher can start one process where
several were requested (a MULTI_CPU config without an MPI hostfile runs its simple launcher), and
the training would then silently be single-process; the run says so before it trains."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

# Set by `llmkit finetune --num-processes/--accelerate-config` for the processes it launches.
REQUESTED_ENV = "LLMKIT_REQUESTED_PROCESSES"


def requested_env(num_processes: int | None, accelerate_config: Path | None) -> dict[str, str]:
    """What the launched processes are told about the number of processes asked for."""
    requested = num_processes or _config_processes(accelerate_config)
    return {REQUESTED_ENV: str(requested)} if requested else {}


def _config_processes(accelerate_config: Path | None) -> int | None:
    if accelerate_config is None or not accelerate_config.is_file():
        return None
    try:
        settings = yaml.safe_load(accelerate_config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None  # accelerate reports a broken config itself
    value = settings.get("num_processes") if isinstance(settings, dict) else None
    return value if isinstance(value, int) else None


def world_size_warning(world_size: int, environ: Mapping[str, str] | None = None) -> str | None:
    """A warning when this process's world is smaller or larger than the one requested."""
    environ = os.environ if environ is None else environ
    requested = environ.get(REQUESTED_ENV)
    if requested is not None and requested.isdigit() and int(requested) != world_size:
        asked = f"{requested} processes were requested"
    elif requested is None and world_size == 1 and "MASTER_ADDR" in environ and "WORLD_SIZE" not in environ:
        # accelerate's simple launcher sets MASTER_ADDR only when asked for several processes.
        asked = "accelerate's launcher was asked for several processes"
    else:
        return None
    return (
        f"{asked}, but this run trains in {world_size} process{'es' if world_size != 1 else ''}: "
        "accelerate starts several CPU processes only with torchrun (distributed_type MULTI_GPU, "
        "which runs on CPU without CUDA) or an MPI hostfile; use `llmkit finetune --num-processes N`"
    )
