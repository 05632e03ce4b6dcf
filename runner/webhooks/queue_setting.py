"""A queue's webhook setting (``ccx webhook set/show/clear``) and the secret every POST of the queue is signed
with, in the queue's webhook hash in Redis (:func:`runner.keys.webhook_config_key`).

The outbox's script (outbox.py) reads the same hash when an event happens, to decide where it goes.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis

from runner import keys
from runner.config import check_http_url
from runner.errors import SpecError


@dataclass(frozen=True)
class QueueWebhook:
    """A queue's webhook setting (the secret is read separately, with :func:`queue_secret`)."""

    queue: str
    url: str | None = None
    on_pause: bool = False
    last_delivery: dict[str, Any] | None = None
    """How the last queue event's delivery went (task events are recorded on their task)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def get_queue_webhook(client: redis.Redis, queue: str) -> QueueWebhook:
    url, on_pause, last = client.hmget(keys.webhook_config_key(queue), "url", "on_pause", "last_delivery")
    return QueueWebhook(queue, url.decode() if url else None, on_pause == b"1", orjson.loads(last) if last else None)


def set_queue_webhook(client: redis.Redis, queue: str, url: str, on_pause: bool = False) -> QueueWebhook:
    """Every task of ``queue`` without a ``webhook`` of its own reports its end to ``url`` from now on."""
    try:
        check_http_url(url, "The webhook URL")
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    key = keys.webhook_config_key(queue)
    with client.pipeline() as pipe:
        pipe.hset(key, mapping={"url": url, "on_pause": "1" if on_pause else ""})
        pipe.hsetnx(key, "secret", secrets.token_urlsafe(32))
        pipe.execute()
    return get_queue_webhook(client, queue)


def clear_queue_webhook(client: redis.Redis, queue: str) -> bool:
    """No queue webhook any more (True if there was one). The secret stays: tasks' own webhooks use it."""
    with client.pipeline() as pipe:
        pipe.hget(keys.webhook_config_key(queue), "url")
        pipe.hdel(keys.webhook_config_key(queue), "url", "on_pause")
        had, _ = pipe.execute()
    return bool(had)


def queue_secret(client: redis.Redis, queue: str) -> str:
    """The key every POST of ``queue`` is signed with, made on first use; give it to the receivers."""
    key = keys.webhook_config_key(queue)
    with client.pipeline() as pipe:
        pipe.hsetnx(key, "secret", secrets.token_urlsafe(32))
        pipe.hget(key, "secret")
        _, secret = pipe.execute()
    return secret.decode()
