"""Crashes and restarts mid-task: nothing lost, nothing stuck, nothing left running."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from runner import events
from runner.client import Runner
from runner.stack import LocalStack, RedisServer
from tests.support.processes import pids_with_marker, wait_until

PY = sys.executable


def ticker(token: str, ticks: int, every: float = 0.1) -> list[str]:
    """A child printing ``tick N`` lines; ``token`` in its argv makes it findable."""
    return [
        PY,
        "-c",
        f"import time\nfor i in range({ticks}):\n    print('tick', i, flush=True)\n    time.sleep({every})",
        token,
    ]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_restart_mid_task_loses_nothing(own_redis: RedisServer, tmp_path: Path) -> None:
    """Redis restarts (append-only on) while a task runs: it completes, queued tasks run in order after."""
    token = uuid.uuid4().hex
    with LocalStack(
        redis_url=own_redis.url, queue="restart", worker_output=(tmp_path / "worker.log").open("wb").fileno()
    ) as stack:
        client = Runner(redis_url=own_redis.url, queue="restart")
        running = client.submit(agent="command", argv=ticker(token, 30))
        queued = [client.submit(agent="command", argv=["echo", f"queued-{n}"]) for n in range(3)]
        wait_until(lambda: client.get(running.id).status == "running", 30, what="the first task to run")
        own_redis.stop()
        own_redis.start()  # same port, same data directory
        result = running.result(timeout=90)
        # Either outcome is allowed, but it must be recorded and explained, never stuck as started.
        assert result.success or result.error
        if result.success:
            ticks = "".join(e["data"] for e in running.events(timeout=30) if e["type"] == "output")
            assert ticks.count("tick") >= 29  # a write retried across the restart may repeat a frame
        outputs = [h.result(timeout=90).output for h in queued]
        assert outputs == [f"queued-{n}\n" for n in range(3)]
        starts = [client.get(h.id).started_at for h in queued]
        assert starts == sorted(starts)
        assert stack.worker is not None and stack.worker.poll() is None, "the worker reconnected by itself"
    wait_until(lambda: not pids_with_marker(token), 10, what="no leftover process")


def test_a_killed_follower_does_not_affect_the_task(stack: LocalStack, runner: Runner) -> None:
    """An orchestrator killed while following: the task runs on; a new follower replays everything."""
    token = uuid.uuid4().hex
    handle = runner.submit(agent="command", argv=ticker(token, 20, 0.05))
    follower = subprocess.Popen(
        [PY, "-m", "runner.cli", "follow", handle.id, "--json"],
        env=stack.child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert follower.stdout is not None
    assert b'"type":"started"' in follower.stdout.readline()
    follower.send_signal(signal.SIGKILL)
    follower.wait(10)
    result = handle.result(timeout=60)
    assert result.success
    text = "".join(e["data"] for e in handle.events(timeout=10) if e["type"] == "output")
    assert text == "".join(f"tick {i}\n" for i in range(20))


def test_handler_killed_mid_task_is_an_interruption_the_task_runs_again_once_it_is_back(
    stack: LocalStack, runner: Runner, tmp_path: Path
) -> None:
    """SIGKILL on the handler: the attempt is interrupted (not failed, not cancelled); the task waits for the
    handler, the restarted handler stops the orphans of the dead one, then the task runs again and succeeds,
    its first attempt recorded; the queue moves on."""
    token = uuid.uuid4().hex
    flag = tmp_path / "first-attempt"
    script = (
        f"if [ -e {flag} ]; then echo second attempt; else touch {flag}; "
        f"setsid {PY} -c 'import time; time.sleep(1000)' {token} & wait; fi"
    )
    handle = runner.submit(agent="command", argv=["sh", "-c", script, token])
    wait_until(lambda: len(pids_with_marker(token)) >= 2, 30, what="the task and its escaped grandchild")
    assert stack.handler is not None
    port = stack.handler_url.rsplit(":", 1)[1].split("/")[0]
    stack.handler.kill()
    stack.handler.wait(10)
    wait_until(lambda: any(e["type"] == "interrupted" for e in _logged(runner, handle.id)), 30, what="the interruption")
    assert pids_with_marker(token), "a SIGKILLed handler cannot stop anything: its runs are orphans until it restarts"
    stack.handler_port = int(port)
    stack.start_handler(20)
    wait_until(lambda: not pids_with_marker(token), 20, what="the restarted handler to stop the orphans")
    result = handle.result(timeout=60)
    assert (result.success, result.output) == (True, "second attempt\n")
    (first,) = result.attempts
    assert "closed the connection" in first["error"] and stack.handler_url in first["error"]
    assert runner.submit(agent="command", argv=["echo", "after"]).result(timeout=30).output == "after\n"


def _logged(runner: Runner, task_id: str) -> list[dict]:
    return [orjson.loads(fields[b"e"]) for _, fields in runner.redis.xrange(events.log_key(task_id))]


def test_handler_restarted_with_sigterm_mid_task_the_task_runs_again_and_its_dependent_runs(
    stack: LocalStack, runner: Runner, tmp_path: Path
) -> None:
    """A clean stop of the handler (docker stop, systemd restart) is not a cancel: the task is interrupted,
    runs again once the handler is back, and the task submitted after it runs too."""
    flag = tmp_path / "first-attempt"
    script = f"if [ -e {flag} ]; then echo second attempt; else touch {flag}; echo first; sleep 1000; fi"
    handle = runner.submit(agent="command", argv=["sh", "-c", script])
    dependent = runner.submit(agent="command", argv=["echo", "dependent ran"], after=handle.id)
    wait_until(lambda: flag.exists(), 30, what="the first attempt to start")
    assert stack.handler is not None
    port = int(stack.handler_url.rsplit(":", 1)[1].split("/")[0])
    stack.handler.terminate()
    assert stack.handler.wait(30) == 0
    stack.handler_port = port
    stack.start_handler(20)
    result = handle.result(timeout=60)
    assert (result.success, result.cancelled, result.output) == (True, False, "second attempt\n")
    assert [a["error"] for a in result.attempts] == [
        "The handler shut down while the task ran (its processes were stopped); the task is run again once a "
        "handler is back."
    ]
    assert dependent.result(timeout=60).output == "dependent ran\n"
