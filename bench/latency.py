"""Latency: a child writes one timestamped line every 10 ms; how late does each reach a subscriber?

cc-execute: a pub/sub subscriber on ``ccx:task:<id>`` (the live channel) and,
for information, a reader of ``handle.events()`` (XREAD) in a second thread.
Baseline: the same child read straight from a pipe. Each line carries
``time.time_ns()`` from the child; latency is receive time − that.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import Any

import orjson
import redis

from bench import children
from bench.context import Context
from bench.report import Figure
from bench.stats import percentile
from runner.follow.sync import follow

SECTION = "latency"
DELAY = 0.5
"""Seconds the child waits before its first line, so the subscriber is in place."""


def _latencies_ms(text: str, received_ns: int) -> list[float]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out.append((received_ns - int(parts[1])) / 1e6)
    return out


def _events_reader(ctx: Context, task_id: str, into: list[float], timeout: float) -> None:
    client = redis.Redis.from_url(ctx.stack.redis_url or "")
    try:
        for event in follow(client, task_id, timeout=timeout):
            received = time.time_ns()
            if event["type"] == "output":
                into.extend(_latencies_ms(event["data"], received))
    finally:
        client.close()


def ours(ctx: Context, count: int, period: float) -> tuple[list[float], list[float]]:
    """Latencies (ms) seen by a pub/sub subscriber and by an events() reader."""
    timeout = DELAY + count * period + 60
    handle = ctx.runner.submit(agent="command", argv=children.ticker(count, period, DELAY), timeout=timeout)
    pubsub = ctx.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"ccx:task:{handle.id}")
    via_xread: list[float] = []
    reader = threading.Thread(target=_events_reader, args=(ctx, handle.id, via_xread, timeout), daemon=True)
    reader.start()
    via_pubsub: list[float] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            received = time.time_ns()
            event: dict[str, Any] = orjson.loads(message["data"])
            if event.get("type") == "output":
                via_pubsub.extend(_latencies_ms(event["data"], received))
            elif event.get("type") == "result":
                break
    finally:
        pubsub.close()
    reader.join(timeout=30)
    ctx.forget_task(handle.id)
    return via_pubsub, via_xread


def raw_pipe(count: int, period: float) -> list[float]:
    proc = subprocess.Popen(children.ticker(count, period, DELAY), stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out: list[float] = []
    pending = b""
    while chunk := os.read(fd, 65536):
        received = time.time_ns()
        pending += chunk
        complete, _, pending = pending.rpartition(b"\n")
        if complete:
            out.extend(_latencies_ms(complete.decode(), received))
    proc.wait()
    proc.stdout.close()
    return out


def run(ctx: Context, count: int, period: float = 0.01) -> list[Figure]:
    pubsub, xread = ours(ctx, count, period)
    raw = raw_pipe(count, period)
    details = {
        "lines_written": count,
        "period_ms": period * 1000,
        "received": {"pubsub": len(pubsub), "events_xread": len(xread), "raw_pipe": len(raw)},
        "pubsub_ms": _summary(pubsub),
        "events_xread_ms": _summary(xread),
        "raw_pipe_ms": _summary(raw),
    }
    return [
        Figure(
            SECTION, "line write→pub/sub receive, p50", "ms", percentile(pubsub, 50), percentile(raw, 50), "raw pipe"
        ),
        Figure(
            SECTION,
            "line write→pub/sub receive, p99",
            "ms",
            percentile(pubsub, 99),
            percentile(raw, 99),
            "raw pipe",
            target=10,
            details=details,
        ),
        Figure(
            SECTION, "line write→events() receive, p99", "ms", percentile(xread, 99), percentile(raw, 99), "raw pipe"
        ),
    ]


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }
