"""Crashes and restarts mid-task: nothing lost, nothing stuck, nothing left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from runner import keys
from runner.client import Runner
from runner.stack import LocalStack, RedisServer, find_redis_server
from tests.handler.helpers import ROOT
from tests.support.netns import Machine, Network
from tests.support.processes import first_line, pids_with_marker, redis_with_password, stop_all, wait_until

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
    """SIGKILL on the handler: the attempt is interrupted (not failed, not cancelled); the dead handler's watchdog
    stops its runs at once; the task waits for the handler, then runs again and succeeds,
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
    # Its watchdog stops what it started at once, long before anyone restarts it: no orphan finishes the task
    # while nobody can record it (the task would then run to its end twice).
    wait_until(lambda: not pids_with_marker(token), 10, what="the dead handler's watchdog to stop its runs")
    stack.handler_port = int(port)
    stack.start_handler(20)
    result = handle.result(timeout=60)
    assert (result.success, result.output) == (True, "second attempt\n")
    (first,) = result.attempts
    assert "closed the connection" in first["error"] and stack.handler_url in first["error"]
    assert runner.submit(agent="command", argv=["echo", "after"]).result(timeout=30).output == "after\n"


def _logged(runner: Runner, task_id: str) -> list[dict]:
    return [orjson.loads(fields[b"e"]) for _, fields in runner.redis.xrange(keys.log_key(task_id))]


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


TICKER = """
import sys, time
for i in range(int(sys.argv[1])):
    print(f"tick {i}", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.mark.timeout(240)
def test_a_redis_outage_longer_than_the_lock_ttl_is_waited_out(tmp_path: Path, queue_name: str) -> None:
    """Redis goes away for 4 times the lock's TTL while a task prints, three more queued: the worker survives,
    keeps its queue (nobody else took it), the running task completes with every line, and the queued ones
    run after it, each exactly once and in order."""
    server = RedisServer(tmp_path / "redis").start()
    marks = tmp_path / "marks"
    try:
        with LocalStack(redis_url=server.url, queue=queue_name, env={"CCX_WORKER_LOCK_TTL": "2"}) as stack:
            runner = Runner(redis_url=server.url, queue=queue_name)
            running = runner.submit(agent="command", argv=[PY, "-c", TICKER, "40", "0.25"])
            queued = [
                runner.submit(agent="command", argv=["sh", "-c", f'echo "$0" >> {marks}', f"q{n}"]) for n in range(3)
            ]
            wait_until(lambda: runner.get(running.id).status == "running", 30, what="the task to run")  # type: ignore[union-attr]
            server.stop()
            outage_began = time.monotonic()
            time.sleep(8)  # the fault itself: Redis stays down for 4 x CCX_WORKER_LOCK_TTL
            server.start()
            result = running.result(timeout=120)
            assert result.success, result.error
            printed = "".join(e["data"] for e in running.events(timeout=30) if e["type"] == "output")
            assert printed == "".join(f"tick {i}\n" for i in range(40))
            for handle in queued:
                assert handle.result(timeout=60).success
            assert marks.read_text().split() == ["q0", "q1", "q2"]
            assert stack.worker is not None and stack.worker.poll() is None, "the worker kept serving"
            assert time.monotonic() - outage_began >= 8
    finally:
        server.stop()


SUBMIT_AND_WAIT = """
import sys, orjson
from runner.client import Runner
runner = Runner(redis_url=sys.argv[1], queue=sys.argv[2])
ids = [runner.submit(agent="command", argv=argv).id for argv in orjson.loads(sys.argv[3])]
print(orjson.dumps(ids).decode(), flush=True)
results = [runner.handle(task_id).result(timeout=float(sys.argv[4])).to_dict() for task_id in ids]
print(orjson.dumps(results).decode(), flush=True)
"""


@pytest.mark.timeout(240)
def test_a_worker_partitioned_longer_than_its_lock_ttl_keeps_its_queue_and_the_next_task_runs(
    tmp_path: Path,
) -> None:
    """Machine A has Redis and the handler; machine B the worker. B's link goes down for 4 x the lock's TTL
    mid-task. Nobody else took the queue, so after the restore the worker takes its lock and the run's lease
    back: the task completes with every line, and the task queued behind it runs by itself."""
    with Network() as net:
        a, b = net.machine("a"), net.machine("b")
        # The simulated machines share a private bridge of the test's own: plain redis:// with a password is fine.
        base = {**{k: v for k, v in os.environ.items() if not k.startswith("CCX_")}, "CCX_CONFIG_DIR": str(tmp_path),
                "CCX_ALLOW_INSECURE": "1"}  # fmt: skip
        token, password = "tok-" + uuid.uuid4().hex, uuid.uuid4().hex
        handler = worker = redis_proc = None
        try:
            redis_proc = redis_with_password(
                a.argv(find_redis_server(), "-", "--port", "6390", "--bind", a.address, "--save", "",
                       "--appendonly", "no", "--dir", str(tmp_path)),
                password,
            )  # fmt: skip
            redis_url = f"redis://:{password}@{a.address}:6390/0"
            handler = subprocess.Popen(
                a.argv(PY, "-m", "handler", "--host", a.address, "--port", "0", "--allow", "*"),
                env={**base, "CCX_HANDLER_TOKEN": token}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL, cwd=ROOT,
            )  # fmt: skip
            handler_url = first_line(handler).split(" listening on ", 1)[1].split()[0]
            worker_log = (tmp_path / "worker.log").open("wb")
            worker = subprocess.Popen(
                b.argv(PY, "-m", "runner.cli", "worker"),
                env={**base, "CCX_REDIS_URL": redis_url, "CCX_HANDLER_URL": handler_url, "CCX_HANDLER_TOKEN": token,
                     "CCX_ALLOW_INSECURE": "1", "CCX_QUEUE": "remote", "CCX_WORKER_LOCK_TTL": "3"},
                stdout=subprocess.PIPE, stderr=worker_log, stdin=subprocess.DEVNULL, cwd=ROOT,
            )  # fmt: skip
            worker_log.close()
            assert "serving queue 'remote'" in first_line(worker, 60)
            tasks = [[PY, "-c", TICKER, "60", "0.25"], ["echo", "next ran"]]
            submitter = subprocess.Popen(
                a.argv(PY, "-c", SUBMIT_AND_WAIT, redis_url, "remote", orjson.dumps(tasks).decode(), "150"),
                env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
            )  # fmt: skip
            first_line(submitter, 60)  # the ids: both submitted
            wait_until(lambda: "tick 3" in _ticks_so_far(a, redis_url), 60, what="the task to print")
            net.unplug(b)
            time.sleep(12)  # the fault itself: B is cut off for 4 x CCX_WORKER_LOCK_TTL
            net.plug(b)
            out, err = submitter.communicate(timeout=180)
            results = orjson.loads(out.splitlines()[-1])
            assert [r["success"] for r in results] == [True, True], (results, err)
            assert results[1]["output"] == "next ran\n"
            assert results[0]["output"] == "".join(f"tick {i}\n" for i in range(60))
            # The partition outlasted the lock (renewals failed for 4 x its TTL); nobody else held it meanwhile,
            # so the worker took it back (a renewal delivered late by TCP may do that silently) and never lost it.
            logged = (tmp_path / "worker.log").read_text()
            # Not an exact count, and it cannot be one: the lock thread tries every TTL/3 (1 s), and a renewal into
            # the partition fails after its socket timeout (0.75 s) or sooner with a network error, so the 12 s cut
            # holds somewhere from about 6 to 12 failures, by where it falls in the renewal cycle and by the
            # machine's load (and the worker also renews when a take finds the lock not its own). Four failures a
            # renewal interval apart span at least 3 s, the lock's TTL: the lock expired while the worker was cut off.
            assert logged.count("could not renew the worker lock") >= 4 and "lost the lock" not in logged
            assert worker.poll() is None, "the worker kept serving"
        finally:
            stop_all(worker, handler, redis_proc)


def _ticks_so_far(machine: Machine, redis_url: str) -> str:
    """The output so far of the queue's newest running task, read from inside ``machine``."""
    code = (
        "import sys, redis; from runner import keys; c = redis.Redis.from_url(sys.argv[1]); "
        "ids = c.zrevrange(keys.index_key('remote'), 0, -1); "
        "print(b''.join(f[b'e'] for i in ids for _, f in c.xrange(keys.log_key(i.decode()))).decode())"
    )
    done = subprocess.run(machine.argv(PY, "-c", code, redis_url), capture_output=True, text=True, timeout=30, cwd=ROOT)
    return done.stdout


