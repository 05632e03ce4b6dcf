"""Taking the line (runner/lineup.py) and RQ's hooks in the worker: a job that never started goes back in its
place, never failed; a work-horse's failure is recorded against its own run only; a frozen idle worker cannot
swallow a later task."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.exceptions import StopRequested
from rq.job import Job
from rq.serializers import JSONSerializer

from runner import clock, keys, lifecycle
from runner.client import Runner
from runner.config import Settings
from runner.lineup import Reclaimer, fenced_queue_class
from runner.lock import QueueLock
from runner.spec import TaskResult
from runner.stack import LocalStack
from runner.store import TaskStore
from runner.worker import HORSE_DIED, CcxWorker
from tests.runner.test_lock import INTERVAL
from tests.runner.test_worker import start_worker, stop
from tests.support.processes import wait_until

PY = sys.executable


@pytest.fixture
def parts(redis_url: str, queue_name: str) -> Iterator[tuple[Runner, Queue, TaskStore]]:
    """A queue nobody serves: the test plays the worker's and the horse's parts itself."""
    runner = Runner(redis_url=redis_url, queue=queue_name)
    queue = Queue(queue_name, connection=runner.redis, serializer=JSONSerializer)
    store = TaskStore(runner.redis, 1000, 3600, 3600)
    yield runner, queue, store
    runner.redis.close()


def _worker(queue: Queue, store: TaskStore, *, horse: bool, run: str) -> CcxWorker:
    worker = CcxWorker([queue], connection=queue.connection, serializer=JSONSerializer)
    worker.store = store
    worker._is_horse = horse
    worker._run = run
    return worker


def _take(client: redis.Redis, queue: Queue) -> Job:
    """What RQ's dequeue does: the job moves from the queue into its intermediate list."""
    job_id = client.lmove(queue.key, queue.intermediate_queue.key, "LEFT", "RIGHT").decode()
    return Job.fetch(job_id, connection=client, serializer=JSONSerializer)


def test_a_thawed_horse_never_fails_the_run_its_successor_started(parts: tuple[Runner, Queue, TaskStore]) -> None:
    """A worker frozen with its horse lost the queue; the standby started the task again under its own run. The
    old horse thaws and RQ calls its failure handling, in the horse and in its worker: neither touches the
    successor's run, and the successor's real result is recorded."""
    runner, queue, store = parts
    handle = runner.submit(agent="command", argv=["true"])
    job = _take(runner.redis, queue)
    assert lifecycle.start(store, handle.id, queue.name, "old-run", None, 30_000).code == 1
    abandoned = {"started_at": clock.now_iso(), "ended_at": clock.now_iso(), "error": "x", "kind": "interrupted"}
    assert lifecycle.interrupt(store, handle.id, queue.name, "old-run", [abandoned])  # the standby's recovery
    assert lifecycle.start(store, handle.id, queue.name, "successor-run", None, 30_000).code == 1

    _worker(queue, store, horse=True, run="old-run").handle_job_failure(job, queue, exc_string="TaskFailed")
    old_worker = _worker(queue, store, horse=False, run="old-run")
    old_worker.handle_work_horse_killed(job, 1, 9, None)
    old_worker.handle_job_failure(job, queue, exc_string="Work-horse terminated unexpectedly")

    record = store.get(handle.id)
    assert record is not None and (record.status, record.result) == ("running", None)
    assert runner.redis.lrange(queue.key, 0, -1) == [], "the job is not put in line a second time"
    real = TaskResult(id=handle.id, success=True, output="real\n", ended_at=clock.now_iso())
    assert lifecycle.end(store, real, queue.name, job, "successor-run")
    assert handle.result(timeout=5).output == "real\n"


