"""Process-wide setup shared by every command that runs a model: the distributed state, quiet
libraries and the memory allocator's settings (the versions a run records are
llmkit/versions.py's)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import platform
import sys
from collections.abc import Callable, Mapping
from typing import Any

from llmkit.errors import LlmkitError

# Opting out of `keep_freed_memory`: LLMKIT_KEEP_FREED_MEMORY=0 leaves glibc's malloc as it is.
KEEP_FREED_MEMORY_ENV = "LLMKIT_KEEP_FREED_MEMORY"
SWITCH_ON, SWITCH_OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# glibc's mallopt parameters (malloc.h) and the most the trim threshold (a C int) can hold.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_INT_MAX = 2**31 - 1


def distributed_state() -> Any:
    """The process group accelerate's launcher set up (or a single process when not launched).

    Without CUDA the processes train on CPU over gloo; Trainer's `use_cpu` says the same, so the
    state it builds later is this one."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes > 1:
        _process_end.in_process_group = True
        atexit.unregister(leave_process_group)  # once, however many times the state is asked for
        atexit.register(leave_process_group)
    return state


def leave_process_group() -> None:
    """Destroys the process group while the interpreter is still whole, as torch asks of every
    program (pytorch/pytorch#190489). That alone does not stop the abort at exit that
    `end_without_teardown` prevents: gloo's worker threads outlive it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _ProcessEnd:
    """What `end_without_teardown` needs to know at exit: the exit code the command ended with
    (None until it ended, or when it was interrupted) and whether this process joined a group."""

    exit_code: int | None = None
    in_process_group = False


_process_end = _ProcessEnd()


def run_command(main: Callable[[], object]) -> None:
    """Runs the command line `main` (which ends by raising SystemExit, as Typer's apps do) in a
    process that ends as `end_without_teardown` says. `main` imports the libraries: their exit
    handlers are then registered after this one's, and run before it."""
    atexit.register(end_without_teardown)  # handlers run last-registered first: this one last
    try:
        main()
    except SystemExit as ending:
        _process_end.exit_code = exit_code_of(ending)
        raise
    except KeyboardInterrupt:  # Python's own ending for it (killed by SIGINT), with its teardown
        raise
    except BaseException:  # Python prints the traceback and exits with 1
        _process_end.exit_code = 1
        raise
    _process_end.exit_code = 0


def exit_code_of(ending: SystemExit) -> int:
    """The status Python exits with for this SystemExit: None is 0, an int itself, anything
    else (a message Python prints) 1."""
    if ending.code is None:
        return 0
    return ending.code if isinstance(ending.code, int) else 1


def end_without_teardown() -> None:
    """The last exit handler of a process that joined a process group: it ends the process with
    the command's exit code once every other exit handler ran (the process group left, logs
    flushed, Python's threads joined), skipping the interpreter's teardown after them.

    In that teardown a completed run could abort ("terminate called without an active
    exception", exit -6; caught in a core dump on 2026-12-02, 1 of 60 two-process CPU runs): a
    worker thread of gloo's, releasing a finished collective whose tensors Python still
    referenced, asks for the GIL while the interpreter finalizes, and Python ends such a thread in
    a way C++ cannot unwind through. pytorch/pytorch#179291 describes it and was abandoned; no
    order of cleanup in Python closes the window, because the thread drops its reference
    whenever it is next scheduled. Nothing a run writes waits for that teardown: files are
    closed by then, and stdout and stderr are flushed here."""
    if _process_end.exit_code is None or not _process_end.in_process_group:
        return
    for stream in (sys.stdout, sys.stderr):
        # A closed or replaced stream has nothing left to keep.
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    os._exit(_process_end.exit_code)


def set_up_process() -> None:
    """What every command that runs a model does first, before a model or dataset is loaded."""
    keep_freed_memory()
    quiet_libraries()


def keep_freed_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Make glibc's malloc keep the memory a process frees for its next allocations, instead of
    handing it back to the kernel; returns whether it did.

    By default glibc serves each large allocation (128 KiB up, raised as blocks are freed, to at
    most 32 MiB) with a fresh mapping that it unmaps on free, and trims the free top of its heap.
    A training step on CPU frees and allocates the same large tensors again every step (the word
    embedding's dense gradient: 47 MB for MiniLM; activations; mixed precision's bf16 copies of
    the weights), so each comes back as new pages that the kernel must fault in and zero: 11,400
    page faults a step for MiniLM's embedding gradient, none with this. Serving every allocation
    from the heap and never trimming it made MiniLM full fine-tuning on SST-2 (bf16, 2 cores)
    1.05x as fast, with peak memory 4-7% higher (freed blocks are reused, not returned; measured
    in docs/bench-sst2-expert-cpu.md). Intel's CPU launcher gets the same from jemalloc or
    tcmalloc; llmkit does it with the allocator the process already has. Left alone: other C
    libraries (musl, macOS), a malloc preloaded in its place (LD_PRELOAD), malloc settings the
    user chose (GLIBC_TUNABLES, MALLOC_*_ variables), and LLMKIT_KEEP_FREED_MEMORY=0 (or
    false/no/off; another value is an error)."""
    if environ is None:
        environ = os.environ
    if not switched_on(KEEP_FREED_MEMORY_ENV, "leave glibc's malloc as it is", environ):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    preloaded = "malloc" in environ.get("LD_PRELOAD", "")
    tuned = "glibc.malloc" in environ.get("GLIBC_TUNABLES", "") or any(
        name.startswith("MALLOC_") and name.endswith("_") for name in environ
    )
    if preloaded or tuned:
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))


def switched_on(name: str, off_does: str, environ: Mapping[str, str] | None = None) -> bool:
    """An on/off environment variable of llmkit's, on unless set to 0/false/no/off; any other
    value than those and 1/true/yes/on is an error that says what each does."""
    if environ is None:
        environ = os.environ
    chosen = environ.get(name, "1").strip().lower()
    if chosen not in SWITCH_ON + SWITCH_OFF:
        raise LlmkitError(
            f"{name}={environ[name]!r} is neither on nor off.",
            hint=f"set it to 0 to {off_does}, or 1 (the default); unset it with `unset {name}`",
        )
    return chosen in SWITCH_ON


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
