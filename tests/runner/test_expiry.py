"""Nothing is kept forever: every key of a task, ours or RQ's, expires with the task (CCX_LOG_TTL).

The big test runs a hundred mixed tasks through the real stack and then looks at every key of that queue
and of those tasks in Redis. Per-queue keys that are meant to stay are named, with why; the per-queue
sorted sets that list tasks must not list ended tasks forever either (their entries expire or are trimmed).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import redis
from rq.job import Job
from rq.registry import CanceledJobRegistry
from rq.serializers import JSONSerializer

from runner import keys
from runner.client import Runner, TaskHandle
from runner.config import Settings
from runner.vocabulary import CancelOutcome, Status
from tests.support.processes import wait_until

PY = sys.executable
SLACK = 120
"""Seconds allowed between a score written as "now + TTL" and this test's clock."""


def permanent_keys(queue: str) -> dict[str, str]:
    """Per-queue keys that have no TTL on purpose (one each per queue, never per task), and why."""
    return {
        keys.fence_key(queue): "the fencing token only ever grows: a reset would let a stale worker's run count",
        keys.metrics_key(queue): "Prometheus counters: they must never go back",
        keys.costs_key(queue): "the queue's spend (total, per day): what the budget is checked against",
        keys.queue_state_key(queue): "the queue's pause and budget, set by a person or a limit",
        keys.webhook_config_key(queue): "the queue's webhook settings",
        keys.schedules_key(queue): "the queue's recurring tasks",
        keys.index_key(queue): "the queue's task index: a task leaves it as its record expires",
        keys.index_expiry_key(queue): "when the index's ended tasks expire: each leaves it then",
        f"rq:queue:{queue}": "RQ's queue itself (a list; empty when idle)",
        f"rq:finished:{queue}": "RQ's registry: each entry's score is its expiry",
        f"rq:failed:{queue}": "RQ's registry: each entry's score is its expiry",
        f"rq:canceled:{queue}": "RQ's registry: each entry's score is its expiry",
        f"rq:deferred:{queue}": "RQ's registry of waiting dependents: an ended task leaves it",
        f"rq:scheduled:{queue}": "RQ's registry of tasks for later: an ended task leaves it",
        f"rq:wip:{queue}": "RQ's registry of running jobs: an ended task leaves it",
        f"rq:workers:{queue}": "RQ's set of the workers serving the queue: each leaves it as it stops",
        keys.scheduled_key(queue): "tasks for later: an ended task leaves it",
    }


# Registries whose scores are expiry times (RQ's convention): every entry must have a finite one.
EXPIRING_REGISTRIES = ("rq:finished:{}", "rq:failed:{}", "rq:canceled:{}", keys.index_expiry_key("{}"))


def command(runner: Runner, argv: list[str], **options: object) -> TaskHandle:
    return runner.submit(agent="command", argv=argv, **options)  # type: ignore[arg-type]


def sleeper(runner: Runner, **options: object) -> TaskHandle:
    """A task that runs until cancelled (bounded, should the cancel never come)."""
    return command(runner, [PY, "-c", "import time; time.sleep(60)"], **options)


def running(runner: Runner, handle: TaskHandle) -> Callable[[], bool]:
    return lambda: handle.status() == Status.RUNNING


def submit_mix(runner: Runner) -> tuple[list[TaskHandle], list[TaskHandle]]:
    """Ninety-five tasks behind a running gate: (all of them, the ones to cancel while they run)."""
    ok = [command(runner, ["true"]) for _ in range(24)]
    ok += [command(runner, ["true"], key=f"expiry-{n}-{time.time_ns()}") for n in range(2)]
    failed = [command(runner, ["false"]) for _ in range(20)]
    queued_cancel = [command(runner, ["true"]) for _ in range(10)]
    after = [command(runner, ["true"], after=failed[0].id) for _ in range(5)]  # cancelled when it fails
    after += [command(runner, ["true"], after=failed[1].id, after_any=True) for _ in range(5)]  # run
    after += [command(runner, ["true"], after=ok[0].id) for _ in range(5)]  # run
    after += [command(runner, ["true"], after=queued_cancel[0].id, after_any=n % 2 == 0) for n in range(5)]
    due = [command(runner, ["true"], in_=1) for _ in range(5)]
    later = [command(runner, ["true"], in_=3600) for _ in range(5)]
    to_stop = [sleeper(runner) for _ in range(3)]
    after += [command(runner, ["true"], after=to_stop[0].id, after_any=True) for _ in range(3)]
    for handle in queued_cancel + later:
        assert handle.cancel() == CancelOutcome.CANCELLED
    # Submitted after their predecessor was cancelled: cancelled at once (runner.lifecycle.settle_new_dependent).
    after += [command(runner, ["true"], after=queued_cancel[1].id, after_any=True) for _ in range(3)]
    return ok + failed + queued_cancel + after + due + later + to_stop, to_stop


def keys_of(client: redis.Redis, queue: str, ids: set[str]) -> list[str]:
    """Every key in Redis named after ``queue`` or one of the tasks ``ids``."""
    found = []
    for raw in client.scan_iter(count=1000):
        key = raw.decode()
        parts = set(key.replace("::", ":").split(":"))
        if queue in parts or parts & ids:
            found.append(key)
    return found


