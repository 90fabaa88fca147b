"""The tested version set: the lock agrees with pyproject.toml's ranges, a fresh install is fully
pinned, and a failure on other versions than the tested ones says so and what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from helpers import DataFiles

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the lock is made and tested there

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
INSTALLED_EXTRAS = ("dev", "bench", "trackers", "deepspeed")  # as the Makefile's install target names them


def declared_requirements(pyproject: Path) -> list[Requirement]:
    """The dependencies and the extras `make install` installs (INSTALLED_EXTRAS)."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})
    texts = [*project["dependencies"], *(t for extra in INSTALLED_EXTRAS for t in extras.get(extra, []))]
    return [Requirement(text) for text in texts]


def locked_versions(lock: Path) -> dict[str, Version]:
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            requirement = Requirement(text)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{lock.name}: '{text}' is not an exact pin"
            pins[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pins


def disagreements(pyproject: Path, lock: Path) -> list[str]:
    """Declared packages that the lock leaves out or pins outside the declared range."""
    pins = locked_versions(lock)
    problems = []
    for requirement in declared_requirements(pyproject):
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None:
            problems.append(f"{requirement.name} is declared ({requirement}) but not locked")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{requirement.name}=={pinned} is locked, outside the declared '{requirement}'")
    return problems


def test_the_lock_pins_every_declared_package_inside_its_declared_range() -> None:
    assert disagreements(ROOT / "pyproject.toml", LOCK) == []


def test_a_locked_version_outside_the_declared_range_is_found(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = ["transformers>=5.0,<6", "peft>=0.21"]\n', encoding="utf-8"
    )
    lock = tmp_path / "requirements.lock"
    lock.write_text("# header\ntransformers==6.0.1\n", encoding="utf-8")
    assert disagreements(pyproject, lock) == [
        "transformers==6.0.1 is locked, outside the declared 'transformers<6,>=5.0'",
        "peft is declared (peft>=0.21) but not locked",
    ]


def test_the_makefile_installs_torch_at_the_locked_version() -> None:
    import subprocess

    shown = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "--eval=print-torch: ; @echo $(TORCH)", "print-torch"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert shown == f"torch=={locked_versions(LOCK)['torch']}"


def test_llmkit_version_prints_the_key_libraries(cli: Any) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("llmkit ")
    for package in ("torch", "transformers", "peft", "datasets", "accelerate", "evaluate"):
        assert any(line.startswith(f"{package} ") for line in lines), result.stdout


def test_versions_other_than_the_tested_ones_are_named_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib.metadata import version

    from llmkit import versions

    lock = tmp_path / "requirements.lock"
    lock.write_text(f"transformers==5.23.0\npeft=={version('peft')}\n", encoding="utf-8")
    monkeypatch.setattr(versions, "LOCK_FILE", lock)
    versions.tested_versions.cache_clear()
    try:
        installed = version("transformers")
        assert versions.untested_versions() == {"transformers": (installed, "5.23.0")}
        hint = versions.version_hint()
        assert f"transformers {installed} (tested 5.23.0)" in hint
        assert "make install" in hint and "requirements.lock" in hint
        assert f"transformers {installed}  (tested: 5.23.0)" in versions.version_report()
    finally:
        versions.tested_versions.cache_clear()


def test_a_method_failing_its_forward_check_names_the_version_difference(
    cli: Any,
    make_recipe: Any,
    bert_checkpoint: Path,
    sentiment_data: DataFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without llmkit's cache hand-over, PEFT 0.21 fails prefix tuning on transformers >= 5.24 as it
    # did for users; the message must then point at the version difference, not the architecture.
    from llmkit import versions
    from llmkit.methods import peft_common

    monkeypatch.setattr(peft_common, "pass_prefix_as_cache", lambda model: None)
    monkeypatch.setattr(versions, "untested_versions", lambda: {"transformers": ("5.99.0", "5.24.0")})
    recipe = make_recipe(bert_checkpoint, sentiment_data, "prefix")
    result = cli("finetune", recipe, "--output-dir", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "Method 'prefix' does not work with this bert model" in result.stderr
    assert "transformers 5.99.0 (tested 5.24.0)" in result.stderr
    assert "make install" in result.stderr
    assert not (tmp_path / "run").exists()
