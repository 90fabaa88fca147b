"""The run directory: resolved recipe, status, per-step log, trained model and results.

Files that mark a finished result (`results.json`, `model/`) are written under a temporary name
and renamed into place, so a crash never leaves one that looks complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from llmkit.errors import RunDirectoryError

RECIPE_FILE = "recipe.yaml"
RESULTS_FILE = "results.json"
STATUS_FILE = "status.json"
LOG_FILE = "log.jsonl"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"


def _mode(full: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return full & ~umask


_FILE_MODE = _mode(0o666)
_DIR_MODE = _mode(0o777)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunDirectory:
    def __init__(self, path: Path, writes: bool = True) -> None:
        self.path = path
        # In a multi-process run every process holds the run directory, only the main one writes.
        self.writes = writes

    @staticmethod
    def check_available(path: Path, overwrite: bool) -> None:
        """Fail before any work if `path` holds something that `overwrite` does not allow replacing."""
        if path.exists() and not path.is_dir():
            raise RunDirectoryError(f"Output path '{path}' exists and is not a directory.")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise RunDirectoryError(
                f"Run directory '{path}' already exists.",
                hint="pass --resume to continue it from its last checkpoint, --overwrite to replace "
                "it, or --output-dir DIR to write elsewhere",
            )

    @classmethod
    def create(cls, path: Path, overwrite: bool) -> RunDirectory:
        """A fresh run directory; an existing non-empty one is replaced only with `overwrite`."""
        cls.check_available(path, overwrite)
        if path.is_dir():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def open(cls, path: Path) -> RunDirectory:
        """An existing, completed run (for reloading its model)."""
        if not (path / RECIPE_FILE).is_file() or not (path / MODEL_DIR).is_dir():
            raise RunDirectoryError(
                f"'{path}' is not a completed llmkit run: it has no {RECIPE_FILE} and {MODEL_DIR}/.",
                hint="give the directory `llmkit finetune` wrote (its --output-dir)",
            )
        return cls(path)

    @classmethod
    def open_unfinished(cls, path: Path) -> RunDirectory:
        """A run that started and did not complete, for `--resume`."""
        if not (path / RECIPE_FILE).is_file():
            raise RunDirectoryError(
                f"Cannot resume: '{path}' is not an llmkit run directory (no {RECIPE_FILE}).",
                hint="drop --resume to start a new run there",
            )
        run = cls(path)
        if run.status().get("state") == "completed":
            raise RunDirectoryError(
                f"Cannot resume: the run in '{path}' has already completed.",
                hint="use --overwrite to train it again, or --output-dir DIR for a new run",
            )
        return run

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
        path = self.path / STATUS_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def save_model(self, write: Callable[[Path], object]) -> None:
        """Write the model with `write(tmp_dir)`, then move it into place in one rename."""
        if not self.writes:
            return
        staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIR}-", dir=self.path))
        try:
            write(staging)
            os.chmod(staging, _DIR_MODE)
            if self.model_dir.exists():
                shutil.rmtree(self.model_dir)
            os.replace(staging, self.model_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        text = json.dumps(data, indent=2, default=str) + "\n"
        self._write_atomic(name, lambda p: p.write_text(text, encoding="utf-8"))

    def _write_atomic(self, name: str, write: Callable[[Path], object]) -> None:
        if not self.writes:
            return
        handle, temporary = tempfile.mkstemp(prefix=f".{name}-", dir=self.path)
        os.close(handle)
        try:
            write(Path(temporary))
            os.chmod(temporary, _FILE_MODE)  # mkstemp creates owner-only files
            os.replace(temporary, self.path / name)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
