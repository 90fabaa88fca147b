"""Writing without destroying: the one place llmkit replaces files and directories.

- Files are written under a temporary name beside their target and renamed into place, so a
  reader (or a crash) never sees half a file.
- Directories llmkit makes (run, merge and bench outputs) hold a marker file, `.llmkit`; only a
  directory with that marker is ever replaced, and never one that holds an input of the command.
- Output paths are checked before any work, so a path that cannot be written costs seconds.
- JSON is strict: NaN and infinities are written as null, never as bare `NaN`.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from llmkit.errors import LlmkitError

# In every directory llmkit makes; a run directory's is also its lock file (llmkit.runlock).
MARKER = ".llmkit"
T = TypeVar("T")


class OutputError(LlmkitError):
    """An output path that is in the way or cannot be written."""


def _mode(full: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return full & ~umask


FILE_MODE = _mode(0o666)
DIR_MODE = _mode(0o777)


# ----------------------------------------------------------------------------- strict JSON


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (JSON null), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """Strict JSON: non-finite numbers become null, so every JSON reader can parse it."""
    return json.dumps(finite(value), allow_nan=False, default=str, **options)


# ----------------------------------------------------------------------------- files


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """`write(temporary)` beside `path`, then one rename into place."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, FILE_MODE)  # mkstemp creates owner-only files
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    write_text(path, dumps(data, indent=2) + "\n")


def write_or_rescue(path: Path, text: str, what: str) -> None:
    """Write a computed result; if `path` fails after all, keep the result in a temporary file and
    say where, rather than lose it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
    except OSError as exc:
        handle, rescued = tempfile.mkstemp(prefix="llmkit-", suffix=path.suffix or ".txt")
        with os.fdopen(handle, "w", encoding="utf-8") as rescue:
            rescue.write(text)
        raise OutputError(
            f"Could not write the {what} to '{path}' ({exc.strerror or exc}); it is saved in {rescued}.",
            hint="copy it from there, and check the output path",
        ) from exc


# ----------------------------------------------------------------------------- directories


def marker_kind(path: Path) -> str | None:
    """What llmkit made `path` as ("run", "merge", "bench"), or None if llmkit did not make it."""
    try:
        found = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(found.get("kind")) if isinstance(found, dict) and found.get("made_by") == "llmkit" else None


def write_marker(directory: Path, kind: str) -> None:
    marker = directory / MARKER
    if not marker.exists():
        marker.write_text(dumps({"made_by": "llmkit", "kind": kind}) + "\n", encoding="utf-8")


def replace_dir(target: Path, write: Callable[[Path], T], kind: str | None) -> T:
    """Write a directory with `write(staging)` (and check it there), then put it in place: a failure
    or a kill leaves no directory that looks complete, and an old `target` (llmkit's, see
    `check_replaceable`) is removed only once the new one is in place. `kind` names the marker's
    kind (None: no marker, for a directory inside one llmkit made)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    old = staging.with_name(staging.name + "-old")
    try:
        result = write(staging)
        if kind is not None:
            write_marker(staging, kind)
        os.chmod(staging, DIR_MODE)  # mkdtemp creates owner-only directories
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def move_into_place(staging: Path, target: Path) -> None:
    """A complete directory written elsewhere (a checkpoint in its staging area) renamed to
    `target`; an earlier `target` of the same name is replaced."""
    if target.exists():
        old = target.with_name(f".{target.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def clear_dir(path: Path, keep: Iterable[str] = ()) -> None:
    """Everything in `path` removed but the names in `keep` (a held lock file)."""
    kept = set(keep)
    for entry in path.iterdir():
        if entry.name in kept:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _listing(path: Path, limit: int = 8) -> str:
    names = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in path.iterdir())
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _inside(path: Path, directory: Path) -> bool:
    path, directory = path.resolve(), directory.resolve()
    return path == directory or directory in path.parents


def check_replaceable(
    path: Path,
    overwrite: bool,
    what: str,
    kind: str,
    inputs: Iterable[Path] = (),
    exists_hint: str = "pass --overwrite to replace it, or choose another directory",
) -> None:
    """Fail before any work if `path` cannot be (re)made as an output directory: it is a file, a
    non-empty directory without `overwrite`, a directory llmkit did not make as a `kind` output,
    or it holds (or is) one of the command's `inputs`; also if it cannot be written."""
    for source in inputs:
        if _inside(source, path):
            raise OutputError(
                f"{what.capitalize()} '{path}' holds '{source}', an input of this command; it would "
                "be destroyed.",
                hint="write the output to a directory of its own, outside the inputs",
            )
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what.capitalize()} '{path}' exists and is not a directory.")
    if path.is_dir() and any(entry.name != MARKER for entry in path.iterdir()):
        made_as = marker_kind(path)
        if made_as is None:
            raise OutputError(
                f"{what.capitalize()} '{path}' already exists and was not made by llmkit (it has no "
                f"{MARKER} marker), so --overwrite does not replace it; it holds: {_listing(path)}.",
                hint="give a new or empty directory (or delete this one yourself)",
            )
        if made_as != kind:
            raise OutputError(
                f"'{path}' is an llmkit {made_as} directory, and --overwrite replaces only an earlier "
                f"{kind} output with a {kind} output.",
                hint="give a new or empty directory",
            )
        if not overwrite:
            raise OutputError(f"{what.capitalize()} '{path}' already exists.", hint=exists_hint)
    check_writable(path, what)


def check_writable(path: Path, what: str) -> None:
    """`path` (a file or directory to be written, existing or not) can be created or written:
    its nearest existing ancestor is a directory where a file can be made."""
    if path.exists() and not path.is_dir():  # a file to be replaced: a new one is made beside it
        path = path.parent
    existing = path if path.exists() else next(p for p in path.parents if p.exists())
    if not existing.is_dir():
        raise OutputError(f"Cannot write the {what} '{path}': '{existing}' is a file, not a directory.")
    try:
        handle, probe = tempfile.mkstemp(prefix=".llmkit-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        # /proc and the like exist but refuse new files with "No such file or directory".
        why = "it does not accept new files" if exc.errno == errno.ENOENT else exc.strerror or str(exc)
        raise OutputError(
            f"Cannot write the {what} '{path}': '{existing}' is not writable ({why}).",
            hint="choose an output path in a directory you can write",
        ) from exc


def check_output_file(
    path: Path, overwrite: bool, what: str, inputs: Iterable[Path] = (), example: str = "out.json"
) -> None:
    """Fail before any work if the file `path` cannot be written: it is a directory, one of the
    command's `inputs`, an existing file without `overwrite`, or in a place that is not writable."""
    for source in inputs:
        if path.resolve() == source.resolve():
            raise OutputError(
                f"{what.capitalize()} '{path}' is also the input; writing it would destroy the input.",
                hint="write the output to another file",
            )
    if path.is_dir():
        raise OutputError(
            f"{what.capitalize()} '{path}' is a directory.", hint=f"name a file, e.g. {path / example}"
        )
    if path.exists() and not overwrite:
        raise OutputError(
            f"{what.capitalize()} '{path}' already exists.",
            hint="pass --overwrite to replace it, or choose another file",
        )
    check_writable(path, what)