def problems(client: redis.Redis, queue: str, ids: set[str], ttl: int, began: float) -> list[str]:
    """What is kept forever: keys without a TTL, registry entries that never expire (or, scored with a past
    expiry, are never cleaned: RQ cleans no canceled registry), and ended tasks still listed as waiting."""
    allowed = permanent_keys(queue)
    found = [f"{key}: no TTL" for key in keys_of(client, queue, ids) if key not in allowed and client.ttl(key) == -1]
    lowest, highest = began + ttl - SLACK, time.time() + ttl + SLACK  # ended within the test, expiring a TTL on
    for template in EXPIRING_REGISTRIES:
        key = template.format(queue)
        found += [
            f"{key}: {member.decode()} expires at {score}, not a TTL after its end"
            for member, score in client.zrange(key, 0, -1, withscores=True)
            if not (math.isfinite(score) and lowest <= score <= highest)
        ]
    for key in (f"rq:deferred:{queue}", f"rq:scheduled:{queue}", f"rq:wip:{queue}", keys.scheduled_key(queue)):
        found += [f"{key}: lists ended task {m.decode()}" for m in client.zrange(key, 0, -1) if m.decode() in ids]
    found += [f"rq:queue:{queue}: lists ended task {m.decode()}" for m in client.lrange(f"rq:queue:{queue}", 0, -1)]
    return found


def test_no_key_of_a_hundred_mixed_tasks_is_kept_forever(runner: Runner) -> None:
    queue, client, began = runner.settings.queue, runner.redis, time.time()
    gate = sleeper(runner)  # holds the line while the others are submitted (and some cancelled while queued)
    wait_until(running(runner, gate), 30, what="the gate to run")
    handles, to_stop = submit_mix(runner)
    handles.append(gate)
    for handle in [gate, *to_stop]:  # each holds the line until it is cancelled while running
        wait_until(running(runner, handle), 60, what=f"task {handle.id} to run")
        assert handle.cancel() == CancelOutcome.CANCELLING
    deadline = time.monotonic() + 60
    results = {h.id: h.result(timeout=max(1.0, deadline - time.monotonic())) for h in handles}
    # After a task that failed, or was cancelled while running, once it has ended: cancelled at once.
    failed = [h for h in handles if results[h.id].exit_code == 1]
    late = [command(runner, ["true"], after=failed[-1].id) for _ in range(2)]
    late += [command(runner, ["true"], after=to_stop[-1].id, after_any=True) for _ in range(2)]
    results |= {h.id: h.result(timeout=30) for h in late}
    handles += late
    assert len(handles) == 100
    # Run: 26, the after_any ones after a failure, the ones after a success, the due ones. Cancelled: the
    # queued ones, the dependents of a failure (plain) or of a cancel (any), the later ones, the running ones.
    assert sum(r.success for r in results.values()) == 26 + 5 + 5 + 5
    assert sum(bool(r.cancelled) for r in results.values()) == 10 + 5 + 5 + 3 + 3 + 5 + 4 + 4
    # RQ files an ended job (its registries, its result stream) just after the task's end is recorded.
    wait_until(lambda: not client.zcard(f"rq:wip:{queue}"), 30, what="RQ to file the last job")
    ids = {h.id for h in handles}
    left: list[str] = []

    def nothing_kept() -> bool:
        left[:] = problems(client, queue, ids, runner.settings.log_ttl, began)
        return not left

    try:
        wait_until(nothing_kept, 10, interval=0.5, what="every key to have a TTL")
    except AssertionError:
        raise AssertionError(f"{len(left)} kept forever:\n" + "\n".join(sorted(left)[:200])) from None


def test_an_end_trims_the_index_and_rqs_canceled_registry(redis_url: str, queue_name: str) -> None:
    """An end drops from the queue's index the tasks whose record has expired (and only those: one submitted
    long ago may still be waiting), and from RQ's canceled registry the entries whose expiry has passed (RQ
    itself never cleans that registry). No worker is needed."""
    runner = Runner(settings=Settings(redis_url=redis_url, queue=queue_name, log_ttl=600))
    client, now = runner.redis, time.time()
    index, expiry = keys.index_key(queue_name), keys.index_expiry_key(queue_name)
    canceled = CanceledJobRegistry(queue_name, client, serializer=JSONSerializer)
    client.zadd(index, {"expired": now - 700, "waiting-for-a-year": now - 700})
    client.zadd(expiry, {"expired": now - 1})
    client.zadd(canceled.key, {"expired": now - 1})
    task = runner.submit(agent="command", argv=["true"])
    assert task.cancel() == CancelOutcome.CANCELLED
    assert client.zscore(index, "expired") is None and client.zscore(expiry, "expired") is None
    assert client.zscore(index, "waiting-for-a-year") is not None
    assert client.zscore(index, task.id) is not None
    for key in (expiry, canceled.key):
        assert client.zscore(key, "expired") is None
        assert abs((client.zscore(key, task.id) or 0) - (now + 600)) < 60, key
    job = Job(task.id, connection=client)
    for key in (job.key, job.dependents_key, job.dependencies_key):
        assert client.ttl(key) in (-2, *range(540, 601)), key
    assert 540 <= client.ttl(job.key) <= 600
    assert 540 <= client.ttl(keys.info_key(task.id)) <= 600
