"""Multi-process runs: `--num-processes N` starts the same command N times through accelerate's
launcher (torchrun underneath); the processes then find each other through the environment the
launcher sets, exactly as they do under a user's own `accelerate launch -m llmkit ...`. With
`--num-machines M`, one launcher per machine starts N processes each, and they rendezvous at the
main machine's address."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import LlmkitError
from llmkit.recipe.schema import DistributedSection
from llmkit.training.strategies import launcher_arguments
from llmkit.world_size import requested_env

# Set in every launched process, so a launched command never launches again.
LAUNCHED_ENV = "LLMKIT_LAUNCHED"
# What to do about a missing or unreadable accelerate config file.
WRITE_CONFIG_FILE = "write one with `accelerate config --config_file FILE`"


def launched_by_accelerate() -> bool:
    return LAUNCHED_ENV in os.environ or "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


@dataclass(frozen=True)
class Machines:
    """The machines of a run: one launcher on each, all meeting at the main machine (rank 0)."""

    count: int = 1
    rank: int = 0
    main_ip: str | None = None
    main_port: int | None = None

    def check(self) -> None:
        if self.count < 1:
            raise LlmkitError("--num-machines must be at least 1.")
        if not 0 <= self.rank < self.count:
            raise LlmkitError(
                f"--machine-rank {self.rank} is not one of the {self.count} machines' ranks "
                f"(0 to {self.count - 1}).",
                hint="give the main machine rank 0 and the others 1, 2, ... in any order",
            )
        if self.count > 1 and self.main_ip is None:
            raise LlmkitError(
                f"--num-machines {self.count} needs --main-process-ip: the address of the machine "
                "with rank 0, where the others meet.",
                hint="give every machine the same --main-process-ip and --main-process-port",
            )
        if self.main_port is not None and not 0 < self.main_port < 65536:
            raise LlmkitError(f"--main-process-port {self.main_port} is not a TCP port (1 to 65535).")

    def processes(self, per_machine: int | None) -> int:
        return (per_machine or 1) * self.count

    def launcher_arguments(self) -> list[str]:
        arguments = ["--num_machines", str(self.count)]
        if self.count > 1:
            arguments += ["--machine_rank", str(self.rank)]
        if self.main_ip is not None:
            arguments += ["--main_process_ip", self.main_ip]
        if self.main_port is not None:
            arguments += ["--main_process_port", str(self.main_port)]
        return arguments


ONE_MACHINE = Machines()


def launch_command(
    num_processes: int | None,
    accelerate_config: Path | None,
    command: list[str],
    machines: Machines = ONE_MACHINE,
    distributed: DistributedSection | None = None,
) -> list[str]:
    """The `accelerate launch` command line that runs `llmkit COMMAND...` in each process.
    `num_processes` counts this machine's processes; accelerate's own counts all machines'."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config is not None:
        if not accelerate_config.is_file():
            raise LlmkitError(
                f"Accelerate config file '{accelerate_config}' does not exist.",
                hint=WRITE_CONFIG_FILE,
            )
        check_config_file(accelerate_config, distributed or DistributedSection())
        launcher += ["--config_file", str(accelerate_config)]
    else:
        # Stated explicitly: accelerate otherwise warns about each default it fills in. Precision
        # comes from the recipe (train.precision), not from the launcher.
        launcher += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    if accelerate_config is None or machines != ONE_MACHINE:
        launcher += machines.launcher_arguments()
    world_size = None  # the config file's
    if accelerate_config is None or num_processes is not None or machines.count > 1:
        world_size = machines.processes(num_processes)
        launcher += ["--num_processes", str(world_size)]
    # One process per rank with torchrun; on a machine without CUDA the processes use the gloo
    # backend on CPU (see llmkit.pipeline.distributed_state).
    strategy = distributed or DistributedSection()
    # With a config file a sharded strategy reaches accelerate through each process's environment
    # (strategies.set_process_environment), as under a user's own `accelerate launch`: the
    # launcher's --use_deepspeed beside a config file makes accelerate fill in DeepSpeed fields of
    # its own, which it then refuses beside the configuration Trainer is given from the recipe.
    if accelerate_config is None or strategy.strategy == "ddp":
        launcher += launcher_arguments(strategy, world_size)
    return [*launcher, "-m", "llmkit", *command]


# What an accelerate config file may set up itself that the recipe's train.distributed decides:
# the strategy each distributed_type and section stands for.
STRATEGY_TYPES = {"DEEPSPEED": "deepspeed", "FSDP": "fsdp"}
STRATEGY_SECTIONS = {"deepspeed_config": "deepspeed", "fsdp_config": "fsdp"}


def check_config_file(path: Path, distributed: DistributedSection) -> None:
    """Refuse, before launching, an accelerate config file that sets up DeepSpeed or FSDP itself:
    the recipe decides the strategy, and accelerate either refuses a file's DeepSpeed settings
    beside the ones Trainer is given from the recipe (a ValueError naming accelerate's fields) or
    shards a run whose recipe says ddp. (`accelerate config` writes empty sections for the
    strategies not chosen; those are fine.)"""
    import yaml

    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON files parse as YAML too
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise LlmkitError(
            f"Accelerate config file '{path}' cannot be read: {exc}",
            hint=WRITE_CONFIG_FILE,
        ) from None
    if not isinstance(settings, dict):
        raise LlmkitError(
            f"Accelerate config file '{path}' is not a mapping of accelerate's settings.",
            hint=WRITE_CONFIG_FILE,
        )
    declared_type = str(settings.get("distributed_type", "")).upper()
    sections = [key for key in STRATEGY_SECTIONS if settings.get(key)]
    named = STRATEGY_TYPES.get(declared_type) or (STRATEGY_SECTIONS[sections[0]] if sections else None)
    if named is None:
        return
    found = ([f"distributed_type: {declared_type}"] if declared_type in STRATEGY_TYPES else []) + sections
    remove = " and ".join(sections)
    raise LlmkitError(
        f"Accelerate config file '{path}' sets up {named} itself ({', '.join(found)}), and llmkit takes "
        f"the strategy from the recipe (train.distributed.strategy: {distributed.strategy}).",
        hint="keep the file's machine and process settings with distributed_type: MULTI_GPU (torchrun; "
        "CPU processes over gloo without CUDA)"
        + (f" and remove {remove}" if remove else "")
        + f"; choose the strategy in the recipe: train.distributed.strategy={named}"
        + (" (and train.distributed.zero_stage=N)" if named == "deepspeed" else ""),
    )


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


def relaunch(
    num_processes: int | None,
    accelerate_config: Path | None,
    command: list[str],
    machines: Machines = ONE_MACHINE,
    distributed: DistributedSection | None = None,
) -> None:
    """Run `llmkit COMMAND...` under accelerate's launcher; raise if any process failed."""
    if num_processes is not None and num_processes < 1:
        raise LlmkitError("--num-processes must be at least 1.")
    machines.check()
    check_gpus_for(num_processes)
    argv = launch_command(num_processes, accelerate_config, command, machines, distributed)
    env = {**os.environ, LAUNCHED_ENV: "1", **requested_env(num_processes, accelerate_config)}
    returncode = subprocess.call(argv, env=env)
    if returncode != 0:
        processes = (f"one of the {num_processes} processes" if num_processes else "a launched process") + (
            f" of machine {machines.rank}" if machines.count > 1 else ""
        )
        raise LlmkitError(
            f"The run failed in {processes} (exit code {returncode}); the messages above say why.",
            hint="the launcher stops the other processes when one fails",
        )
