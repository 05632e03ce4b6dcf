"""A queue's pause: whether it holds, why, and until when; kept in Redis, so it survives restarts.

A paused queue starts nothing: its worker waits (the running task, if any,
goes on). A pause comes from a usage limit (until the limit resets, plus a
margin), an API that keeps refusing with no reset time (backoff), a transient
error's retry delay, rejected credentials (until a person resumes), a handler
that cannot be reached (until it answers the worker again), or a person
(``ccx pause``). Pauses compose: the strongest holds (:data:`STRENGTH`), so a
failing task's retry pause never replaces a person's. The worker ends a timed pause
itself when its time comes, and a handler pause once the handler answers; ``ccx resume`` ends any. Both are lifecycle events on
``ccx:events``, and are told to the listeners of runner/hooks.py (the webhooks' outbox POSTs them to a queue
whose webhook asks for pauses).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from runner import clock, hooks, keys
from runner.errors import UsageError
from runner.spec import as_real
from runner.vocabulary import EventType, PauseKind

# The order of strength among kinds, weakest first: it decides between two pauses that end at the same
# time (or both never). A person's word is the strongest: no automatic pause replaces ``ccx pause``.
STRENGTH = (
    PauseKind.RETRY,
    PauseKind.HANDLER,
    PauseKind.BACKOFF,
    PauseKind.USAGE_LIMIT,
    PauseKind.BUDGET,
    PauseKind.CREDENTIALS,
    PauseKind.MANUAL,
)


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
            "until": clock.iso(self.until) if self.until else None,
            "since": clock.iso(self.since) if self.since else None,
        }

    def describe(self) -> str:
        """``paused until 19:21 UTC — five-hour usage limit``, or ``running``."""
        if not self.paused:
            return "running"
        until = time.strftime(" until %H:%M:%S UTC", time.gmtime(self.until)) if self.until else ""
        return f"paused{until} — {self.reason}"


def get(client: redis.Redis, queue: str) -> QueueState:
    raw = client.hgetall(keys.queue_state_key(queue))
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


# KEYS: the queue's state. ARGV: kind, reason, until ('' = until resumed), now, the paused event, '1' to count
# a backoff, the lifecycle channel, then STRENGTH. One script, so a person's pause and an automatic one set
# at the same moment are compared and written as a whole: neither can land between the other's read and write.
# Returns 1 if the new pause holds now (and was announced), 0 if the current one is stronger and stays.
_PAUSE_SCRIPT = """
local function rank(kind)
  for i = 8, #ARGV do if ARGV[i] == kind then return i end end
  return 0
end
local current = redis.call('HMGET', KEYS[1], 'kind', 'until')
local kind, ends = current[1] or '', current[2] or ''
local stays = false
if kind ~= '' then
  if (ends == '') ~= (ARGV[3] == '') then
    stays = ends == ''  -- until resumed beats any end time
  elseif ends ~= '' and tonumber(ends) ~= tonumber(ARGV[3]) then
    stays = tonumber(ends) > tonumber(ARGV[3])  -- the later end: the queue cannot go on before it anyway
  else
    stays = rank(kind) > rank(ARGV[1])  -- an equal one replaces it: its reason is the latest word
  end
