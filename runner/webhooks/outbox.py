"""The outbox: webhook deliveries waiting in Redis, one sorted set per queue scored by each one's next attempt.

Ending a task must never wait on somebody else's HTTP server, and a delivery must survive a worker restart, so
an event only puts a delivery here, wherever it happens (a work-horse, the worker, the dashboard, the command
line), and returns. One Lua call does it, atomically: it decides from the task's spec and the queue's setting
whether a URL applies, and if so writes the delivery, its place in the outbox and the task record's ``pending``.
:func:`task_ended` adds that call to the end's bookkeeping pipeline, which :func:`runner.lifecycle.end` sends in
one round trip right after recording the end (so the end and its webhook are two writes, not one: an end whose
process dies in between has no webhook); :func:`queue_paused` and :func:`queue_resumed` make it at once. The core
reaches these three through runner/hooks.py, where :data:`LISTENER` is registered.

The worker's deliverer (delivery.py) works the outbox with :class:`Outbox`: a claim is a lease, not a removal,
so a delivery leaves only once it has succeeded or been given up.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from redis.client import Pipeline

from runner import clock, events, hooks, keys
from runner.spec import TaskResult
from runner.webhooks.payload import QUEUE_PAUSED, QUEUE_RESUMED, TASK_ENDED, pause_payload, resume_payload, task_payload

log = logging.getLogger("ccx.webhooks")

# What a task record's ``webhook`` says (the enqueue script writes the first; the deliverer the others).
PENDING = "pending"
RETRYING = "retrying"
DELIVERED = "delivered"
FAILED = "failed"

# --- into the outbox ---------------------------------------------------------------------------------

# KEYS: the task's record (or the queue's webhook hash for queue events), the queue's webhook hash, the
# delivery, the outbox, the wake list. ARGV: delivery id, body, ttl, event, task id, queue, mode.
# mode 'task': the spec's webhook, else the queue's URL; mode 'pause': the queue's URL if on_pause is set.
# Scores are Redis's clock, so machines whose clocks differ still agree on what is due.
_ENQUEUE_SCRIPT = """
local url = false
if ARGV[7] == 'task' then
  local spec = redis.call('HGET', KEYS[1], 'spec')
  if spec then
    local ok, decoded = pcall(cjson.decode, spec)
    if ok and type(decoded) == 'table' and type(decoded['webhook']) == 'string' and decoded['webhook'] ~= '' then
      url = decoded['webhook']
    end
  end
elseif redis.call('HGET', KEYS[2], 'on_pause') ~= '1' then
  return 0
end
if not url then url = redis.call('HGET', KEYS[2], 'url') end
if not url or url == '' then return 0 end
-- What the record shows: scheme and host, never credentials, path or query (see delivery.url_for_log).
local shown = string.match(url, '^[%a][%w+.-]*://[^/?#]*') or ''
shown = string.gsub(shown, '//[^@/]*@', '//')
if #url > #(string.match(url, '^[%a][%w+.-]*://[^/?#]*') or '') + 1 then shown = shown .. '/…' end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[3], 'url', url, 'event', ARGV[4], 'body', ARGV[2], 'task', ARGV[5], 'queue', ARGV[6],
  'created', tostring(now), 'attempts', '0')
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('LPUSH', KEYS[5], '1')
redis.call('LTRIM', KEYS[5], 0, 0)
if ARGV[7] == 'task' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'webhook',
    cjson.encode({url = shown, status = 'pending', attempts = 0, delivery = ARGV[1], event = ARGV[4]}))
end
return 1
"""


def _enqueue(
    client: redis.Redis | Pipeline, queue: str, mode: str, event: str, task_id: str, body: bytes, ttl: int
) -> Any:
    """Run the enqueue script on ``client`` (a client: its reply; a pipeline: queued). EVAL, not EVALSHA:
    in a pipeline redis-py would spend a round trip checking that the script is loaded."""
    delivery_id = str(uuid.uuid4())
    record = keys.info_key(task_id) if task_id else keys.webhook_config_key(queue)
    script_keys = [
        record,
        keys.webhook_config_key(queue),
        keys.webhook_delivery_key(delivery_id),
        keys.webhook_due_key(queue),
        keys.webhook_wake_key(queue),
    ]
    return client.eval(
        _ENQUEUE_SCRIPT, len(script_keys), *script_keys, delivery_id, body, ttl, event, task_id, queue, mode
    )


def task_ended(pipe: Pipeline, queue: str, result: TaskResult, ttl: int = events.DEFAULT_LOG_TTL) -> None:
    """Add to ``pipe`` the script that queues an ended task's webhook, if one applies (the script decides,
    from the record's spec and the queue's setting). :func:`runner.lifecycle.end` sends it with the end's
    other bookkeeping, in one round trip, and logs its reply if that is an error."""
    _enqueue(pipe, queue, "task", TASK_ENDED, result.id, orjson.dumps(task_payload(result, queue)), ttl)


def queue_paused(client: redis.Redis, queue: str, kind: str, reason: str, until: float | None) -> bool:
    """``queue`` paused: queue a ``queue.paused`` POST if the queue's webhook asks for them (True if it did)."""
    try:
        body = orjson.dumps(pause_payload(queue, kind, reason, until, clock.now_iso()))
        return bool(_enqueue(client, queue, "pause", QUEUE_PAUSED, "", body, events.DEFAULT_LOG_TTL))
    except redis.RedisError as exc:
        log.warning("queue %s: its pause webhook could not be queued (%s)", queue, exc)
        return False