@pytest.mark.timeout(120)
def test_a_worker_sigkilled_mid_task_is_replaced_and_serves_within_seconds_at_the_default_ttl(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    """Default lock TTL (30 s): the worker is SIGKILLed mid-task and started again at once. Its lock and its run's
    lease name a process that is gone from this host, so the new worker waits out neither: the interrupted task
    runs again and ends within seconds, not after the lease's 30 s."""
    from tests.runner.test_worker import ONCE, start_worker, stop

    with LocalStack(redis_url=redis_url, queue=queue_name, env={}) as stack:
        runner = Runner(redis_url=redis_url, queue=queue_name)
        token = uuid.uuid4().hex
        handle = runner.submit(agent="command", argv=[PY, "-c", ONCE, str(tmp_path / "flag"), token])
        log = keys.log_key(handle.id)
        wait_until(lambda: any(b"before-kill" in f[b"e"] for _, f in runner.redis.xrange(log)), 30, what="output")
        assert stack.worker is not None
        os.kill(stack.worker.pid, signal.SIGKILL)
        stack.worker.wait(10)
        wait_until(lambda: not pids_with_marker(token), 20, what="the task's process to be gone")
        began = time.monotonic()
        replacement = start_worker(stack)
        try:
            result = handle.result(timeout=60)
            assert (result.success, result.output) == (True, "second attempt\n")
            assert time.monotonic() - began < 10, "the new worker waited out the dead run's lease"
        finally:
            stop(replacement)
