"""Prometheus metrics of a queue, read from Redis at every scrape (docs/metrics.md).

Everything lives in Redis, not in a process: the dashboard's ``/metrics`` and the
worker's ``--metrics-port`` report the same numbers, and the counters survive
restarts of either (a counter that went back to zero would read as a reset).

* Gauges (queue depth, the running task's age, the pause, today's spend) are
  read from the keys the queue already has.
* Counters and the duration histogram are kept in one hash per queue
  (:func:`runner.events.metrics_key`), written where things happen: a task's
  end (:func:`count_end`, in :func:`runner.lifecycle.end`'s pipeline) and a task going
  back to its queue for another attempt (:func:`record_retry`, from the worker).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from runner import clock, keys, queue_state
from runner.errors import UsageError
from runner.listener import redis_guard
from runner.spec import TaskResult
from runner.vocabulary import END_STATUSES, AttemptKind, PauseKind, Status

log = logging.getLogger("ccx.metrics")

PATH = "/metrics"
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Upper bounds (seconds) of the duration histogram, plus +Inf: agent tasks take seconds to an hour."""
PAUSE_KINDS = (
    PauseKind.USAGE_LIMIT,
    PauseKind.BACKOFF,
    PauseKind.RETRY,
    PauseKind.CREDENTIALS,
    PauseKind.MANUAL,
    PauseKind.BUDGET,
    PauseKind.HANDLER,
)
RETRY_REASONS = (
    AttemptKind.INTERRUPTED,
    PauseKind.USAGE_LIMIT,
    PauseKind.BACKOFF,
    PauseKind.RETRY,
    PauseKind.HANDLER,
)
"""Reasons a task goes back to its queue, reported (as 0) before the first one happens; others appear when seen."""

# Fields of the metrics hash. Buckets are stored as counts per bucket (only the smallest bound that holds a
# duration is incremented: two writes per task, not eleven) and made cumulative when read.
_ENDED = "ended:"
_RETRIES = "retries:"
_BUCKET = "duration:le:"
_SUM = "duration:sum"
_INF = "+Inf"


def bucket_of(seconds: float) -> str:
    """The histogram bound a duration is counted under (``le`` as Prometheus writes it)."""
    for bound in DURATION_BUCKETS:
        if seconds <= bound:
            return floatToGoString(bound)
    return _INF


def duration_seconds(result: TaskResult) -> float | None:
    """How long the task ran; None when it never started (a cancel before its turn, a bad spec)."""
    if result.duration_ms is not None:
        return max(0.0, result.duration_ms / 1000)
    started, ended = _epoch(result.started_at), _epoch(result.ended_at)
    return max(0.0, ended - started) if started is not None and ended is not None else None


def count_end(pipe: Any, queue: str, result: TaskResult) -> None:
    """Add to ``pipe`` the writes that count a task's end and its duration, if it ran.
    :func:`runner.lifecycle.end` sends them with the end's other bookkeeping, in one round trip (a
    scrape between two of them sees a bucket a moment before its sum: harmless for a histogram)."""
    key = keys.metrics_key(queue)
    seconds = duration_seconds(result)
    pipe.hincrby(key, _ENDED + result.status, 1)
    if seconds is not None:
        pipe.hincrby(key, _BUCKET + bucket_of(seconds), 1)
        pipe.hincrbyfloat(key, _SUM, seconds)


def record_retry(client: redis.Redis, queue: str, reason: str) -> None:
    """Count a task going back to the front of its queue for another attempt (``reason``: why, in a word)."""
    try:
        client.hincrby(keys.metrics_key(queue), _RETRIES + (reason or "unknown"), 1)
    except redis.RedisError as exc:
        log.warning("queue %s: could not count a retry in the metrics (%s)", queue, exc)


@dataclass
class Snapshot:
    """What one scrape read from Redis."""

    queue: str
    queued: int = 0
    deferred: int = 0
    running_ages: list[float] = field(default_factory=list)
    pause_kind: str = ""
    costs: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)


def read_snapshot(client: redis.Redis, queue: str, now: float | None = None) -> Snapshot:
    """Read the queue's numbers: a few pipelined round trips, whatever the number of tasks."""
    now = time.time() if now is None else now
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(keys.rq_queue_key(queue))
        pipe.zcard(keys.rq_deferred_key(queue))
        pipe.zrange(keys.rq_started_key(queue), 0, -1)
        pipe.hgetall(keys.metrics_key(queue))
        queued, deferred, started, raw = pipe.execute()
    task_ids = list(dict.fromkeys(entry.decode().split(":", 1)[0] for entry in started))
    return Snapshot(
        queue=queue,
        queued=int(queued),
        deferred=int(deferred),
        running_ages=_running_ages(client, task_ids, now),
        pause_kind=queue_state.get(client, queue).kind,
        costs=queue_state.costs(client, queue),
        counters={name.decode(): float(value) for name, value in raw.items()},
    )