end
-- A backoff counts even when it does not hold: the next 429's wait doubles all the same.
if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[1], 'backoff_level', 1) end
if stays then return 0 end
redis.call('HSET', KEYS[1], 'kind', ARGV[1], 'reason', ARGV[2], 'until', ARGV[3], 'since', ARGV[4])
redis.call('PUBLISH', ARGV[7], ARGV[5])
return 1
"""

# KEYS: the queue's state. ARGV: '1' to reset the backoff, '1' to end only a timed pause that is due, now,
# the lifecycle channel, the resumed event without its kind, the only kind to end ('' = any). Returns the kind of the pause it ended, or
# false. The event is published here, so that on the channel it always comes between its pause and the next.
_RESUME_SCRIPT = """
local current = redis.call('HMGET', KEYS[1], 'kind', 'until')
local kind, ends = current[1] or '', current[2] or ''
if ARGV[2] == '1' and (kind == '' or ends == '' or tonumber(ends) > tonumber(ARGV[3])) then return false end
if ARGV[6] ~= '' and kind ~= ARGV[6] then return false end
if ARGV[1] == '1' then redis.call('HDEL', KEYS[1], 'backoff_level') end
if kind == '' then return false end
redis.call('HDEL', KEYS[1], 'kind', 'reason', 'until', 'since')
local event = cjson.decode(ARGV[5])
event['kind'] = kind
redis.call('PUBLISH', ARGV[4], cjson.encode(event))
return kind
"""


def pause(client: redis.Redis, queue: str, kind: str, reason: str, until: float | None = None) -> QueueState:
    """Hold ``queue`` unless a stronger pause holds it (see :data:`STRENGTH` and docs/events.md, "Pauses");
    announce it if it takes hold. Returns the pause that holds afterwards, this one or the stronger one."""
    now = time.time()
    event = _event(EventType.PAUSED, queue, kind=kind, reason=reason, until=until)
    took = client.register_script(_PAUSE_SCRIPT)(
        keys=[keys.queue_state_key(queue)],
        args=[
            kind,
            reason,
            "" if until is None else repr(until),
            repr(now),
            event,
            "1" if kind == PauseKind.BACKOFF else "",
            keys.LIFECYCLE_CHANNEL,
            *STRENGTH,
        ],
    )
    if took:
        hooks.queue_paused(client, queue, kind, reason, until)  # e.g. a queue.paused webhook, if the queue asks
    return get(client, queue)


def resume(
    client: redis.Redis,
    queue: str,
    why: str,
    reset_backoff: bool = False,
    only_if_due: bool = False,
    only_kind: str = "",
) -> bool:
    """End ``queue``'s pause, if it has one; True if it had. Announced like a pause: a ``resumed`` event, and
    told to the listeners of runner/hooks.py (a ``queue.resumed`` webhook, if the queue's webhook asks for pauses).

    ``only_if_due``: end it only if it is a timed pause whose time has come (the worker's case: a person's
    pause set after the worker looked must survive the worker's lifting of the timed one it saw); ``only_kind``:
    end it only if it is of that kind (the worker's case again, for a pause it ends on a condition, not a time)."""
    kind = client.register_script(_RESUME_SCRIPT)(
        keys=[keys.queue_state_key(queue)],
        args=[
            "1" if reset_backoff else "",
            "1" if only_if_due else "",
            repr(time.time()),
            keys.LIFECYCLE_CHANNEL,
            _event(EventType.RESUMED, queue, reason=why),
            only_kind,
        ],
    )
    if not kind:
        return False
    hooks.queue_resumed(client, queue, kind.decode(), why)  # e.g. a queue.resumed webhook, if the queue asks
    return True


def today(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


TOTAL = "total"


def day_field(now: float | None = None) -> str:
    """The field of the costs hash (:func:`runner.events.costs_key`) that holds a UTC day's spend."""
    return f"day:{today(now)}"


def costs(client: redis.Redis, queue: str) -> dict[str, float]:
    """``{"today": …, "total": …}`` in USD, and ``budget_per_day`` when one is set."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.costs_key(queue), TOTAL, day_field())
        pipe.hget(keys.queue_state_key(queue), "budget_per_day")
        (total, day), budget = pipe.execute()
    found = {"today": float(day or 0), "total": float(total or 0)}
    if budget:
        found["budget_per_day"] = float(budget)
    return found


def set_budget(client: redis.Redis, queue: str, per_day: float | None) -> None:
    """A daily budget in USD (None: none): once the day's spend reaches it, the queue pauses until midnight UTC.

    It must be a finite number above 0: a NaN budget compares false with any spend, so it would never pause
    the queue, and an infinite one never would either; 0 is no budget at all, said with None (``--off``)."""
    key = keys.queue_state_key(queue)
    if per_day is None:
        client.hdel(key, "budget_per_day")
        return
    budget = as_real(per_day)
    if budget is None or not math.isfinite(budget) or budget <= 0:
        # An int is said as its float: repr() of one with over 4300 digits raises ValueError.
        shown = repr(per_day) if budget is None or isinstance(per_day, float) else f"{budget:g}"
        raise UsageError(
            f"The budget must be a number of dollars above 0, such as 20, not {shown}; "
            "to have no budget, remove it (`ccx budget --off`)."
        )
    client.hset(key, "budget_per_day", repr(budget))


def check_budget(client: redis.Redis, queue: str, now: float | None = None) -> QueueState | None:
    """Pause the queue (until the next UTC midnight) when today's spend has reached its budget."""
    spent = costs(client, queue)
    budget = spent.get("budget_per_day")
    if budget is None or spent["today"] < budget:
        return None
    now = time.time() if now is None else now
    midnight = (int(now) // 86400 + 1) * 86400
    reason = f"budget reached: ${spent['today']:.2f} of ${budget:.2f} spent today"
    return pause(client, queue, PauseKind.BUDGET, reason, float(midnight))


def held(client: redis.Redis, queue: str) -> bool:
    """Whether the next task must wait: the queue is paused, or today's spend has reached its budget (which
    pauses it now). One round trip when neither holds, as it does before every task."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.queue_state_key(queue), "kind", "budget_per_day")
        pipe.hget(keys.costs_key(queue), f"day:{today()}")
        (kind, budget), spent = pipe.execute()
    if kind:
        return True
    return bool(budget) and float(spent or 0) >= float(budget) and check_budget(client, queue) is not None


def succeeded(client: redis.Redis, queue: str) -> None:
    """A task ran through: the next limit without a reset time starts its backoff from the beginning."""
    client.hdel(keys.queue_state_key(queue), "backoff_level")


def _event(event_type: str, queue: str, **extra: Any) -> bytes:
    body = {"type": event_type, "queue": queue, "at": clock.now_iso()}
    body.update({k: (clock.iso(v) if k == "until" and v else v) for k, v in extra.items() if v is not None})
    return orjson.dumps(body)
