"""A queue's pause: whether it holds, why, and until when; kept in Redis, so it survives restarts.

A paused queue starts nothing: its worker waits (the running task, if any,
goes on). A pause comes from a usage limit (until the limit resets, plus a
margin), an API that keeps refusing with no reset time (backoff), a transient
error's retry delay, rejected credentials (until a person resumes), or a
person (``ccx pause``). The worker ends a timed pause itself when its time
comes; ``ccx resume`` ends any. Both are lifecycle events on ``ccx:events``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from runner import events, webhooks
from runner.errors import UsageError

# Why a queue holds (``kind``).
USAGE_LIMIT = "usage_limit"
BACKOFF = "backoff"
RETRY = "retry"
CREDENTIALS = "credentials"
MANUAL = "manual"
BUDGET = "budget"


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
    webhooks.on_pause(client, queue, kind, reason, until)  # a queue.paused POST, if the queue's webhook asks
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


def today(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


TOTAL = "total"


def day_field(now: float | None = None) -> str:
    """The field of the costs hash (:func:`runner.events.costs_key`) that holds a UTC day's spend."""
    return f"day:{today(now)}"


def add_cost(client: redis.Redis, queue: str, usd: float) -> None:
    """Count a cost in the queue's totals (all time, and the UTC day). A task's own cost is counted by
    the script that records its end (runner/store.py), so that its result is never seen before its cost."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hincrbyfloat(events.costs_key(queue), TOTAL, usd)
        pipe.hincrbyfloat(events.costs_key(queue), day_field(), usd)
        pipe.execute()


def costs(client: redis.Redis, queue: str) -> dict[str, float]:
    """``{"today": …, "total": …}`` in USD, and ``budget_per_day`` when one is set."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hmget(events.costs_key(queue), TOTAL, day_field())
        pipe.hget(events.queue_state_key(queue), "budget_per_day")
        (total, day), budget = pipe.execute()
    found = {"today": float(day or 0), "total": float(total or 0)}
    if budget:
        found["budget_per_day"] = float(budget)
    return found


def set_budget(client: redis.Redis, queue: str, per_day: float | None) -> None:
    """A daily budget in USD (None: none): once the day's spend reaches it, the queue pauses until midnight UTC.

    It must be a finite number above 0: a NaN budget compares false with any spend, so it would never pause
    the queue, and an infinite one never would either; 0 is no budget at all, said with None (``--off``)."""
    key = events.queue_state_key(queue)
    if per_day is None:
        client.hdel(key, "budget_per_day")
        return
    number = isinstance(per_day, (int, float)) and not isinstance(per_day, bool)
    if not number or not math.isfinite(per_day) or per_day <= 0:
        raise UsageError(
            f"The budget must be a number of dollars above 0, such as 20, not {per_day!r}; "
            "to have no budget, remove it (`ccx budget --off`)."
        )
    client.hset(key, "budget_per_day", repr(float(per_day)))


def check_budget(client: redis.Redis, queue: str, now: float | None = None) -> QueueState | None:
    """Pause the queue (until the next UTC midnight) when today's spend has reached its budget."""
    spent = costs(client, queue)
    budget = spent.get("budget_per_day")
    if budget is None or spent["today"] < budget:
        return None
    now = time.time() if now is None else now
    midnight = (int(now) // 86400 + 1) * 86400
    reason = f"budget reached: ${spent['today']:.2f} of ${budget:.2f} spent today"
    return pause(client, queue, BUDGET, reason, float(midnight))


def held(client: redis.Redis, queue: str) -> bool:
    """Whether the next task must wait: the queue is paused, or today's spend has reached its budget (which
    pauses it now). One round trip when neither holds, as it does before every task."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hmget(events.queue_state_key(queue), "kind", "budget_per_day")
        pipe.hget(events.costs_key(queue), f"day:{today()}")
        (kind, budget), spent = pipe.execute()
    if kind:
        return True
    return bool(budget) and float(spent or 0) >= float(budget) and check_budget(client, queue) is not None


def succeeded(client: redis.Redis, queue: str) -> None:
    """A task ran through: the next limit without a reset time starts its backoff from the beginning."""
    client.hdel(events.queue_state_key(queue), "backoff_level")


def _event(event_type: str, queue: str, **extra: Any) -> bytes:
    body = {"type": event_type, "queue": queue, "at": events.now_iso()}
    body.update({k: (events.iso(v) if k == "until" and v else v) for k, v in extra.items() if v is not None})
    return orjson.dumps(body)
