"""Ctrl-C and SIGTERM while training: the run records why it stopped (status `failed`, its last
checkpoint) and says how to continue it, instead of ending with status `running`."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError
from llmkit.resume import resume_note
from llmkit.rundir import RunDirectory, resume_command

REASONS = {"SIGTERM": "terminated (SIGTERM)", "SIGINT": "interrupted (Ctrl-C)"}
EXIT_CODES = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}


class Terminated(BaseException):
    """SIGTERM arrived: stop like Ctrl-C does (a BaseException, so no `except Exception` eats it)."""


class RunInterrupted(LlmkitError):
    """Training stopped by Ctrl-C or SIGTERM; the status and last checkpoint are recorded."""

    def __init__(self, message: str, hint: str, exit_code: int) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGTERM (what `kill`, schedulers and containers send) raises `Terminated` while training."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(
    run: RunDirectory, exc: BaseException, record: Callable[[RunDirectory, str], None]
) -> RunInterrupted:
    """Record the stop with `record(run, reason)` and return the error that says how to go on."""
    which = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
    record(run, REASONS[which])
    note = resume_note(run)
    if note:
        hint = f"--resume continues it from {Path(note['last_checkpoint']).name}: {resume_command(run.path)}"
    else:
        hint = "it stopped before its first checkpoint; start it again with --overwrite"
    return RunInterrupted(
        f"Training stopped: {REASONS[which]}; status.json records the run in '{run.path}' as failed.",
        hint=hint,
        exit_code=EXIT_CODES[which],
    )
