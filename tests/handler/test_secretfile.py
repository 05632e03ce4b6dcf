"""Private secret files: made 0600 in a 0700 directory, shared by concurrent makers, refused when others can read
them, or when another user owns them or their directory or can write to it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from handler.config import ConfigError
from handler.secretfile import load_or_create, read_secret


def test_a_missing_secret_is_made_private_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "handler.token"
    first = load_or_create(path)
    assert len(first) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create(path) == first == read_secret(path)


def test_concurrent_makers_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "handler.token"
    with ThreadPoolExecutor(8) as pool:
        made = set(pool.map(lambda _: load_or_create(path), range(32)))
    assert made == {read_secret(path)}
    assert [p.name for p in tmp_path.iterdir()] == ["handler.token"], "no temporary file is left behind"


def test_a_file_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "handler.token"
    path.write_text("abc\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError) as caught:
        load_or_create(path)
    assert str(path) in str(caught.value) and "chmod 600" in str(caught.value) and "0644" in str(caught.value)


def test_an_empty_file_and_a_missing_one(tmp_path: Path) -> None:
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    os.chmod(empty, 0o600)
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(empty)
    assert read_secret(tmp_path / "absent") is None


NOBODY = 65534


def _refusal(call: Callable[[Path], object], path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        call(path)
    return str(caught.value)


@pytest.mark.timeout(60)
@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user (nobody) needs root")
def test_as_root_a_secret_file_or_directory_another_user_owns_is_refused(tmp_path: Path) -> None:
    """Root too: a 0600 token file that nobody owns is neither used nor replaced, and a private-looking directory
    that nobody owns is refused, by the functions and by a real handler (exit 2, one sentence, no listening)."""
    planted = tmp_path / "handler.token"
    planted.write_text("chosen-by-nobody\n")
    os.chmod(planted, 0o600)
    os.chown(planted, NOBODY, NOBODY)
    expected = (
        f"The token file {planted} belongs to uid 65534 (mode 0600), not to this user (uid 0): run `chown 0 {planted}` "
        "if its secret is yours, or remove it to have a new one made."
    )
    assert _refusal(read_secret, planted) == _refusal(load_or_create, planted) == expected
    assert planted.read_text() == "chosen-by-nobody\n"

    directory = tmp_path / "cfg"
    path = directory / "handler.token"
    load_or_create(path)
    os.chown(directory, NOBODY, NOBODY)
    expected = (
        f"The directory {directory} holding the token file belongs to uid 65534 (mode 0700), not to this user "
        f"(uid 0): run `chown 0 {directory}` if it is yours, or remove it to have a private one made."
    )
    assert _refusal(read_secret, path) == _refusal(load_or_create, path) == expected
    base = {k: v for k, v in os.environ.items() if not k.startswith("CCX_")}
    done = subprocess.run(
        [sys.executable, "-m", "handler", "--port", "0"], env={**base, "CCX_CONFIG_DIR": str(directory)},
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.strip().splitlines() == [f"python -m handler: {expected}"]


def test_a_secret_file_or_directory_others_can_write_to_is_refused(tmp_path: Path) -> None:
    """A 0666 token file, and a directory others (0777) or its group (0770) can write to, holding a 0600 file."""
    loose = tmp_path / "loose.token"
    loose.write_text("abc\n")
    os.chmod(loose, 0o666)
    assert _refusal(read_secret, loose) == (
        f"The token file {loose} can be read by other users (mode 0666): run `chmod 600 {loose}`, or remove it to "
        "have a new one made."
    )
    for mode in (0o777, 0o770):
        directory = tmp_path / f"cfg-{mode:o}"
        path = directory / "handler.token"
        load_or_create(path)
        os.chmod(directory, mode)
        expected = (
            f"The directory {directory} holding the token file can be written by other users (mode {mode:04o}): "
            f"run `chmod 700 {directory}`, or remove it to have a private one made."
        )
        assert _refusal(read_secret, path) == _refusal(load_or_create, path) == expected