def test_a_dead_horse_ends_its_own_run_as_failed(parts: tuple[Runner, Queue, TaskStore]) -> None:
    """The horse died from outside (a signal, out of memory) mid-run: its worker ends that run with a sentence."""
    runner, queue, store = parts
    handle = runner.submit(agent="command", argv=["true"])
    job = _take(runner.redis, queue)
    assert lifecycle.start(store, handle.id, queue.name, "its-run", None, 30_000).code == 1
    worker = _worker(queue, store, horse=False, run="its-run")
    worker.handle_work_horse_killed(job, 1, 9, None)
    worker.handle_job_failure(job, queue, exc_string="Work-horse terminated unexpectedly")
    result = handle.result(timeout=5)
    assert (result.success, result.error) == (False, HORSE_DIED)
    assert job.get_status(refresh=True) == "failed"


def test_a_job_stranded_before_it_started_goes_back_first_in_line_not_failed(
    parts: tuple[Runner, Queue, TaskStore],
) -> None:
    """RQ's maintenance finds a job in the intermediate list that no horse started, and calls the worker's
    failure handling ("stuck in intermediate queue"): the job goes back to the front, once, and still runs."""
    runner, queue, store = parts
    first = runner.submit(agent="command", argv=["true"])
    second = runner.submit(agent="command", argv=["true"])
    job = _take(runner.redis, queue)
    assert job.id == first.id
    worker = _worker(queue, store, horse=False, run="")
    worker.handle_job_failure(job, queue, exc_string="Job was stuck in intermediate queue.")
    worker.handle_job_failure(job, queue, exc_string="Job was stuck in intermediate queue.")
    assert [i.decode() for i in runner.redis.lrange(queue.key, 0, -1)] == [first.id, second.id]
    assert runner.redis.lrange(queue.intermediate_queue.key, 0, -1) == []
    record = store.get(first.id)
    assert record is not None and (record.status, record.result) == ("queued", None)


@pytest.mark.timeout(90)
def test_a_held_queue_leaves_nothing_in_rqs_intermediate_list(runner: Runner, tmp_path: Path) -> None:
    """The worker takes a task, finds the queue held and hands it back: it is in the queue once and nowhere
    else (RQ's maintenance would fail whatever it found left in its intermediate list), then runs once."""
    queue = Queue(runner.settings.queue, connection=runner.redis, serializer=JSONSerializer)
    runner.pause("a person holds the queue")
    handle = runner.submit(agent="command", argv=["echo", "ran"])
    worker_log = tmp_path / "worker.log"  # the `stack` fixture's
    wait_until(lambda: f"queue {queue.name} is " in worker_log.read_text(), 30, what="the worker to meet the hold")
    assert runner.redis.lrange(queue.intermediate_queue.key, 0, -1) == []
    assert [i.decode() for i in runner.redis.lrange(queue.key, 0, -1)] == [handle.id]
    runner.resume()
    assert handle.result(timeout=30).output == "ran\n"
    assert runner.redis.lrange(queue.intermediate_queue.key, 0, -1) == []


@pytest.mark.timeout(150)
def test_a_frozen_idle_worker_swallows_no_task_and_order_holds(redis_url: str, queue_name: str, tmp_path: Path) -> None:
    """At the default lock TTL: the serving worker is frozen (SIGSTOP) while idle, a standby takes the queue,
    then two tasks are submitted. The frozen worker's dequeue had ended, so it swallowed neither: the first runs
    first, each once; the frozen worker, thawed, stops without running anything."""
    intervals = tmp_path / "intervals"
    with LocalStack(redis_url=redis_url, queue=queue_name, env={}) as stack:
        runner = Runner(redis_url=redis_url, queue=queue_name)
        assert runner.submit(agent="command", argv=["true"]).result(timeout=30).success  # the worker is idle now
        standby = start_worker(stack, "--standby")
        assert stack.worker is not None
        frozen = stack.worker
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            holder = f":{standby.pid}:"
            wait_until(
                lambda: holder in (runner.redis.get(keys.lock_key(queue_name)) or b"").decode(),
                Settings().lock_ttl + 30,
                what="the standby to take the queue",
            )
            # Redis hands a pending blocking dequeue the next job even when its worker is frozen.
            first = runner.submit(agent="command", argv=[PY, "-c", INTERVAL, str(intervals), "first", "0.2"])
            second = runner.submit(agent="command", argv=[PY, "-c", INTERVAL, str(intervals), "second", "0.2"])
            assert first.result(timeout=60).output == "first done\n"
            assert second.result(timeout=60).output == "second done\n"
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        assert frozen.wait(60) == 3  # it lost the queue, and says so
        stop(standby)
    lines = [line.split() for line in intervals.read_text().splitlines()]
    assert [(name, what) for name, what, _ in lines] == [
        ("first", "start"),
        ("first", "end"),
        ("second", "start"),
        ("second", "end"),
    ]


