"""Redis losing its data (a restart without persistence, a failover to an empty replica, a new REDIS_URL).

The fence counter starts again from nothing; the queue must go on serving, by itself, and say once why.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from runner import keys
from runner.client import Runner
from runner.stack import LocalStack, RedisServer, free_port, terminate
from tests.conftest import running_stack
from tests.support.processes import wait_until

QUEUE = "data-loss"
DATA_LOSS = "Redis lost its data"
HANDED_BACK = "handing it back"
"""What the work-horse logs each time it hands a task back as stale: once per hand-back, so a spin shows."""


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real Redis without persistence: a restart comes back empty."""
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        yield server
    finally:
        server.stop()


def restart_empty(server: RedisServer) -> None:
    """Stop Redis, delete whatever it kept, start it again on the same port with the same password."""
    server.stop()
    shutil.rmtree(server.data_dir)
    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        assert client.dbsize() == 0, "Redis came back empty"
    finally:
        client.close()


def run_echo(url: str, word: str, timeout: float) -> str:
    """Submit ``echo word`` with a client of its own (the old one's connections died with Redis)."""
    runner = Runner(redis_url=url, queue=QUEUE)
    try:
        result = runner.submit(agent="command", argv=["echo", word]).result(timeout=timeout)
        assert result.success, result.error
        return result.output
    finally:
        runner.redis.close()


@pytest.mark.timeout(180)
def test_redis_losing_its_data_under_a_running_worker_does_not_stop_the_queue(
    volatile_redis: RedisServer, tmp_path: Path
) -> None:
    """Redis restarts empty under a live worker: its lock and fence are gone, nobody else took the queue, so
    the worker takes it again, says so in one sentence, and the next task runs (no stop, no spin)."""
    log_path = tmp_path / "worker.log"
    with running_stack(volatile_redis.url, QUEUE, log_path) as stack:
        assert run_echo(volatile_redis.url, "before", 30) == "before\n"
        restart_empty(volatile_redis)
        # Before the lock's next renewal (the fence still gone) and after it (the fence restored).
        assert run_echo(volatile_redis.url, "after", 60) == "after\n"
        wait_until(lambda: DATA_LOSS in log_path.read_text(), 10, what="the worker to say Redis lost its data")
        assert run_echo(volatile_redis.url, "again", 30) == "again\n"
        assert stack.worker is not None and stack.worker.poll() is None, "the worker kept serving"
        logged = log_path.read_text()
        assert logged.count(DATA_LOSS) == 1, logged
        assert HANDED_BACK not in logged and "lost the lock" not in logged, logged


@pytest.mark.timeout(180)
def test_a_worker_started_after_redis_lost_its_data_is_not_refused_as_stale(
    volatile_redis: RedisServer, tmp_path: Path
) -> None:
    """The handler keeps the newest fencing token it saw; a worker started on the emptied Redis (a supervisor's
    restart, a new REDIS_URL) must still get a newer one, or the handler refuses every run it sends."""
    seed = redis.Redis.from_url(volatile_redis.url)
    seed.set(keys.fence_key(QUEUE), 41)  # a queue whose lock was taken many times before
    seed.close()
    log_path = tmp_path / "worker.log"
    with running_stack(volatile_redis.url, QUEUE, log_path) as stack:
        assert run_echo(volatile_redis.url, "before", 30) == "before\n"
        terminate(stack.worker)
        restart_empty(volatile_redis)
        stack.start_worker(30)
        assert run_echo(volatile_redis.url, "after", 60) == "after\n"
        stale = redis.Redis.from_url(volatile_redis.url).hget(keys.metrics_key(QUEUE), "retries:stale")
        assert stale is None, "no run was handed back as stale"
        assert HANDED_BACK not in log_path.read_text()


@pytest.mark.timeout(120)
def test_a_run_refused_as_stale_goes_back_in_line_with_a_backoff_and_runs_once_the_handler_forgets(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    """The handler has seen a newer fencing token for the queue than Redis now issues (what a Redis whose clock
    went back leaves behind): each run is refused. The task is never lost or left `running`: it goes back in
    line after a backoff that doubles, each refusal logged with a sentence and counted among its attempts.
    Once the handler restarts (and forgets the token), it runs."""
    import asyncio

    from handler.protocol import ExecuteParams
    from runner.handler_client import execute_remote

    async def ignore(stream: str, seq: int, data: str) -> None:
        return None

    worker_log = tmp_path / "worker.log"
    with (
        worker_log.open("wb") as log,
        LocalStack(
            redis_url=redis_url, queue=queue_name, worker_output=log.fileno(), handler_port=free_port()
        ) as stack,
    ):  # a fixed port: the restarted handler is where the worker looks
        runner = Runner(redis_url=redis_url, queue=queue_name)
        newer = int(runner.redis.get(keys.fence_key(queue_name)) or 0) + 10**6
        params = ExecuteParams(argv=["true"], fence={"key": queue_name, "token": newer})
        asyncio.run(execute_remote(stack.handler_url, params, ignore, token=stack.handler_token))
        handle = runner.submit(agent="command", argv=["echo", "ran"])
        wait_until(lambda: worker_log.read_text().count(HANDED_BACK) >= 3, 60, what="three refusals")
        assert "refusal 1" in worker_log.read_text() and "refusal 3" in worker_log.read_text()
        record = runner.get(handle.id)
        assert record is not None and record.result is None
        assert stack.handler is not None
        terminate(stack.handler)
        stack.start_handler(20)
        result = handle.result(timeout=60)
        assert (result.success, result.output) == (True, "ran\n")
        kinds = {attempt["kind"] for attempt in result.attempts}
        assert kinds == {"stale"} and len(result.attempts) >= 3, result.attempts
