"""The suite's own rule that a test run leaves nothing in the checkout (the session hooks in tests/conftest.py),
shown on throwaway runs of pytest in a git checkout of their own: one that leaves files fails and names them; one
that writes only into caches and its tmp_path, beside files that were there before it, passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)

CONFTEST = (
    "from tests.conftest import pytest_sessionfinish, pytest_sessionstart, pytest_terminal_summary  # noqa: F401\n"
)


def throwaway_run(checkout: Path, test_code: str) -> subprocess.CompletedProcess[str]:
    """``test_code`` as the one test file of a pytest run in ``checkout`` (a new git repository), with this suite's
    session hooks."""
    subprocess.run(["git", "init", "-q", str(checkout)], check=True, timeout=30)
    (checkout / "pytest.ini").write_text("[pytest]\n")
    (checkout / "conftest.py").write_text(CONFTEST)
    (checkout / "test_throwaway.py").write_text(test_code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_throwaway.py"],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip


def test_a_run_that_leaves_files_in_the_checkout_fails_and_names_them(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    code = (
        "from pathlib import Path\n"
        "HERE = Path(__file__).parent\n"
        "def test_passes_but_litters():\n"
        "    (HERE / 'dump.rdb').write_bytes(b'REDIS0009')\n"
        "    (HERE / 'redis-data').mkdir()\n"
        "    (HERE / 'redis-data' / 'appendonly.aof').write_text('')\n"
    )
    run = throwaway_run(checkout, code)
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout + run.stderr
    assert "1 passed" in run.stdout
    sentence = (
        f"The test run left 2 new untracked or ignored path(s) in the checkout {checkout}: dump.rdb, redis-data/ "
        "(a test must write under its tmp_path, never into the working tree)."
    )
    assert sentence in run.stdout.splitlines(), run.stdout


def test_a_run_writing_only_caches_and_its_tmp_path_passes_beside_files_from_before(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "notes-from-before.txt").write_text("the developer's own, untracked")
    code = (
        "from pathlib import Path\n"
        "HERE = Path(__file__).parent\n"
        "def test_tidy(tmp_path):\n"
        "    (tmp_path / 'dump.rdb').write_bytes(b'REDIS0009')\n"
        "    for cache in ('__pycache__', '.hypothesis', '.pytest_cache', 'x.egg-info', '.venv'):\n"
        "        (HERE / cache).mkdir()\n"
        "        (HERE / cache / 'entry').write_text('')\n"
        "    (HERE / 'notes-from-before.txt').write_text('edited')\n"
    )
    run = throwaway_run(checkout, code)
    assert run.returncode == pytest.ExitCode.OK, run.stdout + run.stderr
    assert "left" not in run.stdout