def queue_resumed(client: redis.Redis, queue: str, kind: str, reason: str) -> bool:
    """``queue``'s pause ended: a ``queue.resumed`` POST, to the same receivers as its pauses (so that every
    ``queue.paused`` they got is followed by its end)."""
    try:
        body = orjson.dumps(resume_payload(queue, kind, reason, clock.now_iso()))
        return bool(_enqueue(client, queue, "pause", QUEUE_RESUMED, "", body, events.DEFAULT_LOG_TTL))
    except redis.RedisError as exc:
        log.warning("queue %s: its resume webhook could not be queued (%s)", queue, exc)
        return False


LISTENER = hooks.Listener("webhooks", queue_paused=queue_paused, queue_resumed=queue_resumed, task_ended=task_ended)
"""Register it (``hooks.register(outbox.LISTENER)``) where a process is put together: from then on its ends,
pauses and resumptions put their webhooks here."""


# --- out of the outbox -------------------------------------------------------------------------------

# KEYS: the outbox. ARGV: lease seconds, most to claim. Leases the due deliveries (their score moves past
# the lease) and returns {Redis now, the next due score or '', ids...}.
_CLAIM_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reply = {tostring(now), nxt[2] or '', tostring(now + tonumber(ARGV[1]))}
for _, id in ipairs(ids) do reply[#reply + 1] = id end
return reply
"""

# KEYS: the delivery, the outbox, the record (task record or queue webhook hash), the wake list.
# ARGV: delivery id, outcome JSON, record field, attempts, next attempt ('' = done: delivered or given up),
# the lease (the score the claim gave it).
# A retry wakes the claimer, which may be waiting for a later one.
_RECORD_SCRIPT = """
-- Only the attempt that holds the delivery's lease records: a stale one (its lease ran out and the
-- delivery was claimed again, or finished) changes nothing, and never brings a delivery back.
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end
if not score or math.abs(tonumber(score) - tonumber(ARGV[6])) > 0.001 then return 0 end
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[1])
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
  redis.call('HSET', KEYS[1], 'attempts', ARGV[4])
  redis.call('LPUSH', KEYS[4], '1')
  redis.call('LTRIM', KEYS[4], 0, 0)
end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[3], ARGV[3], ARGV[2]) end
return 1
"""


@dataclass(frozen=True)
class Delivery:
    """One webhook POST to make, as the outbox holds it."""

    id: str
    url: str
    event: str
    payload: dict[str, Any]
    task_id: str
    queue: str
    created: float
    attempts: int

    @classmethod
    def load(cls, client: redis.Redis, delivery_id: str) -> Delivery | None:
        raw = client.hgetall(keys.webhook_delivery_key(delivery_id))
        if not raw or b"url" not in raw:
            return None
        data = {key.decode(): value for key, value in raw.items()}
        return cls(
            id=delivery_id,
            url=data["url"].decode(),
            event=data.get("event", b"").decode(),
            payload=orjson.loads(data.get("body") or b"{}"),
            task_id=data.get("task", b"").decode(),
            queue=data.get("queue", b"").decode(),
            created=float(data.get("created") or 0),
            attempts=int(data.get("attempts") or 0),
        )


@dataclass(frozen=True)
class Claim:
    """What one claim leased: ``ids``, each now held until ``lease`` (Redis's clock, as the record script
    compares it); ``now`` is Redis's clock and ``next_due`` the earliest score left (None: the outbox is empty)."""

    now: float
    next_due: float | None
    lease: str
    ids: list[str]


class Outbox:
    """One queue's outbox, as a deliverer works it: claim what is due, load it, record each attempt."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client = client
        self.queue = queue
        self._claim = client.register_script(_CLAIM_SCRIPT)
        self._record = client.register_script(_RECORD_SCRIPT)

    def claim(self, lease_seconds: float, most: int) -> Claim:
        """Lease up to ``most`` due deliveries for ``lease_seconds``; another claim skips them meanwhile."""
        reply = self._claim(keys=[keys.webhook_due_key(self.queue)], args=[lease_seconds, most])
        next_due = reply[1]
        return Claim(
            float(reply[0]),
            float(next_due) if next_due else None,
            reply[2].decode(),
            [item.decode() for item in reply[3:]],
        )

    def wait(self, timeout: float) -> None:
        """Block until a new or rescheduled delivery wakes the claimer, or ``timeout`` seconds."""
        self.client.blpop([keys.webhook_wake_key(self.queue)], timeout=timeout)

    def load(self, delivery_id: str) -> Delivery | None:
        """The delivery; None when it expired or another deliverer finished it (then it leaves the outbox)."""
        delivery = Delivery.load(self.client, delivery_id)
        if delivery is None:
            self.client.zrem(keys.webhook_due_key(self.queue), delivery_id)
        return delivery

    def lease_of(self, delivery_id: str) -> str:
        """The delivery's current score, for an attempt made outside a claim (tests, tools)."""
        score = self.client.zscore(keys.webhook_due_key(self.queue), delivery_id)
        return repr(score) if score is not None else "-1"

    def record(self, delivery: Delivery, outcome: dict[str, Any], next_at: float | None, lease: str) -> None:
        """Write an attempt's ``outcome`` on the task's record (a queue event's: on the queue's webhook hash),
        and reschedule the delivery for ``next_at`` or, None, remove it; only if ``lease`` still holds it."""
        record = keys.info_key(delivery.task_id) if delivery.task_id else keys.webhook_config_key(self.queue)
        self._record(
            keys=[
                keys.webhook_delivery_key(delivery.id),
                keys.webhook_due_key(self.queue),
                record,
                keys.webhook_wake_key(self.queue),
            ],
            args=[
                delivery.id,
                orjson.dumps(outcome),
                "webhook" if delivery.task_id else "last_delivery",
                outcome["attempts"],
                "" if next_at is None else repr(next_at),
                lease,
            ],
        )
