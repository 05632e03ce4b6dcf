"""Settings shared by the runner's parts, read from the environment, and the Redis client factory."""

from __future__ import annotations

import os
from dataclasses import dataclass

import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from runner import events

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "ccx"
DEFAULT_HANDLER_URL = "ws://127.0.0.1:8765/ws"


def _env(*names: str, default: str | None = None) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return default


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    queue: str = DEFAULT_QUEUE
    handler_url: str = DEFAULT_HANDLER_URL
    handler_token: str | None = None
    output_limit: int = 1_000_000
    """Characters of output kept in a result (the tail); the full output stays in the task's log."""
    log_maxlen: int = events.DEFAULT_LOG_MAXLEN
    log_ttl: int = events.DEFAULT_LOG_TTL
    lock_ttl: float = 30.0
    """Seconds the worker's lock outlives its last renewal: how soon a crashed worker can be replaced."""

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            redis_url=_env("CCX_REDIS_URL", "REDIS_URL", default=DEFAULT_REDIS_URL) or DEFAULT_REDIS_URL,
            queue=_env("CCX_QUEUE", default=DEFAULT_QUEUE) or DEFAULT_QUEUE,
            handler_url=_env("CCX_HANDLER_URL", default=DEFAULT_HANDLER_URL) or DEFAULT_HANDLER_URL,
            handler_token=_env("CCX_HANDLER_TOKEN"),
            output_limit=int(_env("CCX_OUTPUT_LIMIT", default="1000000") or 1_000_000),
            log_maxlen=int(_env("CCX_LOG_MAXLEN", default=str(events.DEFAULT_LOG_MAXLEN)) or events.DEFAULT_LOG_MAXLEN),
            log_ttl=int(_env("CCX_LOG_TTL", default=str(events.DEFAULT_LOG_TTL)) or events.DEFAULT_LOG_TTL),
            lock_ttl=float(_env("CCX_WORKER_LOCK_TTL", default="30") or 30),
        )


PATIENT_RETRIES = 12
"""Retries (backoff capped at 2 s, about 15 s in all) for the worker side: it rides out a Redis restart."""
QUICK_RETRIES = 2
"""Retries for orchestrator calls: a Redis that is down is reported at once, not after a long wait."""


def redis_client(url: str, retries: int = QUICK_RETRIES) -> redis.Redis:
    """A bytes-returning client that retries through short outages."""
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=5,
        health_check_interval=30,
        driver_info=None,  # skip CLIENT SETINFO: two round trips per new connection
    )


def async_redis_client(url: str) -> redis.asyncio.Redis:
    from redis.asyncio.retry import Retry as AsyncRetry

    return redis.asyncio.Redis.from_url(
        url,
        retry=AsyncRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=PATIENT_RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=5,
        driver_info=None,
    )


def redact_url(url: str) -> str:
    """``url`` with any password replaced, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
    return urlunsplit(parts._replace(netloc=netloc))
