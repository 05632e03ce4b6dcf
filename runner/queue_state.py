"""A queue's pause: whether it holds, why, and until when; kept in Redis, so it survives restarts.

A paused queue starts nothing: its worker waits (the running task, if any,
goes on). A pause comes from a usage limit (until the limit resets, plus a
margin), an API that keeps refusing with no reset time (backoff), a transient
error's retry delay, rejected credentials (until a person resumes), or a
person (``ccx pause``). The worker ends a timed pause itself when its time
comes; ``ccx resume`` ends any. Both are lifecycle events on ``ccx:events``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from runner import events

# Why a queue holds (``kind``).
USAGE_LIMIT = "usage_limit"
BACKOFF = "backoff"
RETRY = "retry"
CREDENTIALS = "credentials"
MANUAL = "manual"


@dataclass(frozen=True)
class QueueState:
    queue: str
    paused: bool = False
    kind: str = ""
    reason: str = ""
    until: float | None = None
    """Epoch seconds the pause ends at by itself; None: until someone resumes it."""
    since: float | None = None
    backoff_level: int = 0
    """Consecutive backoff pauses: each doubles the next one, a success resets it."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "paused": self.paused,
            "kind": self.kind or None,
            "reason": self.reason or None,
            "until": events.iso(self.until) if self.until else None,
            "since": events.iso(self.since) if self.since else None,
        }

    def describe(self) -> str:
        """``paused until 19:21 UTC — five-hour usage limit``, or ``running``."""
        if not self.paused:
            return "running"
        until = time.strftime(" until %H:%M:%S UTC", time.gmtime(self.until)) if self.until else ""
        return f"paused{until} — {self.reason}"


def get(client: redis.Redis, queue: str) -> QueueState:
    raw = client.hgetall(events.queue_state_key(queue))
    data = {key.decode(): value.decode() for key, value in raw.items()}
    level = int(data.get("backoff_level") or 0)
    if not data.get("kind"):
        return QueueState(queue, backoff_level=level)
    return QueueState(
        queue,
        paused=True,
        kind=data["kind"],
        reason=data.get("reason", ""),
        until=float(data["until"]) if data.get("until") else None,
        since=float(data["since"]) if data.get("since") else None,
        backoff_level=level,
    )


def pause(client: redis.Redis, queue: str, kind: str, reason: str, until: float | None = None) -> QueueState:
    """Hold ``queue`` (a later pause replaces an earlier one); announce it."""
    now = time.time()
    key = events.queue_state_key(queue)
    with client.pipeline() as pipe:
        pipe.hset(
            key,
            mapping={"kind": kind, "reason": reason, "until": "" if until is None else repr(until), "since": repr(now)},
        )
        if kind == BACKOFF:
            pipe.hincrby(key, "backoff_level", 1)
        pipe.publish(events.LIFECYCLE_CHANNEL, _event(events.PAUSED, queue, kind=kind, reason=reason, until=until))
        pipe.execute()
    return get(client, queue)


def resume(client: redis.Redis, queue: str, why: str, reset_backoff: bool = False) -> bool:
    """End ``queue``'s pause, if it has one; True if it had."""
    key = events.queue_state_key(queue)
    with client.pipeline() as pipe:
        pipe.hget(key, "kind")
        pipe.hdel(key, "kind", "reason", "until", "since")
        if reset_backoff:
            pipe.hdel(key, "backoff_level")
        had, _, *_ = pipe.execute()
    if had:
        client.publish(events.LIFECYCLE_CHANNEL, _event(events.RESUMED, queue, reason=why))
    return bool(had)


def succeeded(client: redis.Redis, queue: str) -> None:
    """A task ran through: the next limit without a reset time starts its backoff from the beginning."""
    client.hdel(events.queue_state_key(queue), "backoff_level")


def _event(event_type: str, queue: str, **extra: Any) -> bytes:
    body = {"type": event_type, "queue": queue, "at": events.now_iso()}
    body.update({k: (events.iso(v) if k == "until" and v else v) for k, v in extra.items() if v is not None})
    return orjson.dumps(body)
