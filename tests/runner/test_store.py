"""The task record's state changes (runner/store.py), each one atomic Lua call, against the session's real Redis.

For every change: what it does when it is allowed (the record's exact fields, the lease, the log and the two
channels), and that a refused one changes nothing at all. Driven through TaskStore's methods only, so the tests
hold whatever the scripts' arguments look like.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis
from rq.registry import CanceledJobRegistry

from runner import clock, keys, queue_state
from runner.spec import TaskResult, TaskSpec
from runner.store import Started, TaskStore, lifecycle
from runner.vocabulary import END_STATUSES, PauseKind, Status

pytestmark = pytest.mark.timeout(60)

SPEC = TaskSpec(agent="command", argv=["make", "test"])
SUBMITTED = "2026-12-03T10:00:00.000Z"
LOG_TTL = 600
IDEMPOTENCY_TTL = 120
LEASE_MS = 30_000


@pytest.fixture
def store(redis_client: redis.Redis) -> TaskStore:
    return TaskStore(redis_client, log_maxlen=1000, log_ttl=LOG_TTL, idempotency_ttl=IDEMPOTENCY_TTL)


def submit(store: TaskStore, queue: str, status: str = Status.QUEUED, key: str | None = None) -> str:
    """A task's record as Runner.submit writes it (without its RQ job: nothing here runs it)."""
    task_id = f"task-{uuid.uuid4().hex}"
    with store.client.pipeline() as pipe:
        store.create(pipe, task_id, queue, SPEC, status, SUBMITTED, key=key, key_ttl=None if key is None else 86_400)
        pipe.execute()
    return task_id


def record(store: TaskStore, task_id: str) -> dict[str, str]:
    """Every field of the task's record, as stored."""
    return {k.decode(): v.decode() for k, v in store.client.hgetall(keys.info_key(task_id)).items()}


def logged(store: TaskStore, task_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(fields[b"e"]) for _, fields in store.client.xrange(keys.log_key(task_id))]


def created(task_id: str, queue: str, status: str = Status.QUEUED) -> dict[str, str]:
    """The fields :meth:`TaskStore.create` writes."""
    return {
        "id": task_id,
        "queue": queue,
        "status": status,
        "spec": orjson.dumps(SPEC.to_dict()).decode(),
        "submitted_at": SUBMITTED,
    }


def a_moment_ago(iso_time: str, before: float) -> bool:
    """``iso_time`` (milliseconds, truncated) was taken between ``before`` and now."""
    return before - 0.001 <= clock.epoch(iso_time) <= time.time()


