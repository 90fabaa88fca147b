"""The canary lane: the fast test matrix on the newest releases pyproject.toml admits.

`make test-latest` builds that environment (.venv-latest) and runs this script in it. It prints
and saves a verdict: which packages are newer than the lock, and which tests fail on them. A green
canary means `make lock` can move the lock forward; a red one shows the next upstream break before
any user installs it. CI runs it after the locked lane and does not block on it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

# The end-to-end matrix and the checks that catch numeric or API drift, not the whole suite.
CANARY_TESTS = (
    "tests/test_matrix.py",
    "tests/test_prefix_cache.py",
    "tests/test_reload.py",
    "tests/test_padding.py",
    "tests/test_golden.py",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--report", type=Path, required=True, help="where the verdict is written")
    args = parser.parse_args()

    from llmkit.versions import installed_versions, tested_versions, untested_versions

    args.report.parent.mkdir(parents=True, exist_ok=True)
    junit = args.report.with_suffix(".xml")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        *CANARY_TESTS,
    ]
    returncode = subprocess.call(command)
    failures = _failed_tests(junit) if junit.is_file() else ["(pytest wrote no report)"]

    newer = untested_versions()
    lines = ["canary: fast test matrix on the newest releases within pyproject.toml's ranges"]
    if not tested_versions():
        lines.append("  (no requirements.lock found: cannot say which versions are new)")
    lines += [
        f"  {package} {installed}"
        + (f"  (locked: {newer[package][1]})" if package in newer else "  (as locked)")
        for package, installed in installed_versions().items()
    ]
    if returncode == 0:
        lines.append(
            "canary verdict: PASSED" + ("; `make lock` moves the lock to these versions" if newer else "")
        )
    else:
        lines.append(f"canary verdict: FAILED ({len(failures)} test(s)) on the versions above:")
        lines += [f"  {test}" for test in failures]
        lines.append("  the locked lane decides whether a change lands; fix these before `make lock`")
    verdict = "\n".join(lines) + "\n"
    args.report.write_text(verdict, encoding="utf-8")
    print(verdict, end="")
    return returncode


def _failed_tests(junit: Path) -> list[str]:
    failed = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
