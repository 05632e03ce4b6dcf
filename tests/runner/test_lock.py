"""What stops two agents of one queue at once: the lock, its fencing token, the run lease (runner/lock.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from runner import events
from runner.client import Runner
from runner.lock import QueueLock, WorkerLocked, holder_is_dead_here
from runner.stack import LocalStack
from tests.runner.test_worker import start_worker, stop
from tests.support.processes import wait_until

PY = sys.executable


def test_each_acquisition_gets_a_higher_fencing_token_and_a_second_holder_is_refused(
    redis_client: redis.Redis, queue_name: str
) -> None:
    first = QueueLock(redis_client, queue_name, 5)
    first.owner = f"{socket.gethostname()}:{os.getppid()}:first"  # another live process of this host
    first.acquire()
    try:
        second = QueueLock(redis_client, queue_name, 5)
        with pytest.raises(WorkerLocked, match="already serves queue"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    try:
        assert second.fence == first.fence + 1
        assert redis_client.get(events.fence_key(queue_name)) == str(second.fence).encode()
    finally:
        second.release()


def test_a_lock_that_expired_while_cut_off_is_taken_back_unless_someone_else_took_it(
    redis_client: redis.Redis, queue_name: str
) -> None:
    lock = QueueLock(redis_client, queue_name, 5)
    assert lock.try_acquire()
    renew = [lock.key, lock.fence_key]
    redis_client.delete(lock.key)  # what a partition longer than the TTL looks like from Redis
    assert lock._renew(keys=renew, args=[lock.owner, lock.ttl_ms, str(lock.fence)]) == 2
    assert redis_client.get(lock.key) == lock.owner.encode()
    redis_client.delete(lock.key)
    other = QueueLock(redis_client, queue_name, 5)
    assert other.try_acquire() and other.fence == lock.fence + 1
    assert lock._renew(keys=renew, args=[lock.owner, lock.ttl_ms, str(lock.fence)]) == 0, "a real conflict"
    other.release()
    assert lock._renew(keys=renew, args=[lock.owner, lock.ttl_ms, str(lock.fence)]) == 0, "its fence moved on"


def test_a_dead_holder_on_this_host_is_taken_over_at_once_one_elsewhere_is_waited_out(
    redis_client: redis.Redis, queue_name: str
) -> None:
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    assert holder_is_dead_here(f"{here}:{dead.pid}:abc") and holder_is_dead_here(f"{here}:{os.getpid()}:abc")
    assert not holder_is_dead_here(f"{here}:{os.getppid()}:abc") and not holder_is_dead_here("elsewhere:1:abc")
    key = events.lock_key(queue_name)
    redis_client.set(key, f"{here}:{dead.pid}:abc", px=60_000)
    lock = QueueLock(redis_client, queue_name, 5)
    assert lock.try_acquire(), "the holder's process is gone: no need to wait for its TTL"
    lock.release()
    redis_client.set(key, "another-host:1:abc", px=60_000)
    assert not QueueLock(redis_client, queue_name, 5).try_acquire()
    redis_client.delete(key)


def test_a_standby_survives_redis_errors_while_it_waits(redis_client: redis.Redis, queue_name: str) -> None:
    lock = QueueLock(redis_client, queue_name, 5)
    calls = {"n": 0}
    real = lock.try_acquire

    def flaky() -> bool:
        calls["n"] += 1
        if calls["n"] < 3:
            raise redis.ConnectionError("Redis is restarting")
        return real()

    lock.try_acquire = flaky  # type: ignore[method-assign]
    lock.acquire(wait=True, poll=0.01)
    lock.release()
    assert calls["n"] == 3


INTERVAL = """
import os, sys, time
path, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
def note(what):
    with open(path, "a") as handle:
        handle.write(f"{name} {what} {time.time():.6f}\\n")
note("start")
time.sleep(seconds)
note("end")
print(name, "done")
"""


@pytest.mark.timeout(120)
def test_a_paused_worker_with_a_standby_never_lets_two_runs_overlap_and_its_real_result_is_kept(
    redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    """SIGSTOP on the worker for longer than its lock's TTL, a standby waiting, a handler allowing two runs:
    the standby takes the queue but waits for the paused worker's run (its lease is alive), whose real result
    is recorded; the next task starts after it ends; the paused worker, resumed, stops with a sentence."""
    intervals = tmp_path / "intervals"
    with LocalStack(
        redis_url=redis_url,
        queue=queue_name,
        env={"CCX_WORKER_LOCK_TTL": "2"},
        handler_args=("--max-concurrent", "2"),
    ) as stack:
        runner = Runner(redis_url=redis_url, queue=queue_name)
        first = runner.submit(agent="command", argv=[PY, "-c", INTERVAL, str(intervals), "first", "6"])
        second = runner.submit(agent="command", argv=[PY, "-c", INTERVAL, str(intervals), "second", "0.5"])
        wait_until(lambda: intervals.exists(), 30, what="the first task to start")
        standby = start_worker(stack, "--standby")
        assert stack.worker is not None
        paused = stack.worker
        os.kill(paused.pid, signal.SIGSTOP)
        try:
            holder = f":{standby.pid}:"
            wait_until(
                lambda: holder in (runner.redis.get(events.lock_key(queue_name)) or b"").decode(),
                20,
                what="the standby to take the queue",
            )
            one = first.result(timeout=60)
            assert (one.success, one.output) == (True, "first done\n"), one.error
            assert second.result(timeout=60).output == "second done\n"
        finally:
            os.kill(paused.pid, signal.SIGCONT)
        assert paused.wait(30) == 3
        stop(standby)
    lines = [line.split() for line in intervals.read_text().splitlines()]
    times = {(name, what): float(at) for name, what, at in lines}
    assert times[("first", "end")] <= times[("second", "start")], lines


@pytest.mark.timeout(60)
def test_a_worker_sigkilled_and_started_again_at_once_serves_within_5_s(redis_url: str, queue_name: str) -> None:
    """The lock's TTL is 30 s here: serving within 5 s means the dead holder was recognised, not waited out."""
    with LocalStack(redis_url=redis_url, queue=queue_name, env={"CCX_WORKER_LOCK_TTL": "30"}) as stack:
        runner = Runner(redis_url=redis_url, queue=queue_name)
        assert runner.submit(agent="command", argv=["true"]).result(timeout=30).success
        assert stack.worker is not None
        os.kill(stack.worker.pid, signal.SIGKILL)
        stack.worker.wait(10)
        began = time.monotonic()
        again = start_worker(stack)
        try:
            result = runner.submit(agent="command", argv=["echo", "served"]).result(timeout=30)
            took = time.monotonic() - began
            assert result.output == "served\n"
            assert took < 5, f"the restarted worker served after {took:.1f} s"
            assert again.poll() is None
        finally:
            stop(again)
