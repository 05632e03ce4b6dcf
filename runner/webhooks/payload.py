"""What a webhook POST carries and how it is signed: pure functions, no Redis, no network.

The outbox (outbox.py) stores a payload built here when an event happens; the deliverer (delivery.py) adds the
dashboard links and signs the exact bytes it sends with :func:`request_headers`. :func:`verify` is a receiver's
check, the one docs/webhooks.md shows.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import orjson

from handler import __version__
from runner import clock
from runner.spec import TaskResult

TASK_ENDED = "task.ended"
QUEUE_PAUSED = "queue.paused"
QUEUE_RESUMED = "queue.resumed"

SIGNATURE_HEADER = "X-CCX-Signature"
TIMESTAMP_HEADER = "X-CCX-Timestamp"
EVENT_HEADER = "X-CCX-Event"
DELIVERY_HEADER = "X-CCX-Delivery"

OUTPUT_BYTES = 4096
"""Bytes of the result's output a payload carries (its start, cut at a character boundary)."""


def cut_utf8(text: str, limit: int = OUTPUT_BYTES) -> tuple[str, bool]:
    """The start of ``text`` in at most ``limit`` UTF-8 bytes, never half a character; and whether it was cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


def task_payload(result: TaskResult, queue: str) -> dict[str, Any]:
    """What a receiver learns about an ended task: never the spec (its prompt and env may hold secrets)."""
    output, cut = cut_utf8(result.output or "")
    cost = (result.agent or {}).get("total_cost_usd")
    return {
        "event": TASK_ENDED,
        "id": result.id,
        "queue": queue,
        "status": result.status,
        "success": result.success,
        "exit_code": result.exit_code,
        "error": result.error,
        "output": output,
        "output_truncated": cut or result.output_truncated,
        "cost_usd": cost if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
        "duration": round(result.duration_ms / 1000, 3) if result.duration_ms is not None else None,
        "ended_at": result.ended_at,
    }


def pause_payload(queue: str, kind: str, reason: str, until: float | None, at: str) -> dict[str, Any]:
    """A pause that took hold; ``at``: when, as an ISO time (the caller reads the clock)."""
    return {
        "event": QUEUE_PAUSED,
        "queue": queue,
        "kind": kind,
        "reason": reason,
        "until": clock.iso(until) if until else None,
        "at": at,
    }


def resume_payload(queue: str, kind: str, reason: str, at: str) -> dict[str, Any]:
    """A lifted pause: ``kind`` is the pause that ended, ``reason`` why it ended (its time came, a person)."""
    return {"event": QUEUE_RESUMED, "queue": queue, "kind": kind, "reason": reason, "at": at}


def body(payload: dict[str, Any], task_id: str, dashboard: str | None) -> bytes:
    """The exact bytes sent and signed: the stored payload with its links to the dashboard at ``dashboard``.
    The links are added at each attempt, not stored: the dashboard may have come up since the event."""
    links: dict[str, str] = {}
    if dashboard and task_id:
        links["task"] = f"{dashboard}/tasks/{task_id}"
    elif dashboard:
        links["dashboard"] = f"{dashboard}/"
    return orjson.dumps({**payload, "links": links})


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 under ``secret`` of ``f"{timestamp}.{body}"``; the timestamp is signed
    too, so a captured request cannot be replayed later with a fresh one."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(
    secret: str, body: bytes, signature: str, timestamp: str, tolerance: float = 300, now: float | None = None
) -> bool:
    """A receiver's check (the one docs/webhooks.md shows): the signature matches and the timestamp is recent."""
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    recent = abs((time.time() if now is None else now) - sent) <= tolerance
    return recent and hmac.compare_digest(sign(secret, sent, body), signature or "")


def request_headers(event: str, delivery_id: str, secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": f"cc-execute/{__version__}",
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }
