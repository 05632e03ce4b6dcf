"""Another local Unix user, as an attacker on the same machine: processes run as ``nobody``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

NOBODY = 65534

SQUATTER = """
import socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((sys.argv[1], int(sys.argv[2])))
listener.listen()
print("listening", flush=True)
while True:
    peer, _ = listener.accept()
    peer.settimeout(2)
    try:
        print(repr(peer.recv(65536)), flush=True)
    except OSError:
        print("connected", flush=True)
    peer.close()
"""
"""Holds a port and prints one line for every connection it gets: what the client sent first."""


def as_other_user() -> dict[str, Any]:
    """``subprocess.Popen`` arguments that run the process as ``nobody``; the test is skipped unless run as root,
    the only user here that can start another user's process."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run a process as another local user")
    return {"user": NOBODY, "group": NOBODY, "extra_groups": [], "cwd": "/"}


def _runs_for_others(path: Path) -> bool:
    """Whether another user may execute ``path``: it and every directory above it let others through."""
    return all(part.stat().st_mode & stat.S_IXOTH for part in (path, *path.parents))


def python_for_others() -> str:
    """A Python interpreter another user can run (this one may sit in root's private home)."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        path = Path(candidate).resolve()
        if path.exists() and _runs_for_others(path):
            return str(path)
    pytest.skip("no Python interpreter here that another user may run")


def squat(port: int, host: str = "127.0.0.1") -> subprocess.Popen[str]:
    """Another user's process listening on ``host``:``port``, once it has printed that it listens."""
    kwargs = as_other_user()
    proc = subprocess.Popen(
        [python_for_others(), "-c", SQUATTER, host, str(port)], stdout=subprocess.PIPE, text=True, **kwargs
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "listening":
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"the squatter did not start: {line!r}")
    return proc
