"""scripts/setup.sh: the quick start installs once, and reruns skip the install until pyproject.toml changes."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/../calls"
"""


def _ensure(directory: Path, extras: str) -> None:
    subprocess.run(
        ["bash", "-c", f'set -euo pipefail; . "{ROOT}/scripts/setup.sh"; ensure_venv "{extras}"'],
        cwd=directory, check=True, timeout=30,
    )  # fmt: skip


def test_the_install_runs_once_per_pyproject_and_the_dev_one_serves_both(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON)  # stands in for the venv's interpreter: records each pip call
    python.chmod(0o755)
    calls = tmp_path / ".venv" / "calls"

    def installs() -> list[str]:
        return [line for line in calls.read_text().splitlines() if "-e" in line.split()] if calls.exists() else []

    _ensure(tmp_path, "[dev]")
    assert installs() == ["-m pip install --quiet --disable-pip-version-check -e .[dev]"]
    _ensure(tmp_path, "[dev]")
    _ensure(tmp_path, "")  # the dev install includes the plain one
    assert len(installs()) == 1
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '2'\n")
    _ensure(tmp_path, "")
    assert installs()[-1] == "-m pip install --quiet --disable-pip-version-check -e ."
    assert len(installs()) == 2
