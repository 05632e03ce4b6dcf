"""A task's record in Redis (spec, status, result) and the state changes that touch it.

Every state change is one atomic Lua call that updates the record, appends
to the task's log and publishes on both channels, so readers never see a
status without its event. Ending a task happens at most once: whoever
finalizes first (the work-horse, a cancel, the recovery of a dead worker)
wins, and later attempts change nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from runner import events
from runner.spec import TaskResult, TaskSpec

# KEYS: info, log, channel, lifecycle channel. ARGV: status, field/value pairs..., then the lifecycle event,
# the log event (or ""), maxlen. Refuses to touch a task that already has a result.
_UPDATE_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'result') == 1 then return 0 end
local n = #ARGV
redis.call('HSET', KEYS[1], 'status', ARGV[1])
for i = 2, n - 3, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[n - 1] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[n], '*', 'e', ARGV[n - 1])
  redis.call('PUBLISH', KEYS[3], ARGV[n - 1])
end
redis.call('PUBLISH', KEYS[4], ARGV[n - 2])
return 1
"""

# Like _UPDATE_SCRIPT, then marks the task done (KEYS[5], a one-entry stream result waiters block on)
# and sets the expiry of the finished task's keys. ARGV[last] = ttl.
_FINALIZE_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'result') == 1 then return 0 end
local n = #ARGV
redis.call('HSET', KEYS[1], 'status', ARGV[1])
for i = 2, n - 4, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[n - 1], '*', 'e', ARGV[n - 2])
redis.call('PUBLISH', KEYS[3], ARGV[n - 2])
redis.call('PUBLISH', KEYS[4], ARGV[n - 3])
redis.call('XADD', KEYS[5], '*', 'status', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[n])
redis.call('EXPIRE', KEYS[2], ARGV[n])
redis.call('EXPIRE', KEYS[5], ARGV[n])
return 1
"""


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
        }


class TaskStore:
    """Reads and changes task records; ``client`` must return bytes (no decode_responses)."""

    def __init__(
        self, client: redis.Redis, log_maxlen: int = events.DEFAULT_LOG_MAXLEN, log_ttl: int = events.DEFAULT_LOG_TTL
    ) -> None:
        self.client = client
        self.log_maxlen = log_maxlen
        self.log_ttl = log_ttl
        self._update = client.register_script(_UPDATE_SCRIPT)
        self._finalize = client.register_script(_FINALIZE_SCRIPT)

    @staticmethod
    def _keys(task_id: str) -> list[str]:
        return [
            events.info_key(task_id),
            events.log_key(task_id),
            events.task_channel(task_id),
            events.LIFECYCLE_CHANNEL,
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
    ) -> None:
        """Queue the writes that register a new task on ``pipe`` (the caller executes it with the enqueue)."""
        pipe.hset(
            events.info_key(task_id),
            mapping={
                "id": task_id,
                "queue": queue,
                "status": status,
                "spec": orjson.dumps(spec.to_dict()),
                "submitted_at": submitted_at,
            },
        )
        index = events.index_key(queue)
        pipe.zadd(index, {task_id: time.time()})
        pipe.zremrangebyrank(index, 0, -index_cap - 1)
        pipe.publish(events.LIFECYCLE_CHANNEL, lifecycle(status, task_id, queue, at=submitted_at))

    def mark_started(self, task_id: str, queue: str, pid: int | None = None) -> bool:
        at = events.now_iso()
        started = {"type": events.STARTED, "task_id": task_id, "at": at}
        return bool(
            self._update(
                keys=self._keys(task_id),
                args=[
                    events.RUNNING,
                    "started_at",
                    at,
                    lifecycle(events.RUNNING, task_id, queue, at=at),
                    orjson.dumps(started),
                    self.log_maxlen,
                ],
            )
        )

    def finalize(self, result: TaskResult, queue: str) -> bool:
        """Record ``result`` as the task's outcome; False when it already had one."""
        result.log_key = result.log_key or events.log_key(result.id)
        payload = orjson.dumps(result.to_dict())
        at = result.ended_at or events.now_iso()
        event = orjson.dumps({"type": events.RESULT, "task_id": result.id, "result": result.to_dict()})
        extra = {
            "success": result.success,
            "duration_ms": result.duration_ms,
            "error": result.error,
            "cost_usd": result.agent.get("total_cost_usd"),
        }
        return bool(
            self._finalize(
                keys=[*self._keys(result.id), events.done_key(result.id)],
                args=[
                    result.status,
                    "result",
                    payload,
                    "ended_at",
                    at,
                    lifecycle(result.status, result.id, queue, at=at, **extra),
                    event,
                    self.log_maxlen,
                    self.log_ttl,
                ],
            )
        )

    def get(self, task_id: str) -> TaskRecord | None:
        raw = self.client.hgetall(events.info_key(task_id))
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
        )

    def list(self, queue: str, limit: int = 50) -> list[TaskRecord]:
        """The newest ``limit`` tasks of ``queue``, newest first."""
        ids = [task_id.decode() for task_id in self.client.zrevrange(events.index_key(queue), 0, limit - 1)]
        records = []
        for task_id in ids:
            record = self.get(task_id)
            if record is not None:
                records.append(record)
        return records


def lifecycle(status: str, task_id: str, queue: str, **extra: Any) -> bytes:
    return orjson.dumps(
        {"type": status, "task_id": task_id, "queue": queue, **{k: v for k, v in extra.items() if v is not None}}
    )


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None
