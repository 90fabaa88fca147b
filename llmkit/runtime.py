"""Process-wide setup shared by every command: the distributed state and quiet libraries (the
versions a run records are llmkit/versions.py's)."""

from __future__ import annotations

import atexit
import os
from typing import Any


def distributed_state() -> Any:
    """The process group accelerate's launcher set up (or a single process when not launched).

    Without CUDA the processes train on CPU over gloo; Trainer's `use_cpu` says the same, so the
    state it builds later is this one."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes > 1:
        atexit.unregister(leave_process_group)  # once, however many times the state is asked for
        atexit.register(leave_process_group)
    return state


def leave_process_group() -> None:
    """Destroys the process group while the interpreter is still whole, as torch asks of every
    program: left to the interpreter's shutdown, gloo's worker threads are torn down after Python's,
    which can abort a process after its run completed ("terminate called without an active
    exception", pytorch/pytorch#190489). It did not stop such an abort in the FSDP-over-gloo test
    (tests/test_strategies.py), whose cause is still unknown."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def quiet_libraries() -> None:
    import warnings

    import datasets
    import transformers

    # PEFT 0.21 calls a transformers method that transformers 5 deprecates; nothing for users to do.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # weight-loading bars; Trainer keeps its own
    import torch

    if not torch.cuda.is_available():
        # DeepSpeed, when installed, is imported by accelerate in every run that saves a model; on
        # finding no GPU it picks its CPU accelerator with a warning in each process. Named here,
        # it picks the same one silently.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    datasets.logging.set_verbosity_error()
