"""One process per run directory: an OS file lock (`flock`) on the directory's marker file, held by
the process that writes the run for as long as it runs. The operating system drops the lock when
that process ends, however it ends, so a killed run never leaves a stale lock behind; a run whose
status says `running` but whose lock is free was killed.

Every command that writes a run directory takes the lock; every command that reads one as a
finished run checks it is free. In a multi-process run only the main process holds it."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from llmkit.errors import RunDirectoryError
from llmkit.fsutil import FILE_MODE, MARKER, dumps

# A reader checking the lock holds it shared for a moment: a writer tries a few times.
_ATTEMPTS, _PAUSE_S = 5, 0.05


class RunInProgress(RunDirectoryError):
    """Another live process holds the run directory."""


def _now() -> str:
    from llmkit.rundir import now

    return now()


class RunLock:
    """The held lock of a directory llmkit writes; `release()` (or leaving a `with`) gives it up."""

    def __init__(self, directory: Path, handle: int) -> None:
        self.directory = directory
        self._handle: int | None = handle

    @classmethod
    def acquire(cls, directory: Path, kind: str = "run", busy_hint: str | None = None) -> RunLock:
        """Lock `directory` (made if absent) for this process, recording its pid and start time in
        the marker file; a live holder makes this a `RunInProgress` error."""
        directory.mkdir(parents=True, exist_ok=True)
        handle = os.open(directory / MARKER, os.O_RDWR | os.O_CREAT, FILE_MODE)
        for attempt in range(_ATTEMPTS):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == _ATTEMPTS - 1:
                    holder = _read(directory / MARKER)
                    os.close(handle)
                    raise in_progress(directory, holder, busy_hint) from None
                time.sleep(_PAUSE_S)
        record = {"made_by": "llmkit", "kind": kind, "pid": os.getpid(), "started_at": _now()}
        os.ftruncate(handle, 0)
        os.pwrite(handle, (dumps(record) + "\n").encode(), 0)
        return cls(directory, handle)

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            os.close(self._handle)
            self._handle = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def holder(directory: Path) -> dict[str, Any] | None:
    """Who holds `directory` now (pid, started_at), or None when no live process does."""
    marker = directory / MARKER
    try:
        handle = os.open(marker, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(marker)
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
    finally:
        os.close(handle)


def check_not_in_use(directory: Path, busy_hint: str | None = None) -> None:
    """Refuse to go on while a live process writes `directory`."""
    found = holder(directory)
    if found is not None:
        raise in_progress(directory, found, busy_hint)


def in_progress(directory: Path, found: dict[str, Any], hint: str | None = None) -> RunInProgress:
    pid, started = found.get("pid", "?"), found.get("started_at", "?")
    return RunInProgress(
        f"'{directory}': run in progress (pid {pid}, started {started}).",
        hint=hint or f"wait for it to finish (or stop process {pid}), then try again",
    )


def _read(marker: Path) -> dict[str, Any]:
    try:
        found = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