class Channels:
    """What the task's channel and the lifecycle channel carry about one task while an action runs."""

    def __init__(self, client: redis.Redis, task_id: str) -> None:
        self.client, self.task_id = client, task_id
        self.pubsub = client.pubsub()
        self.names = (keys.task_channel(task_id), keys.LIFECYCLE_CHANNEL)
        self.pubsub.subscribe(*self.names)
        self._collect(lambda message: message["type"] == "subscribe", len(self.names))

    def _collect(self, is_last: Callable[[dict[str, Any]], bool], count: int) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while count:
            assert time.monotonic() < deadline, f"timed out waiting on {self.names}; got {seen}"
            message = self.pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            if is_last(message):
                count -= 1
            else:
                seen.append(message)
        return seen

    def during(self, action: Callable[[], Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Run ``action``; return what it published on (the task's channel, the lifecycle channel).

        A marker published on both channels after it returns ends the wait: Redis delivers messages in the order
        they were published, so whatever the action published has arrived before the markers.
        """
        marker = f"marker-{uuid.uuid4().hex}".encode()
        action()
        for name in self.names:
            self.client.publish(name, marker)
        messages = self._collect(lambda message: message["data"] == marker, len(self.names))
        events_by_channel: dict[str, list[dict[str, Any]]] = {name: [] for name in self.names}
        for message in messages:
            event = orjson.loads(message["data"])
            if event.get("task_id") == self.task_id:  # the lifecycle channel is every task's
                events_by_channel[message["channel"].decode()].append(event)
        return events_by_channel[self.names[0]], events_by_channel[self.names[1]]

    def close(self) -> None:
        self.pubsub.close()


@pytest.fixture
def channels(redis_client: redis.Redis) -> Iterator[Callable[[str], Channels]]:
    opened: list[Channels] = []

    def open_for(task_id: str) -> Channels:
        opened.append(Channels(redis_client, task_id))
        return opened[-1]

    yield open_for
    for each in opened:
        each.close()


def running(store: TaskStore, queue: str, run: str = "1:run-a") -> str:
    task_id = submit(store, queue)
    assert store.start(task_id, queue, run, None, LEASE_MS) == Started(1)
    return task_id


def ended(store: TaskStore, queue: str) -> str:
    task_id = running(store, queue)
    assert store.finalize(TaskResult(id=task_id, success=True, output="done\n"), queue, "1:run-a")
    return task_id


# --------------------------------------------------------------------------- start


def test_start_takes_a_queued_task_to_running_with_its_run_and_lease(
    store: TaskStore, queue_name: str, channels: Callable[[str], Channels]
) -> None:
    task_id = submit(store, queue_name)
    store.client.set(keys.fence_key(queue_name), 5)
    watch = channels(task_id)
    before = time.time()
    started: list[Started] = []
    on_task, on_lifecycle = watch.during(lambda: started.append(store.start(task_id, queue_name, "5:w", 5, LEASE_MS)))
    assert started == [Started(1, [], None)]
    fields = record(store, task_id)
    assert a_moment_ago(fields["started_at"], before)
    assert fields == {
        **created(task_id, queue_name),
        "status": "running",
        "started_at": fields["started_at"],
        "run": "5:w",
    }
    assert store.client.get(keys.lease_key(task_id)) == b"5:w"
    assert 0 < store.client.pttl(keys.lease_key(task_id)) <= LEASE_MS
    started_event = {"type": "started", "task_id": task_id, "at": fields["started_at"]}
    assert logged(store, task_id) == [started_event]
    assert on_task == [started_event]
    assert on_lifecycle == [{"type": "running", "task_id": task_id, "queue": queue_name, "at": fields["started_at"]}]


@pytest.mark.parametrize(
    ("queue_fence", "ours"),
    [
        pytest.param(None, 3, id="fence-gone-redis-lost-its-data"),
        pytest.param(2, 3, id="fence-lower-than-ours-redis-went-back"),
        pytest.param(9, None, id="unfenced-start-ignores-the-fence"),
    ],
)
def test_start_is_allowed_when_no_newer_worker_took_the_queue(
    store: TaskStore, queue_name: str, queue_fence: int | None, ours: int | None
) -> None:
    task_id = submit(store, queue_name)
    if queue_fence is not None:
        store.client.set(keys.fence_key(queue_name), queue_fence)
    assert store.start(task_id, queue_name, "run-b", ours, LEASE_MS) == Started(1, [], None)
    fields = record(store, task_id)
    assert fields == {
        **created(task_id, queue_name),
        "status": "running",
        "started_at": fields["started_at"],
        "run": "run-b",
    }
    assert store.client.get(keys.lease_key(task_id)) == b"run-b"


def test_start_with_a_stale_fencing_token_changes_nothing(
    store: TaskStore, queue_name: str, channels: Callable[[str], Channels]
) -> None:
    """A newer worker holds the queue (its token is above ours): this worker's start is refused."""
    task_id = submit(store, queue_name)
    store.client.set(keys.fence_key(queue_name), 7)
    watch = channels(task_id)
    started: list[Started] = []
    on_task, on_lifecycle = watch.during(lambda: started.append(store.start(task_id, queue_name, "6:w", 6, LEASE_MS)))
    assert started == [Started(-1)]
    assert record(store, task_id) == created(task_id, queue_name)
    assert not store.client.exists(keys.lease_key(task_id), keys.log_key(task_id))
    assert (on_task, on_lifecycle) == ([], [])


def test_start_of_an_ended_task_changes_nothing(
    store: TaskStore, queue_name: str, channels: Callable[[str], Channels]
) -> None:
    task_id = ended(store, queue_name)
    before, log = record(store, task_id), logged(store, task_id)
    watch = channels(task_id)
    started: list[Started] = []
    on_task, on_lifecycle = watch.during(
        lambda: started.append(store.start(task_id, queue_name, "2:b", None, LEASE_MS))
    )
    assert started == [Started(0)]
    assert record(store, task_id) == before and before["status"] == "finished"
    assert logged(store, task_id) == log
    assert not store.client.exists(keys.lease_key(task_id))
    assert (on_task, on_lifecycle) == ([], [])


def test_start_hands_over_the_earlier_attempts_and_the_session_to_continue_once(
    store: TaskStore, queue_name: str
) -> None:
    """The next attempt after a usage limit gets the attempts so far and the session to go on with; the session is
    taken by that start (a later start begins afresh unless a new one is set)."""
    task_id = running(store, queue_name, "1:a")
    attempts = [{"started_at": "s", "ended_at": "e", "error": "usage limit", "kind": PauseKind.USAGE_LIMIT}]
    assert store.interrupt(task_id, queue_name, "1:a", attempts)
    store.continue_session(task_id, "session-with-progress")
    assert store.start(task_id, queue_name, "1:b", None, LEASE_MS) == Started(1, attempts, "session-with-progress")
    fields = record(store, task_id)
    assert fields == {
        **created(task_id, queue_name),
        "status": "running",
        "started_at": fields["started_at"],
        "run": "1:b",
        "attempts": orjson.dumps(attempts).decode(),
    }
    assert store.interrupt(task_id, queue_name, "1:b", attempts * 2)
    assert store.start(task_id, queue_name, "1:c", None, LEASE_MS) == Started(1, attempts * 2, None)


def test_start_of_a_running_task_makes_the_new_run_current(store: TaskStore, queue_name: str) -> None:
    """A task started again (its worker died and the job went back to the line) belongs to the newest run: the
    record and the lease name it, and the old run can no longer end or interrupt it."""
    task_id = running(store, queue_name, "1:old")
    assert store.start(task_id, queue_name, "2:new", None, LEASE_MS) == Started(1, [], None)
    assert record(store, task_id)["run"] == "2:new"
    assert store.client.get(keys.lease_key(task_id)) == b"2:new"
    assert not store.finalize(TaskResult(id=task_id, error="late"), queue_name, "1:old")
    assert not store.interrupt(task_id, queue_name, "1:old", [{"error": "late"}])
    assert record(store, task_id)["status"] == "running"


# --------------------------------------------------------------------------- interrupt


ATTEMPT = {"started_at": "2026-12-03T10:00:01.000Z", "ended_at": "2026-12-03T10:00:09.000Z", "error": "handler died"}


@pytest.mark.parametrize("run", ["1:a", ""], ids=["its-own-run", "any-run"])
def test_interrupt_puts_a_running_task_back_to_queued_with_its_attempts(
    store: TaskStore, queue_name: str, channels: Callable[[str], Channels], run: str
) -> None:
    task_id = running(store, queue_name, "1:a")
    started_at = record(store, task_id)["started_at"]
    watch = channels(task_id)
    outcome: list[bool] = []
    on_task, on_lifecycle = watch.during(
        lambda: outcome.append(store.interrupt(task_id, queue_name, run, [ATTEMPT, ATTEMPT]))
    )
    assert outcome == [True]
    assert record(store, task_id) == {
        **created(task_id, queue_name),
        "status": "queued",
        "started_at": started_at,
        "attempts": orjson.dumps([ATTEMPT, ATTEMPT]).decode(),
    }  # no "run": none is current until the next start
    assert not store.client.exists(keys.lease_key(task_id))
    assert store.attempts(task_id) == [ATTEMPT, ATTEMPT]
    interrupted = {"type": "interrupted", "task_id": task_id, "attempt": 2, **ATTEMPT}
    assert logged(store, task_id)[1:] == [interrupted]
    assert on_task == [interrupted]
    assert on_lifecycle == [
        {
            "type": "queued",
            "task_id": task_id,
            "queue": queue_name,
            "at": ATTEMPT["ended_at"],
            "interrupted": "handler died",
        }
    ]


def test_interrupt_by_a_run_that_is_not_current_changes_nothing(
    store: TaskStore, queue_name: str, channels: Callable[[str], Channels]
) -> None:
    task_id = running(store, queue_name, "2:b")
    before, log = record(store, task_id), logged(store, task_id)
    watch = channels(task_id)
    outcome: list[bool] = []
    on_task, on_lifecycle = watch.during(lambda: outcome.append(store.interrupt(task_id, queue_name, "1:a", [ATTEMPT])))
    assert outcome == [False]
    assert record(store, task_id) == before and before["status"] == "running"
    assert logged(store, task_id) == log
    assert store.client.get(keys.lease_key(task_id)) == b"2:b"
    assert (on_task, on_lifecycle) == ([], [])


@pytest.mark.parametrize("run", ["1:a", ""], ids=["its-own-run", "any-run"])
def test_interrupt_of_an_ended_task_changes_nothing(store: TaskStore, queue_name: str, run: str) -> None:
    task_id = ended(store, queue_name)
    before, log = record(store, task_id), logged(store, task_id)
    assert not store.interrupt(task_id, queue_name, run, [ATTEMPT])
    assert record(store, task_id) == before and before["status"] == "finished"
    assert logged(store, task_id) == log


# --------------------------------------------------------------------------- released


@pytest.mark.parametrize("status", [Status.DEFERRED, Status.SCHEDULED])
def test_release_queues_a_deferred_or_scheduled_task(
    store: TaskStore, queue_name: str, channels: Callable[[str], Channels], status: str
) -> None:
    task_id = submit(store, queue_name, status)
    watch = channels(task_id)
    outcome: list[bool] = []
    before = time.time()
    on_task, on_lifecycle = watch.during(lambda: outcome.append(store.released(task_id, queue_name)))
    assert outcome == [True]
    assert record(store, task_id) == created(task_id, queue_name, Status.QUEUED)
    assert on_task == []  # a release is no event of the task's own log
    assert [{k: v for k, v in event.items() if k != "at"} for event in on_lifecycle] == [
        {"type": "queued", "task_id": task_id, "queue": queue_name}
    ]
    assert a_moment_ago(on_lifecycle[0]["at"], before)
    assert not store.client.exists(keys.log_key(task_id))


@pytest.mark.parametrize("status", [Status.QUEUED, Status.RUNNING, *END_STATUSES])
def test_release_of_a_task_neither_deferred_nor_scheduled_changes_nothing(
    store: TaskStore, queue_name: str, channels: Callable[[str], Channels], status: str
) -> None:
    """Twice released (the predecessor's end and the recovery both release it), or released after it ran or was
    cancelled: the record keeps its status."""
    task_id = submit(store, queue_name, status)
    watch = channels(task_id)
    outcome: list[bool] = []
    on_task, on_lifecycle = watch.during(lambda: outcome.append(store.released(task_id, queue_name)))
    assert outcome == [False]
    assert record(store, task_id) == created(task_id, queue_name, status)
    assert (on_task, on_lifecycle) == ([], [])


def test_release_of_a_task_with_no_record_creates_none(store: TaskStore, queue_name: str) -> None:
    assert not store.released("no-such-task", queue_name)
    assert not store.client.exists(keys.info_key("no-such-task"))


# --------------------------------------------------------------------------- finalize


def result_of(task_id: str, **fields: Any) -> TaskResult:
    return TaskResult(
        id=task_id,
        **{"success": True, "exit_code": 0, "output": "done\n", "duration_ms": 1250.0,
           "started_at": "2026-12-03T10:00:01.000Z", "ended_at": "2026-12-03T10:00:02.250Z", **fields},
    )  # fmt: skip


def test_finalize_ends_a_running_task_once_with_everything_its_end_owes(
    store: TaskStore, queue_name: str, channels: Callable[[str], Channels]
) -> None:
    task_id = running(store, queue_name, "1:a")
    before = record(store, task_id)
    result = result_of(task_id, agent={"total_cost_usd": 0.25})
    watch = channels(task_id)
    outcome: list[bool] = []
    on_task, on_lifecycle = watch.during(lambda: outcome.append(store.finalize(result, queue_name, "1:a")))
    assert outcome == [True]
    assert result.log_key == keys.log_key(task_id)
    stored = result.to_dict()
    fields = record(store, task_id)
    assert fields == {
        **before,
        "status": "finished",
        "result": orjson.dumps(stored).decode(),
        "ended_at": result.ended_at,
    }
    got = store.get(task_id)
    assert got is not None and (got.status, got.ended_at, got.result) == ("finished", result.ended_at, result)
    assert not store.client.exists(keys.lease_key(task_id))
    assert [f for _, f in store.client.xrange(keys.done_key(task_id))] == [{b"status": b"finished"}]
    result_event = {"type": "result", "task_id": task_id, "result": stored}
    assert logged(store, task_id)[1:] == [result_event]
    assert on_task == [result_event]
    assert on_lifecycle == [
        {"type": "finished", "task_id": task_id, "queue": queue_name, "at": result.ended_at, "success": True,
         "duration_ms": 1250.0, "cost_usd": 0.25}
    ]  # fmt: skip
    costs = store.client.hgetall(keys.costs_key(queue_name))
    assert {k.decode(): float(v) for k, v in costs.items()} == {queue_state.TOTAL: 0.25, queue_state.day_field(): 0.25}
    for key in (keys.info_key(task_id), keys.log_key(task_id), keys.done_key(task_id)):
        assert LOG_TTL - 5 < store.client.ttl(key) <= LOG_TTL, f"{key} expires with the task"
    expiry = store.client.zscore(keys.index_expiry_key(queue_name), task_id)
    assert expiry is not None and time.time() + LOG_TTL - 5 < expiry <= time.time() + LOG_TTL


@pytest.mark.parametrize(
    ("result_fields", "status"),
    [
        pytest.param({"success": False, "exit_code": 2, "error": "exited with code 2"}, "failed", id="failed"),
        pytest.param({"success": False, "exit_code": None, "cancelled": True, "error": "cancelled by alice"},
                     "cancelled", id="cancelled"),
    ],
)  # fmt: skip
def test_finalize_records_a_failed_or_cancelled_end(
    store: TaskStore, queue_name: str, result_fields: dict[str, Any], status: str
) -> None:
    task_id = running(store, queue_name)
    before = record(store, task_id)
    result = result_of(task_id, **result_fields)
    assert store.finalize(result, queue_name, "1:run-a")
    assert record(store, task_id) == {
        **before,
        "status": status,
        "result": orjson.dumps(result.to_dict()).decode(),
        "ended_at": result.ended_at,
    }
    assert [f for _, f in store.client.xrange(keys.done_key(task_id))] == [{b"status": status.encode()}]


def test_finalize_of_a_queued_task_by_any_run_ends_it(store: TaskStore, queue_name: str) -> None:
    """A cancel of a task that never started ends it with no run to name."""
    task_id = submit(store, queue_name)
    result = TaskResult(id=task_id, cancelled=True, error="cancelled", ended_at="2026-12-03T10:00:05.000Z")
    assert store.finalize(result, queue_name)
    assert record(store, task_id) == {
        **created(task_id, queue_name),
        "status": "cancelled",
        "result": orjson.dumps(result.to_dict()).decode(),
        "ended_at": "2026-12-03T10:00:05.000Z",
    }


def test_finalize_of_an_ended_task_changes_nothing(
    store: TaskStore, queue_name: str, channels: Callable[[str], Channels]
) -> None:
    """Whoever ends the task first wins: a cancel, a recovery or a late work-horse coming second changes nothing,
    counts no cost twice and wakes no waiter twice."""
    task_id = running(store, queue_name, "1:a")
    assert store.finalize(result_of(task_id, agent={"total_cost_usd": 0.5}), queue_name, "1:a")
    before, log = record(store, task_id), logged(store, task_id)
    costs = store.client.hgetall(keys.costs_key(queue_name))
    watch = channels(task_id)
    outcomes: list[bool] = []
    late = TaskResult(id=task_id, cancelled=True, error="cancelled", agent={"total_cost_usd": 0.5})
    on_task, on_lifecycle = watch.during(
        lambda: outcomes.extend([store.finalize(late, queue_name, "1:a"), store.finalize(late, queue_name)])
    )
    assert outcomes == [False, False]
    assert record(store, task_id) == before and before["status"] == "finished"
    assert logged(store, task_id) == log
    assert store.client.hgetall(keys.costs_key(queue_name)) == costs
    assert store.client.xlen(keys.done_key(task_id)) == 1
    assert (on_task, on_lifecycle) == ([], [])


def test_finalize_by_a_run_that_is_not_current_changes_nothing(
    store: TaskStore, queue_name: str, channels: Callable[[str], Channels]
) -> None:
    """A work-horse whose worker lost the queue cannot overwrite the outcome of the run started after it."""
    task_id = running(store, queue_name, "2:new")
    before = record(store, task_id)
    watch = channels(task_id)
    outcome: list[bool] = []
    stale = result_of(task_id, agent={"total_cost_usd": 0.5})
    on_task, on_lifecycle = watch.during(lambda: outcome.append(store.finalize(stale, queue_name, "1:old")))
    assert outcome == [False]
    assert record(store, task_id) == before and before["status"] == "running"
    assert store.client.get(keys.lease_key(task_id)) == b"2:new"
    assert not store.client.exists(keys.done_key(task_id), keys.costs_key(queue_name))
    assert store.client.ttl(keys.info_key(task_id)) == -1, "a running task's record does not expire"
    assert (on_task, on_lifecycle) == ([], [])


@pytest.mark.parametrize("cost", [None, 0, -1.0, True, "0.5"], ids=["none", "zero", "negative", "bool", "text"])
def test_finalize_counts_only_a_positive_number_as_a_cost(store: TaskStore, queue_name: str, cost: Any) -> None:
    task_id = running(store, queue_name)
    agent = {} if cost is None else {"total_cost_usd": cost}
    assert store.finalize(result_of(task_id, agent=agent), queue_name, "1:run-a")
    assert store.client.hgetall(keys.costs_key(queue_name)) == {}


def test_finalize_shortens_the_idempotency_key_to_the_window(store: TaskStore, queue_name: str) -> None:
    """While the task may still run its key is held long; from its end, for the idempotency window only."""
    task_id = submit(store, queue_name, key="nightly")
    key = keys.idempotency_key(queue_name, "nightly")
    assert 86_400 - 5 < store.client.ttl(key) <= 86_400
    assert store.start(task_id, queue_name, "1:a", None, LEASE_MS).code == 1
    assert store.finalize(result_of(task_id), queue_name, "1:a")
    assert store.client.get(key) == task_id.encode()
    assert IDEMPOTENCY_TTL - 5 < store.client.ttl(key) <= IDEMPOTENCY_TTL
    assert record(store, task_id)["idempotency_key"] == "nightly"


def test_finalize_trims_the_index_and_rqs_canceled_registry_of_what_has_expired(
    store: TaskStore, queue_name: str
) -> None:
    """Tasks whose record has expired leave the queue's index with the next end; so do RQ's canceled entries."""
    now = time.time()
    index, expiry = keys.index_key(queue_name), keys.index_expiry_key(queue_name)
    canceled = CanceledJobRegistry(queue_name, store.client).key
    store.client.zadd(index, {"expired-task": now - 100, "live-task": now - 50})
    store.client.zadd(expiry, {"expired-task": now - 1, "live-task": now + 1000})
    store.client.zadd(canceled, {"old-job": now - 1, "new-job": now + 1000})
    task_id = running(store, queue_name)
    assert store.finalize(result_of(task_id), queue_name, "1:run-a")
    assert {m.decode() for m in store.client.zrange(index, 0, -1)} == {"live-task", task_id}
    assert {m.decode() for m in store.client.zrange(expiry, 0, -1)} == {"live-task", task_id}
    assert store.client.zrange(canceled, 0, -1) == [b"new-job"]


def test_an_ended_task_keeps_its_run_and_attempts_and_goes_nowhere_else(store: TaskStore, queue_name: str) -> None:
    """The whole life through the store: queued, running, back to queued, running again, finished; after the end
    neither a start, an interrupt, a release nor another end moves it."""
    task_id = running(store, queue_name, "1:a")
    assert store.interrupt(task_id, queue_name, "1:a", [ATTEMPT])
    assert store.start(task_id, queue_name, "1:b", None, LEASE_MS) == Started(1, [ATTEMPT], None)
    result = result_of(task_id)
    assert store.finalize(result, queue_name, "1:b")
    final = record(store, task_id)
    assert final == {
        **created(task_id, queue_name),
        "status": "finished",
        "started_at": final["started_at"],
        "run": "1:b",
        "attempts": orjson.dumps([ATTEMPT]).decode(),
        "result": orjson.dumps(result.to_dict()).decode(),
        "ended_at": result.ended_at,
    }
    assert store.start(task_id, queue_name, "1:c", None, LEASE_MS) == Started(0)
    assert not store.interrupt(task_id, queue_name, "", [ATTEMPT])
    assert not store.released(task_id, queue_name)
    assert not store.finalize(result_of(task_id, success=False), queue_name)
    assert record(store, task_id) == final


def test_lifecycle_events_leave_out_what_is_not_known() -> None:
    assert orjson.loads(lifecycle("failed", "t", "q", at=None, error="boom", cost_usd=None)) == {
        "type": "failed",
        "task_id": "t",
        "queue": "q",
        "error": "boom",
    }
