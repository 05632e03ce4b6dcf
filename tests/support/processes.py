"""Waiting on conditions and checking for leftover processes, without sleeping blindly."""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

from runner.stack import terminate

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X")


def pids_with_marker(marker: str) -> list[int]:
    """Live processes whose command line contains ``marker`` (tests put a unique token in argv)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if marker.encode() in cmdline and pid_alive(int(name)) and int(name) != os.getpid():
            found.append(int(name))
    return found


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(child) for child in handle.read().split()]
    except OSError:
        pass
    return found


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRss:
    """Samples the RSS of a process (and optionally of each of its children) from a thread.

    ``peak`` is the largest RSS seen for any single process of the tree (the parent or one
    child); a forked work-horse is measured on its own, like the parent.
    """

    def __init__(self, pid: int, include_children: bool = False, interval: float = 0.02) -> None:
        import threading

        self.pid = pid
        self.include_children = include_children
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = [self.pid, *(children_of(self.pid) if self.include_children else [])]
            self.peak = max(self.peak, *(rss_bytes(pid) for pid in pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def first_line(proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    """The first line ``proc`` prints on stdout (a service's banner), within ``timeout`` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output within {timeout} s")
    return proc.stdout.readline().decode()


def stop_all(*procs: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM each (SIGKILL after 15 s), in order."""
    for proc in procs:
        terminate(proc)


def redis_with_password(argv: list[str], password: str) -> subprocess.Popen[bytes]:
    """``argv`` (a ``redis-server -`` command line) with ``password`` given on stdin, as the embedded stack does."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    proc.stdin.write(f'requirepass "{password}"\n'.encode())
    proc.stdin.close()
    return proc
