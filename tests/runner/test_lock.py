"""What stops two agents of one queue at once: the lock, its fencing token, the run lease (runner/lock.py)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from runner import keys, lifecycle
from runner.client import Runner
from runner.errors import WorkerLocked
from runner.lock import QueueLock, holder_is_dead_here, parse_holder, process_identity
from runner.stack import LocalStack
from tests.runner.test_worker import start_worker, stop
from tests.support.processes import wait_until

PY = sys.executable


def _holder(pid: int, **where: str) -> str:
    """A holder like ours (host, boot id, PID namespace) but for ``pid``, with ``where`` changed."""
    ours = parse_holder(process_identity("abc"))
    assert ours is not None, "our own identity must parse"
    return str(ours._replace(pid=pid, **where))


def test_each_acquisition_gets_a_higher_fencing_token_and_a_second_holder_is_refused(
    redis_client: redis.Redis, queue_name: str
) -> None:
    first = QueueLock(redis_client, queue_name, 5)
    first.owner = _holder(os.getppid())  # another live process of this PID namespace
    first.acquire()
    try:
        second = QueueLock(redis_client, queue_name, 5)
        with pytest.raises(WorkerLocked, match="already serves queue"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    try:
        assert second.fence > first.fence
        assert redis_client.get(keys.fence_key(queue_name)) == str(second.fence).encode()
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
    assert other.try_acquire() and other.fence > lock.fence
    assert lock._renew(keys=renew, args=[lock.owner, lock.ttl_ms, str(lock.fence)]) == 0, "a real conflict"
    other.release()
    assert lock._renew(keys=renew, args=[lock.owner, lock.ttl_ms, str(lock.fence)]) == 0, "its fence moved on"


def _now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def test_a_token_issued_after_redis_lost_the_fence_is_larger_than_every_earlier_one(
    redis_client: redis.Redis, queue_name: str
) -> None:
    """Redis' clock in milliseconds floors the token, so a counter that vanished cannot restart below it."""
    lock = QueueLock(redis_client, queue_name, 5)
    before = _now_ms(redis_client)
    assert lock.try_acquire() and before <= lock.fence <= _now_ms(redis_client)
    earlier = lock.fence
    lock.release()
    redis_client.delete(lock.fence_key)  # what Redis restarted without persistence looks like
    wait_until(lambda: _now_ms(redis_client) > earlier, 1, interval=0.001, what="Redis' clock to move on")
    again = QueueLock(redis_client, queue_name, 5)
    assert again.try_acquire() and again.fence > earlier
    assert isinstance(again.fence, int) and redis_client.get(lock.fence_key) == str(again.fence).encode()
    again.release()
    redis_client.set(lock.fence_key, 10**15)  # a counter ahead of the clock counts on by one
    third = QueueLock(redis_client, queue_name, 5)
    assert third.try_acquire() and third.fence == 10**15 + 1
    third.release()


def test_a_holder_whose_lock_and_fence_redis_lost_takes_them_back_with_its_token(
    redis_client: redis.Redis, queue_name: str
) -> None:
    lock = QueueLock(redis_client, queue_name, 5)
    assert lock.try_acquire()
    renew = [lock.key, lock.fence_key]
    args = [lock.owner, lock.ttl_ms, str(lock.fence)]
    redis_client.delete(lock.key, lock.fence_key)  # emptied Redis: nobody took the queue since
    assert lock._renew(keys=renew, args=args) == 3
    assert redis_client.mget(renew) == [lock.owner.encode(), str(lock.fence).encode()]
    redis_client.set(lock.fence_key, 7)  # a failover to a replica that was behind: the fence went back
    assert lock._renew(keys=renew, args=args) == 3 and redis_client.get(lock.fence_key) == str(lock.fence).encode()
    assert lock._renew(keys=renew, args=args) == 1, "nothing lost: a plain renewal"
    redis_client.delete(lock.key, lock.fence_key)
    other = QueueLock(redis_client, queue_name, 5)
    assert other.try_acquire() and other.fence > lock.fence, "whoever takes the queue after a loss gets a newer token"
    assert lock._renew(keys=renew, args=args) == 0
    other.release()
    assert lock._renew(keys=renew, args=args) == 0, "a newer token was issued: lost, not a data loss"


def test_a_run_starts_under_a_fence_redis_lost_but_never_under_an_older_one(redis_url: str, queue_name: str) -> None:
    runner = Runner(redis_url=redis_url, queue=queue_name)
    first, second = (runner.submit(agent="command", argv=["true"]).id for _ in range(2))
    fence = keys.fence_key(queue_name)
    runner.redis.delete(fence)  # no token issued since Redis lost its data: the holder's still counts
    assert lifecycle.start(runner.store, first, queue_name, "1796000000000:a", 1796000000000, 5000).code == 1
    runner.redis.set(fence, 1796000000001)
    assert lifecycle.start(runner.store, second, queue_name, "1796000000000:b", 1796000000000, 5000).code == -1
    runner.redis.close()


