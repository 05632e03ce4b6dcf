"""Private secret files: made 0600 in a 0700 directory, shared by concurrent makers, refused when others can read."""

from __future__ import annotations

import os
import stat
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
