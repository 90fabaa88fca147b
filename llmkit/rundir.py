"""The run directory: resolved recipe, status, per-step log, trained model and results.

Files that mark a finished result (`results.json`, `model/`) are written under a temporary name
and renamed into place (llmkit.fsutil), so a crash never leaves one that looks complete. The
process writing a run holds its lock (llmkit.runlock) for as long as it runs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from llmkit import fsutil
from llmkit.errors import RunDirectoryError
from llmkit.runlock import RunLock, check_not_in_use, holder, in_progress

RECIPE_FILE = "recipe.yaml"
RESULTS_FILE = "results.json"
STATUS_FILE = "status.json"
LOG_FILE = "log.jsonl"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
WHAT = "run directory"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def resume_command(path: Path) -> str:
    """The command that continues the run in `path` (its recipe.yaml holds absolute paths)."""
    return f"llmkit finetune {path / RECIPE_FILE} --output-dir {path} --resume"


class RunDirectory:
    def __init__(self, path: Path, writes: bool = True, lock: RunLock | None = None) -> None:
        self.path = path
        # In a multi-process run every process holds the run directory, only the main one writes.
        self.writes = writes
        self.lock = lock

    @staticmethod
    def check_available(path: Path, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
        """Fail before any work if `path` holds something that `overwrite` does not allow replacing,
        a live run, or an input of the run; or if it cannot be written."""
        busy = "wait for it to finish, or write elsewhere with --output-dir DIR"
        if path.is_dir():
            check_not_in_use(path, busy)
        fsutil.check_replaceable(path, overwrite, WHAT, "run", inputs, exists_hint=_exists_hint(path))

    @classmethod
    def create(cls, path: Path, overwrite: bool, inputs: Iterable[Path] = ()) -> RunDirectory:
        """A fresh run directory, locked for this process; an existing non-empty one is replaced
        only with `overwrite`, and only if llmkit made it."""
        inputs = list(inputs)
        cls.check_available(path, overwrite, inputs)
        lock = RunLock.acquire(
            path, busy_hint="wait for it to finish, or write elsewhere with --output-dir DIR"
        )
        try:
            # Checked again under the lock: another process may have written it in the meantime.
            fsutil.check_replaceable(path, overwrite, WHAT, "run", inputs, exists_hint=_exists_hint(path))
            fsutil.clear_dir(path, keep=[fsutil.MARKER])
        except BaseException:
            lock.release()
            raise
        return cls(path, lock=lock)

    @classmethod
    def open(cls, path: Path, command: str = "this command") -> RunDirectory:
        """An existing, completed run (for reloading its model), not being written right now."""
        if not (path / RECIPE_FILE).is_file() or not (path / MODEL_DIR).is_dir():
            if (path / RECIPE_FILE).is_file():
                raise _unfinished(path, command)
            found = (
                f"it has no {RECIPE_FILE} and {MODEL_DIR}/"
                if path.is_dir()
                else "it is a file"
                if path.exists()
                else "it does not exist"
            )
            raise RunDirectoryError(
                f"'{path}' is not a completed llmkit run: {found}.",
                hint="give the directory `llmkit finetune` wrote (its --output-dir)",
            )
        check_not_in_use(path, f"wait for it to finish; {command} reads a completed run")
        return cls(path)

    @classmethod
    def open_unfinished(cls, path: Path, lock: bool = True) -> RunDirectory:
        """A run that started and did not complete, for `--resume`; locked for this process
        (`lock`: the main process of a multi-process run)."""
        if not (path / RECIPE_FILE).is_file():
            raise RunDirectoryError(
                f"Cannot resume: '{path}' is not an llmkit run directory (no {RECIPE_FILE}).",
                hint="drop --resume to start a new run there",
            )
        held = RunLock.acquire(path, busy_hint="wait for it to finish; it is not stopped") if lock else None
        run = cls(path, lock=held)
        if run.status().get("state") == "completed":
            run.close()
            raise RunDirectoryError(
                f"Cannot resume: the run in '{path}' has already completed.",
                hint="use --overwrite to train it again, or --output-dir DIR for a new run",
            )
        return run

    def close(self) -> None:
        """Give up the run's lock: the run is over, completed or not."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def stored_recipe(self) -> dict[str, Any]:
        loaded = yaml.safe_load((self.path / RECIPE_FILE).read_text(encoding="utf-8"))
        return loaded if isinstance(loaded, dict) else {}

    def truncate_log(self, after_step: int) -> None:
        """Drop log entries past `after_step`: a resumed run logs those steps again."""
        if not self.writes or not self.log_path.is_file():
            return
        kept = [
            line
            for line in self.log_path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= after_step
        ]
        self._write_atomic(LOG_FILE, lambda p: p.write_text("".join(f"{k}\n" for k in kept)))

    def remove_checkpoints(self) -> None:
        if self.writes:
            shutil.rmtree(self.checkpoints_dir, ignore_errors=True)

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    def write_recipe(self, recipe: dict[str, Any]) -> None:
        text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
        self._write_atomic(RECIPE_FILE, lambda p: p.write_text(text, encoding="utf-8"))

    def write_results(self, results: dict[str, Any]) -> None:
        self._write_json(RESULTS_FILE, results)

    def set_status(self, state: str, **details: Any) -> None:
        self._write_json(STATUS_FILE, {"state": state, "updated_at": now(), **details})

    def status(self) -> dict[str, Any]:
        return read_status(self.path)

    def save_model(self, write: Callable[[Path], object]) -> None:
        """Write the model with `write(tmp_dir)`, then move it into place in one rename."""
        if self.writes:
            fsutil.replace_dir(self.model_dir, write, kind=None)

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        if self.writes:
            fsutil.write_json(self.path / name, data)

    def _write_atomic(self, name: str, write: Callable[[Path], object]) -> None:
        if self.writes:
            fsutil.write_atomic(self.path / name, write)


def read_status(path: Path) -> dict[str, Any]:
    try:
        found = json.loads((path / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _exists_hint(path: Path) -> str:
    if read_status(path).get("state") in ("running", "failed"):
        return (
            "pass --resume to continue it from its last checkpoint, --overwrite to replace it, or "
            "--output-dir DIR to write elsewhere"
        )
    return "pass --overwrite to replace it, or --output-dir DIR to write elsewhere"


def _unfinished(path: Path, command: str) -> RunDirectoryError:
    """Why a run that has a recipe has no trained model, by its status, and what to do."""
    found = holder(path)
    if found is not None:
        return in_progress(path, found, f"wait for it to finish; {command} needs a completed run")
    status = read_status(path)
    checkpoint = status.get("last_checkpoint")
    resume = f"continue it from {Path(checkpoint).name} with: {resume_command(path)}" if checkpoint else ""
    again = "train it again with --overwrite"
    hint = f"{resume}, or {again}" if resume else again
    if status.get("state") == "failed":
        reason = str(status.get("reason", "no reason recorded")).splitlines()[0]
        return RunDirectoryError(
            f"The run in '{path}' failed ({reason}); it has no trained model.", hint=hint
        )
    if status.get("state") == "running":
        return RunDirectoryError(
            f"The run in '{path}' did not finish: its status says running, but no process is running "
            "it (it was killed); it has no trained model.",
            hint=hint,
        )
    return RunDirectoryError(
        f"The run in '{path}' has a {RECIPE_FILE} but no {MODEL_DIR}/ (status: "
        f"{status.get('state', 'unknown')}); it has no trained model.",
        hint=hint,
    )