def _running_ages(client: redis.Redis, task_ids: list[str], now: float) -> list[float]:
    """Seconds since each task in RQ's started registry began, for those whose record says running."""
    if not task_ids:
        return []
    with client.pipeline(transaction=False) as pipe:
        for task_id in task_ids:
            pipe.hmget(keys.info_key(task_id), "status", "started_at")
        replies = pipe.execute()
    ages = []
    for status, started_at in replies:
        began = _epoch(started_at.decode()) if status == Status.RUNNING.encode() and started_at else None
        if began is not None:
            ages.append(max(0.0, now - began))
    return ages


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot, each with its HELP text."""
    queue = snapshot.queue
    depth = GaugeMetricFamily(
        "ccx_queue_depth",
        "Tasks waiting: queued (their turn comes) or deferred (after another task).",
        labels=["queue", "state"],
    )
    depth.add_metric([queue, Status.QUEUED], snapshot.queued)
    depth.add_metric([queue, Status.DEFERRED], snapshot.deferred)
    yield depth
    yield _gauge("ccx_tasks_running", "Tasks running now (at most one per queue).", queue, len(snapshot.running_ages))
    yield _gauge(
        "ccx_running_task_age_seconds",
        "Seconds the running task has been running (the oldest, if several); 0 when none runs.",
        queue,
        max(snapshot.running_ages, default=0.0),
    )
    paused = GaugeMetricFamily(
        "ccx_queue_paused",
        "1 while the queue is paused, with why (kind); 0 for every other kind.",
        labels=["queue", "kind"],
    )
    for kind in dict.fromkeys((*PAUSE_KINDS, snapshot.pause_kind) if snapshot.pause_kind else PAUSE_KINDS):
        paused.add_metric([queue, kind], 1.0 if kind == snapshot.pause_kind else 0.0)
    yield paused
    cost = CounterMetricFamily("ccx_cost_usd", "Spend in USD as the agents reported it, all time.", labels=["queue"])
    cost.add_metric([queue], snapshot.costs.get("total", 0.0))
    yield cost
    yield _gauge("ccx_cost_today_usd", "Spend in USD today (UTC day).", queue, snapshot.costs.get("today", 0.0))
    if "budget_per_day" in snapshot.costs:
        yield _gauge(
            "ccx_budget_per_day_usd", "The daily budget in USD (the queue pauses once reached).", queue,
            snapshot.costs["budget_per_day"],
        )  # fmt: skip
    counters = snapshot.counters
    ended = CounterMetricFamily("ccx_tasks_ended", "Tasks that ended, by status.", labels=["queue", "status"])
    for status in END_STATUSES:
        ended.add_metric([queue, status], counters.get(_ENDED + status, 0.0))
    yield ended
    retries = CounterMetricFamily(
        "ccx_task_retries", "Times a task went back to the front of its queue for another attempt, by reason.",
        labels=["queue", "reason"],
    )  # fmt: skip
    seen = [name[len(_RETRIES) :] for name in counters if name.startswith(_RETRIES)]
    for reason in dict.fromkeys((*RETRY_REASONS, *sorted(seen))):
        retries.add_metric([queue, reason], counters.get(_RETRIES + reason, 0.0))
    yield retries
    yield _duration(queue, counters)


def _gauge(name: str, documentation: str, queue: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["queue"])
    gauge.add_metric([queue], value)
    return gauge


def _duration(queue: str, counters: dict[str, float]) -> HistogramMetricFamily:
    histogram = HistogramMetricFamily(
        "ccx_task_duration_seconds", "How long tasks ran, from start to end (tasks that never started are not counted).",
        labels=["queue"],
    )  # fmt: skip
    buckets: list[tuple[str, float]] = []
    total = 0.0
    for bound in (*(floatToGoString(b) for b in DURATION_BUCKETS), _INF):
        total += counters.get(_BUCKET + bound, 0.0)
        buckets.append((bound, total))
    histogram.add_metric([queue], buckets, counters.get(_SUM, 0.0))
    return histogram


class QueueCollector:
    """A ``prometheus_client`` collector reading one queue's metrics from Redis at each scrape."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client = client
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ccx_redis_up", "1 when this scrape could read the queue's numbers from Redis.")
        try:
            snapshot = read_snapshot(self.client, self.queue)
        except redis.RedisError as exc:
            # The scrape still answers (200 with this gauge at 0), so an outage is a value to alert on.
            log.warning("metrics of queue %s: Redis is unreachable (%s)", self.queue, exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families(snapshot)


def registry(client: redis.Redis, queue: str) -> CollectorRegistry:
    """A registry of its own (not the process-wide one) holding only the queue's collector."""
    found = CollectorRegistry(auto_describe=False)  # registering must not read Redis
    found.register(QueueCollector(client, queue))
    return found


SCRAPE_TIMEOUT = 2.0
"""Seconds a scrape's Redis client waits to connect, and for each answer: far inside Prometheus's 10 s
scrape timeout, so a Redis that is cut off shows as ``ccx_redis_up 0`` rather than a scrape that hangs."""


def scrape_client(url: str) -> redis.Redis:
    """The client scrapes read with: short timeouts and no retries (see :data:`SCRAPE_TIMEOUT`)."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=SCRAPE_TIMEOUT,
        socket_timeout=SCRAPE_TIMEOUT,
        retry=None,
        driver_info=None,
        **redis_guard(url),
    )


def serve(client: redis.Redis, queue: str, host: str, port: int) -> str:
    """Serve the queue's metrics over HTTP from a daemon thread; returns the URL (``port`` 0: any free port).

    A port that cannot be had is a bad setting (:class:`UsageError`, one sentence naming the flag).
    """
    try:
        server, _ = start_http_server(port, addr=host, registry=registry(client, queue))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"Port {port} on {host} for the worker's metrics is in use: stop what listens there, "
                "or pick another port with --metrics-port."
            ) from None
        raise UsageError(
            f"The worker's metrics cannot listen on {host}:{port} ({exc.strerror or exc}): "
            "check --metrics-host and --metrics-port."
        ) from None
    bound = server.server_port
    return f"http://{f'[{host}]' if ':' in host else host}:{bound}{PATH}"


def _epoch(iso_time: str | None) -> float | None:
    """Epoch seconds of one of our ISO times; None for none or junk (a metric is never worth an exception)."""
    try:
        return clock.epoch(iso_time) if iso_time else None
    except ValueError:
        return None
