"""A task's record in Redis (spec, status, result) and the atomic writes behind each state change.

Which change happens when is :mod:`runner.lifecycle`'s to decide; this module only makes each one atomic.

Every state change is one atomic Lua call that updates the record, appends
to the task's log and publishes on both channels, so readers never see a
status without its event. Ending a task happens at most once: whoever
finalizes first (the work-horse, a cancel, the recovery of a dead worker)
wins, and later attempts change nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from rq.job import Job
from rq.registry import CanceledJobRegistry
from rq.results import Result

from runner import clock, events, keys, queue_state
from runner.spec import TaskResult, TaskSpec
from runner.vocabulary import AttemptKind, EventType, Status

# Ends a task: sets status and fields, logs and publishes the result event, marks the task done (KEYS[5],
# a one-entry stream result waiters block on),
# drops the run lease (KEYS[6]), counts the task's cost in the queue's totals (KEYS[7], so its result is
# never seen before its cost) and sets the expiry of every key of the finished task, RQ's included (KEYS[8..11]:
# its job hash, dependents set, dependencies set and results stream), so that nothing of it is kept forever.
# It also trims, cheaply and in the same call (no round trip of its own): RQ's canceled registry (KEYS[12]),
# scored by expiry like RQ's other registries but never cleaned by RQ, and the queue's index (KEYS[13]) of
# tasks whose record has expired, as listed by their expiry (KEYS[14]; at most 100 per end, which keeps pace).
# ARGV: status, cost ('' = none), the costs hash's total and day fields, now (epoch seconds), task id,
# field/value pairs..., lifecycle event, log event, maxlen, ttl, run ('' = any run).
# With a run id, only that run (the one the record says is current) may end the task.
_FINALIZE_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'result') == 1 then return 0 end
local n = #ARGV
if ARGV[n] ~= '' and redis.call('HGET', KEYS[1], 'run') ~= ARGV[n] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
if ARGV[2] ~= '' then
  redis.call('HINCRBYFLOAT', KEYS[7], ARGV[3], ARGV[2])
  redis.call('HINCRBYFLOAT', KEYS[7], ARGV[4], ARGV[2])
end
for i = 7, n - 5, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[n - 2], '*', 'e', ARGV[n - 3])
redis.call('PUBLISH', KEYS[3], ARGV[n - 3])
redis.call('PUBLISH', KEYS[4], ARGV[n - 4])
redis.call('XADD', KEYS[5], '*', 'status', ARGV[1])
redis.call('DEL', KEYS[6])
local ttl = ARGV[n - 1]
for _, k in ipairs({1, 2, 5, 8, 9, 10, 11}) do redis.call('EXPIRE', KEYS[k], ttl) end
redis.call('ZREMRANGEBYSCORE', KEYS[12], '-inf', ARGV[5])
redis.call('ZADD', KEYS[14], tonumber(ARGV[5]) + tonumber(ttl), ARGV[6])
local gone = redis.call('ZRANGEBYSCORE', KEYS[14], '-inf', ARGV[5], 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('ZREM', KEYS[13], unpack(gone))
  redis.call('ZREM', KEYS[14], unpack(gone))
end
local key = redis.call('HGET', KEYS[1], 'idempotency_key')
if key then return key end
return 1
"""