@pytest.mark.timeout(30)
def test_the_keeper_says_once_that_redis_lost_its_data_and_keeps_the_queue(
    redis_client: redis.Redis, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    lock = QueueLock(redis_client, queue_name, 0.3)
    renewals = {"n": 0}
    real = lock._renew

    def counted(**kwargs: object) -> object:
        renewals["n"] += 1
        return real(**kwargs)

    lock._renew = counted  # type: ignore[assignment]
    lock.acquire()
    try:
        redis_client.delete(lock.key, lock.fence_key)
        wait_until(lambda: redis_client.get(lock.fence_key) == str(lock.fence).encode(), 5, what="the fence back")
        assert redis_client.get(lock.key) == lock.owner.encode()
        after = renewals["n"]
        wait_until(lambda: renewals["n"] >= after + 3, 5, what="three more renewals (none may say it again)")
        assert not lock.lost.is_set()
        said = [r.getMessage() for r in caplog.records if "Redis lost its data" in r.getMessage()]
        assert len(said) == 1 and f"fencing token {lock.fence}" in said[0], said
    finally:
        lock.release()


def test_a_holder_names_host_boot_and_pid_namespace_and_reads_back(redis_client: redis.Redis, queue_name: str) -> None:
    lock = QueueLock(redis_client, queue_name, 5)
    holder = parse_holder(lock.owner)
    assert holder is not None and str(holder) == lock.owner
    assert (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
    assert holder.pid_namespace == str(os.stat("/proc/self/ns/pid").st_ino)
    with open("/proc/sys/kernel/random/boot_id") as handle:
        assert holder.boot_id == handle.read().strip()
    assert parse_holder("vm:12:abc") is None and parse_holder("rubbish") is None
    with pytest.raises(ValueError, match="cannot contain"):
        process_identity("a:b")


def test_a_dead_holder_in_this_pid_namespace_is_taken_over_at_once_one_elsewhere_is_waited_out(
    redis_client: redis.Redis, queue_name: str
) -> None:
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    assert holder_is_dead_here(_holder(dead.pid)) and holder_is_dead_here(_holder(os.getpid()))
    assert not holder_is_dead_here(_holder(os.getppid()))
    elsewhere = {"host": "elsewhere", "boot_id": "another-boot", "pid_namespace": "4026531999"}
    for field, value in elsewhere.items():  # the pid is gone here, but it is not a pid of ours
        assert not holder_is_dead_here(_holder(dead.pid, **{field: value})), field
    key = keys.lock_key(queue_name)
    redis_client.set(key, _holder(dead.pid), px=60_000)
    lock = QueueLock(redis_client, queue_name, 5)
    assert lock.try_acquire(), "the holder's process is gone: no need to wait for its TTL"
    lock.release()
    for field, value in elsewhere.items():
        redis_client.set(key, _holder(dead.pid, **{field: value}), px=60_000)
        assert not QueueLock(redis_client, queue_name, 5).try_acquire(), field
        assert redis_client.get(key) == _holder(dead.pid, **{field: value}).encode(), field
    redis_client.delete(key)


# Pid 1 of a fresh PID namespace: makes the next pid there ``argv[1]``, then runs HOLDER as that pid.
NAMESPACE_INIT = """
import subprocess, sys
with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
    handle.write(str(int(sys.argv[1]) - 1))
sys.exit(subprocess.call([sys.executable, "-c", sys.argv[2], *sys.argv[3:]]))
"""
HOLDER = """
import os, sys, redis
from runner.lock import QueueLock
lock = QueueLock(redis.Redis.from_url(sys.argv[1]), sys.argv[2], 60)
lock.acquire()
print(os.getpid(), lock.owner, flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
lock.release()
"""


def _free_pid_here() -> int:
    """A pid no process has in this namespace (the holder will have it in its own)."""
    with open("/proc/sys/kernel/pid_max") as handle:
        top = int(handle.read()) - 1
    return random.choice([pid for pid in range(top - 2000, top) if not os.path.exists(f"/proc/{pid}")])


@pytest.mark.timeout(60)
def test_a_live_worker_in_another_pid_namespace_of_this_host_is_not_taken_over(
    redis_url: str, redis_client: redis.Redis, queue_name: str
) -> None:
    """Containers of one pod, hostNetwork pods, ``network_mode: host``: one host name, separate PID namespaces.
    The holder's pid does not exist in ours, yet the holder is alive: its lock is waited out, never deleted."""
    pid = _free_pid_here()
    unshare = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]
    holder = subprocess.Popen(
        [*unshare, PY, "-c", NAMESPACE_INIT, str(pid), HOLDER, redis_url, queue_name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline().split()
        if not line:
            pytest.skip(f"cannot make a PID namespace here: {holder.communicate(timeout=10)[1].strip()}")
        assert int(line[0]) == pid and not os.path.exists(f"/proc/{pid}"), "the holder's pid is not one of ours"
        owner = line[1]
        assert redis_client.get(keys.lock_key(queue_name)) == owner.encode()
        assert not holder_is_dead_here(owner)
        assert not QueueLock(redis_client, queue_name, 5).try_acquire(), "a live worker was taken over"
        assert redis_client.get(keys.lock_key(queue_name)) == owner.encode()
    finally:
        holder.communicate(timeout=30)
    assert holder.returncode == 0 and redis_client.get(keys.lock_key(queue_name)) is None


def test_a_holder_in_the_old_format_is_waited_out_even_when_its_pid_is_gone_here(
    redis_client: redis.Redis, queue_name: str
) -> None:
    """``host:pid:nonce`` (before PID namespaces were named) cannot say in which namespace its pid is."""
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    old = f"{socket.gethostname()}:{dead.pid}:abc"
    assert not holder_is_dead_here(old)
    redis_client.set(keys.lock_key(queue_name), old, px=60_000)
    assert not QueueLock(redis_client, queue_name, 5).try_acquire()
    assert redis_client.get(keys.lock_key(queue_name)) == old.encode()
    redis_client.delete(keys.lock_key(queue_name))


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
                lambda: holder in (runner.redis.get(keys.lock_key(queue_name)) or b"").decode(),
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
