"""The one clock of records and events: UTC, ISO 8601 with milliseconds and a ``Z``, as stored and published."""

from __future__ import annotations

from datetime import UTC, datetime


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch(iso_time: str) -> float:
    """Epoch seconds of a time written by :func:`now_iso` or :func:`iso`."""
    return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()