# Starting a run. KEYS: info, log, channel, lifecycle, fence, lease.
# ARGV: started_at, lifecycle event, log event, maxlen, fencing token ('' = unfenced), run id, lease ms,
# the status running.
# Returns {1, earlier attempts JSON, session to continue} when started (the session is taken: used once),
# {0} when the task already ended, {-1} when the fencing token is stale (a newer worker serves the queue).
# Stale means a newer token was issued: a fence that is gone or lower than ours means Redis lost its data and
# nobody took the queue since (anyone who does gets a token above ours, runner/lock.py), not a rival.
_START_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'result') == 1 then return {0} end
if ARGV[5] ~= '' and tonumber(redis.call('GET', KEYS[5]) or '0') > tonumber(ARGV[5]) then return {-1} end
redis.call('HSET', KEYS[1], 'status', ARGV[8], 'started_at', ARGV[1], 'run', ARGV[6])
redis.call('SET', KEYS[6], ARGV[6], 'PX', ARGV[7])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[3])
redis.call('PUBLISH', KEYS[4], ARGV[2])
local attempts = redis.call('HGET', KEYS[1], 'attempts') or ''
local session = redis.call('HGET', KEYS[1], 'continue_session') or ''
redis.call('HDEL', KEYS[1], 'continue_session')
return {1, attempts, session}
"""

# An interrupted attempt: back to queued, the attempt recorded. KEYS: info, log, channel, lifecycle, lease.
# ARGV: run id ('' = any), attempts JSON, lifecycle event, log event, maxlen, the status queued.
_INTERRUPT_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'result') == 1 then return 0 end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'run') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[6], 'attempts', ARGV[2])
redis.call('HDEL', KEYS[1], 'run')
redis.call('DEL', KEYS[5])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[4])
redis.call('PUBLISH', KEYS[3], ARGV[4])
redis.call('PUBLISH', KEYS[4], ARGV[3])
return 1
"""


# A dependent released by its predecessor's end, or a task for later that came due: deferred/scheduled -> queued.
# KEYS: info, lifecycle. ARGV: lifecycle event, the statuses queued, deferred and scheduled.
_RELEASE_SCRIPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= ARGV[3] and status ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Started:
    code: int
    attempts: list[dict[str, Any]] = field(default_factory=list)
    """The task's earlier attempts (interrupted, or held back by a limit or a retry)."""
    continue_session: str | None = None


