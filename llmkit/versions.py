"""Which library versions are installed, and which the project tested (its lock file).

Fine-tuning libraries break each other between minor releases (transformers 5.24 renamed the
models' `past_key_values` parameter and PEFT 0.21's prefix tuning stopped working), so what a run
used is recorded, `llmkit --version` prints it, and an error from a method that fails on this
install says when the installed versions are not the tested ones.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

# The libraries whose versions decide whether a run works, in the order they are reported.
KEY_PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "evaluate")

# `make lock` writes it at the root of the source tree, beside pyproject.toml.
LOCK_FILE = Path(__file__).resolve().parent.parent / "requirements.lock"


def installed_versions(packages: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def run_versions() -> dict[str, str]:
    """What results.json records."""
    import llmkit

    return {"llmkit": llmkit.__version__, "python": platform.python_version(), **installed_versions()}


@cache
def tested_versions() -> dict[str, str]:
    """Versions pinned in the lock (`name==version` lines), by lower-case name; empty when llmkit
    was installed without its source tree, where the lock is not at hand."""
    lock_file = LOCK_FILE
    if not lock_file.is_file():
        return {}
    pins = {}
    for line in lock_file.read_text(encoding="utf-8").splitlines():
        requirement = line.split("#", 1)[0].strip()
        if "==" in requirement:
            name, _, pinned = requirement.partition("==")
            pins[_normalised(name)] = pinned.split(";", 1)[0].strip()
    return pins


def untested_versions() -> dict[str, tuple[str, str]]:
    """{package: (installed, tested)} for the key packages whose installed version is not the
    locked one. A local build tag (torch's +cpu) is not a difference."""
    tested = tested_versions()
    differing = {}
    for package, installed in installed_versions().items():
        locked = tested.get(_normalised(package))
        if locked is not None and installed.split("+", 1)[0] != locked.split("+", 1)[0]:
            differing[package] = (installed, locked)
    return differing


def version_report() -> str:
    """One line per key package: installed version, and the tested one where it differs."""
    tested = tested_versions()
    differing = untested_versions()
    lines = []
    for package, installed in installed_versions().items():
        note = f"  (tested: {differing[package][1]})" if package in differing else ""
        lines.append(f"{package} {installed}{note}")
    if not tested:
        lines.append("(no requirements.lock beside the source: tested versions unknown)")
    return "\n".join(lines)


def version_hint() -> str:
    """The part of a failure's hint that is about versions."""
    differing = untested_versions()
    if not differing:
        return ""
    listing = ", ".join(f"{p} {installed} (tested {locked})" for p, (installed, locked) in differing.items())
    return (
        f"this install differs from the tested versions: {listing}; install the tested set with "
        "`make install` (or `pip install -c requirements.lock -e .`)"
    )


def _normalised(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")