def test_an_idle_holder_hands_back_a_job_stranded_across_two_looks_only(
    parts: tuple[Runner, Queue, TaskStore],
) -> None:
    """A job a frozen worker took sits in RQ's intermediate list: the holder's second look puts it back first in
    line, in its order. A job seen once (the holder's own, taken a moment ago) is left alone."""
    runner, queue, _store = parts
    first = runner.submit(agent="command", argv=["true"])
    second = runner.submit(agent="command", argv=["true"])
    _take(runner.redis, queue)
    reclaimer = Reclaimer(runner.redis, queue, every=0)
    assert reclaimer.run() == []
    assert [i.decode() for i in runner.redis.lrange(queue.intermediate_queue.key, 0, -1)] == [first.id]
    assert reclaimer.run() == [first.id]
    assert [i.decode() for i in runner.redis.lrange(queue.key, 0, -1)] == [first.id, second.id]
    assert runner.redis.lrange(queue.intermediate_queue.key, 0, -1) == []


def test_a_worker_that_lost_its_lock_unawares_takes_no_job_and_stops(
    parts: tuple[Runner, Queue, TaskStore], redis_url: str
) -> None:
    """Seed 6 of the fault campaign: a worker's lock expired during a partition and a standby took the queue; once
    the cable is back, the old worker dequeues before its lock thread finds out. Its dequeue is fenced: it takes
    nothing (so the new holder cannot run the next job first), learns it lost the queue, and stops."""
    runner, queue, store = parts
    first = runner.submit(agent="command", argv=["true"])
    second = runner.submit(agent="command", argv=["true"])
    old = QueueLock(runner.redis, queue.name, Settings().lock_ttl)
    assert old.try_acquire()
    runner.redis.delete(old.key)  # its TTL ran out while it was cut off
    successor = QueueLock(runner.redis, queue.name, Settings().lock_ttl)
    assert successor.try_acquire()
    queue_class = fenced_queue_class(old.key, old.owner)
    worker = CcxWorker(
        [queue_class(queue.name, connection=runner.redis, serializer=JSONSerializer)],
        connection=runner.redis,
        serializer=JSONSerializer,
        queue_class=queue_class,
    )
    worker.lock, worker.store = old, store
    assert not old.lost.is_set(), "its lock thread has not noticed yet"
    with pytest.raises(StopRequested):
        worker.dequeue_job_and_maintain_ttl(timeout=1)
    assert old.lost.is_set() and old.lost_to == successor.owner
    assert [i.decode() for i in runner.redis.lrange(queue.key, 0, -1)] == [first.id, second.id]
    assert runner.redis.lrange(queue.intermediate_queue.key, 0, -1) == []
    # The holder's own dequeue takes the head job, and one expired while cut off (nobody took it) is taken back.
    queue_class = fenced_queue_class(successor.key, successor.owner)
    job, _ = queue_class.dequeue_any([queue], 1, connection=runner.redis, serializer=JSONSerializer)
    assert job.id == first.id
    runner.redis.delete(successor.key)
    holder = CcxWorker([queue.name], connection=runner.redis, serializer=JSONSerializer, queue_class=queue_class)
    holder.lock = successor
    job, _ = holder.dequeue_job_and_maintain_ttl(timeout=1)
    assert job.id == second.id and runner.redis.get(successor.key) == successor.owner.encode()
    old.release()
    successor.release()