@dataclass
class TaskRecord:
    """What Redis knows about one task."""

    id: str
    queue: str
    status: str
    spec: TaskSpec
    submitted_at: str | None
    started_at: str | None
    ended_at: str | None
    result: TaskResult | None
    scheduled_for: str | None = None
    """For a task submitted with ``at``/``in_``: when it is due to join the line."""
    webhook: dict[str, Any] | None = None
    """How the end's webhook went (runner/webhooks/: url, status, attempts, …); None: no webhook applied."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "status": self.status,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "spec": self.spec.to_dict(),
            "result": self.result.to_dict() if self.result else None,
            "scheduled_for": self.scheduled_for,
            "webhook": self.webhook,
        }


class TaskStore:
    """Reads and changes task records; ``client`` must return bytes (no decode_responses)."""

    def __init__(
        self,
        client: redis.Redis,
        log_maxlen: int = events.DEFAULT_LOG_MAXLEN,
        log_ttl: int = events.DEFAULT_LOG_TTL,
        idempotency_ttl: int = 3600,
    ) -> None:
        self.client = client
        self.log_maxlen = log_maxlen
        self.log_ttl = log_ttl
        self.idempotency_ttl = idempotency_ttl
        self._finalize = client.register_script(_FINALIZE_SCRIPT)
        self._start = client.register_script(_START_SCRIPT)
        self._interrupt = client.register_script(_INTERRUPT_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)

    @staticmethod
    def _keys(task_id: str) -> list[str]:
        return [
            keys.info_key(task_id),
            keys.log_key(task_id),
            keys.task_channel(task_id),
            keys.LIFECYCLE_CHANNEL,
        ]

    def create(
        self,
        pipe: Any,
        task_id: str,
        queue: str,
        spec: TaskSpec,
        status: str,
        submitted_at: str,
        index_cap: int = 10_000,
        after: str | None = None,
        key: str | None = None,
        scheduled_for: float | None = None,
        key_ttl: int | None = None,
    ) -> None:
        """Queue the writes that register a new task on ``pipe`` (the caller executes it with the enqueue).

        With ``key``, the idempotency key is set to name this task (for ``key_ttl`` seconds) by the same
        transaction that writes its record: a key never names a task whose record was not written.
        """
        mapping = {
            "id": task_id,
            "queue": queue,
            "status": status,
            "spec": orjson.dumps(spec.to_dict()),
            "submitted_at": submitted_at,
        }
        if after:
            mapping["after"] = after
        if key:
            mapping["idempotency_key"] = key
            pipe.set(keys.idempotency_key(queue, key), task_id, ex=key_ttl)
        if scheduled_for is not None:
            mapping["scheduled_for"] = clock.iso(scheduled_for)
            pipe.zadd(keys.scheduled_key(queue), {task_id: scheduled_for})
        pipe.hset(keys.info_key(task_id), mapping=mapping)
        index = keys.index_key(queue)
        pipe.zadd(index, {task_id: time.time()})
        pipe.zremrangebyrank(index, 0, -index_cap - 1)
        pipe.publish(keys.LIFECYCLE_CHANNEL, lifecycle(status, task_id, queue, at=submitted_at))

    def key_holder(self, pipe: Any, queue: str, key: str) -> str | None:
        """The task an idempotency key names, or None: the key is free, or names a task with no record.

        ``pipe`` must be a transaction pipeline not yet in MULTI: the key, and the record it names, are
        WATCHed, so the caller's transaction fails (WatchError: look again) if another submit takes the key
        or writes that record first. A key naming no record was left by a submitter that died between
        claiming it and writing the task (versions before the two were one transaction), or outlived its
        record: it stands for nothing, and the next submit takes it over instead of returning a phantom id.
        """
        name = keys.idempotency_key(queue, key)
        pipe.watch(name)
        raw = pipe.get(name)
        if raw is None:
            return None
        task_id = raw.decode()
        pipe.watch(keys.info_key(task_id))
        return task_id if pipe.hexists(keys.info_key(task_id), "spec") else None

    def start(self, task_id: str, queue: str, run: str, fence: int | None, lease_ms: int) -> Started:
        """Mark the task running as ``run`` and take its run lease, if ``fence`` is still the queue's token.

        ``code`` is 1 (started), 0 (the task already ended), or -1 (a newer worker serves the queue).
        """
        at = clock.now_iso()
        started = {"type": EventType.STARTED, "task_id": task_id, "at": at}
        reply = self._start(
            keys=[*self._keys(task_id), keys.fence_key(queue), keys.lease_key(task_id)],
            args=[
                at,
                lifecycle(Status.RUNNING, task_id, queue, at=at),
                orjson.dumps(started),
                self.log_maxlen,
                "" if fence is None else str(fence),
                run,
                lease_ms,
                Status.RUNNING,
            ],
        )
        code = int(reply[0])
        if code != 1:
            return Started(code)
        attempts = orjson.loads(reply[1]) if reply[1] else []
        return Started(code, attempts, reply[2].decode() if reply[2] else None)

    def continue_session(self, task_id: str, session_id: str) -> None:
        """The task's next attempt continues this agent session (it made progress before a usage limit)."""
        self.client.hset(keys.info_key(task_id), "continue_session", session_id)

    def interrupt(self, task_id: str, queue: str, run: str, attempts: list[dict[str, Any]]) -> bool:
        """Put a task whose attempt was interrupted back to ``queued``, recording the attempts so far."""
        last = attempts[-1]
        event = {"type": AttemptKind.INTERRUPTED, "task_id": task_id, "attempt": len(attempts), **last}
        return bool(
            self._interrupt(
                keys=[*self._keys(task_id), keys.lease_key(task_id)],
                args=[
                    run,
                    orjson.dumps(attempts),
                    lifecycle(Status.QUEUED, task_id, queue, at=last.get("ended_at"), interrupted=last.get("error")),
                    orjson.dumps(event),
                    self.log_maxlen,
                    Status.QUEUED,
                ],
            )
        )

    def released(self, task_id: str, queue: str) -> bool:
        """A deferred task whose predecessor ended so that it will run: its status becomes ``queued``."""
        event = lifecycle(Status.QUEUED, task_id, queue, at=clock.now_iso())
        statuses = (Status.QUEUED, Status.DEFERRED, Status.SCHEDULED)
        return bool(self._release(keys=[keys.info_key(task_id), keys.LIFECYCLE_CHANNEL], args=[event, *statuses]))

    def attempts(self, task_id: str) -> list[dict[str, Any]]:
        raw = self.client.hget(keys.info_key(task_id), "attempts")
        return orjson.loads(raw) if raw else []

    def finalize(self, result: TaskResult, queue: str, run: str = "") -> bool:
        """Record ``result`` as the task's outcome; False when it already had one.

        With ``run``, only if that run is still the task's current one (a run whose worker lost the
        queue and whose task was started again elsewhere cannot overwrite the new run's outcome).
        """
        result.log_key = result.log_key or keys.log_key(result.id)
        payload = orjson.dumps(result.to_dict())
        at = result.ended_at or clock.now_iso()
        event = orjson.dumps({"type": EventType.RESULT, "task_id": result.id, "result": result.to_dict()})
        extra = {
            "success": result.success,
            "duration_ms": result.duration_ms,
            "error": result.error,
            "cost_usd": result.agent.get("total_cost_usd"),
        }
        cost = result.agent.get("total_cost_usd")
        counted = (
            repr(float(cost)) if isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost > 0 else ""
        )
        reply = self._finalize(
            keys=[
                *self._keys(result.id),
                keys.done_key(result.id),
                keys.lease_key(result.id),
                keys.costs_key(queue),
                *self._expiring_keys(result.id, queue),
            ],
            args=[
                result.status,
                counted,  # the task's cost, counted in the queue's totals with its end, atomically
                queue_state.TOTAL,
                queue_state.day_field(),
                repr(time.time()),  # RQ's registries are scored by this clock too (the client's)
                result.id,
                "result",
                payload,
                "ended_at",
                at,
                lifecycle(result.status, result.id, queue, at=at, **extra),
                event,
                self.log_maxlen,
                self.log_ttl,
                run,
            ],
        )
        if isinstance(reply, bytes):  # it was submitted with an idempotency key: keep it only so long now
            self.client.expire(keys.idempotency_key(queue, reply.decode()), self.idempotency_ttl)
        return bool(reply)

    def _expiring_keys(self, task_id: str, queue: str) -> list[str]:
        """KEYS[8..14] of the finalize script: RQ's keys of the task's job (named by RQ's own classes; a job
        that was never made, or is gone, is no matter: EXPIRE of a missing key does nothing), RQ's canceled
        registry of the queue, and the queue's index with its expiry times."""
        job = Job(task_id, connection=self.client)  # for its key names only: nothing is read
        return [
            job.key,
            job.dependents_key,
            job.dependencies_key,
            Result.get_key(task_id),
            CanceledJobRegistry(queue, self.client).key,
            keys.index_key(queue),
            keys.index_expiry_key(queue),
        ]

    def get(self, task_id: str) -> TaskRecord | None:
        raw = self.client.hgetall(keys.info_key(task_id))
        if not raw or b"spec" not in raw:
            return None
        data = {key.decode(): value for key, value in raw.items()}
        result = data.get("result")
        return TaskRecord(
            id=task_id,
            queue=data.get("queue", b"").decode(),
            status=data.get("status", b"").decode(),
            spec=TaskSpec(**orjson.loads(data["spec"])),
            submitted_at=_text(data.get("submitted_at")),
            started_at=_text(data.get("started_at")),
            ended_at=_text(data.get("ended_at")),
            result=TaskResult.from_dict(orjson.loads(result)) if result else None,
            scheduled_for=_text(data.get("scheduled_for")),
            webhook=orjson.loads(data["webhook"]) if data.get("webhook") else None,
        )

    def list(self, queue: str, limit: int = 50, statuses: frozenset[str] | None = None) -> list[TaskRecord]:
        """The newest ``limit`` tasks of ``queue`` (with one of ``statuses``, if given), newest first."""
        records: list[TaskRecord] = []
        start, chunk = 0, max(limit, 50) if statuses else limit
        while len(records) < limit:
            ids = self.client.zrevrange(keys.index_key(queue), start, start + chunk - 1)
            if not ids:
                break
            start += chunk
            for task_id in ids:
                record = self.get(task_id.decode())
                if record is not None and (not statuses or record.status in statuses):
                    records.append(record)
                    if len(records) == limit:
                        break
        return records


def lifecycle(status: str, task_id: str, queue: str, **extra: Any) -> bytes:
    return orjson.dumps(
        {"type": status, "task_id": task_id, "queue": queue, **{k: v for k, v in extra.items() if v is not None}}
    )


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None
