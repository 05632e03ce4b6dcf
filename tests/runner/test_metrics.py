"""Prometheus metrics (runner/metrics.py): what a scrape says, and that it moves as tasks run.

The unit tests write the keys a queue has and read them back through the collector, against the session's
real Redis. The end-to-end test runs real command tasks through a real handler and worker, scrapes the worker's
``--metrics-port`` and the dashboard's ``/metrics`` over HTTP, and parses both with prometheus_client's parser.
Nothing waits by sleeping: every wait is ``wait_until`` with a deadline.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from runner import clock, keys, lifecycle, metrics, queue_state
from runner.client import Runner
from runner.keys import rq_deferred_key, rq_queue_key, rq_started_key
from runner.spec import TaskResult
from runner.stack import LocalStack, free_port
from runner.vocabulary import END_STATUSES, AttemptKind, PauseKind, Status
from tests.support.processes import first_line, wait_until

PY = sys.executable
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels (the parser fails the test on a malformed scrape)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels} in {sorted(n for n, _ in samples)}"
    return samples[key]


def collect(client: redis.Redis, queue: str) -> Samples:
    return parse(generate_latest(metrics.registry(client, queue)).decode())


# ---- the collector, against the keys a queue has ------------------------------------------------------------


def test_an_idle_queue_reports_every_metric_at_zero(redis_client: redis.Redis, queue_name: str) -> None:
    found = collect(redis_client, queue_name)
    q = queue_name
    assert value(found, "ccx_redis_up") == 1
    assert value(found, "ccx_queue_depth", queue=q, state="queued") == 0
    assert value(found, "ccx_queue_depth", queue=q, state="deferred") == 0
    assert value(found, "ccx_tasks_running", queue=q) == 0
    assert value(found, "ccx_running_task_age_seconds", queue=q) == 0
    for kind in metrics.PAUSE_KINDS:
        assert value(found, "ccx_queue_paused", queue=q, kind=kind) == 0
    for status in END_STATUSES:
        assert value(found, "ccx_tasks_ended_total", queue=q, status=status) == 0
    for reason in metrics.RETRY_REASONS:
        assert value(found, "ccx_task_retries_total", queue=q, reason=reason) == 0
    assert value(found, "ccx_task_duration_seconds_count", queue=q) == 0
    assert value(found, "ccx_task_duration_seconds_bucket", queue=q, le="+Inf") == 0
    assert value(found, "ccx_cost_usd_total", queue=q) == 0
    assert value(found, "ccx_cost_today_usd", queue=q) == 0
    assert not any(name == "ccx_budget_per_day_usd" for name, _ in found)


def _count_end(client: redis.Redis, queue: str, result: TaskResult) -> None:
    """What runner.lifecycle.end does with the metrics, in the pipeline of its end."""
    with client.pipeline() as pipe:
        metrics.count_end(pipe, queue, result)
        pipe.execute()


def test_ends_fill_the_outcome_counters_and_the_duration_histogram(redis_client: redis.Redis, queue_name: str) -> None:
    q = queue_name
    _count_end(redis_client, q, TaskResult(id="a", success=True, duration_ms=2500))
    _count_end(redis_client, q, TaskResult(id="b", error="exit 1", duration_ms=300))
    _count_end(redis_client, q, TaskResult(id="c", error="hung", duration_ms=7200_000))
    # Cancelled before it started: counted as an end, but it has no duration.
    _count_end(redis_client, q, TaskResult(id="d", cancelled=True, error="Cancelled."))
    # No duration_ms (its work-horse died): the times say how long it ran.
    times = TaskResult(id="e", error="died", started_at="2025-01-01T00:00:00.000Z", ended_at="2025-01-01T00:00:40.000Z")
    _count_end(redis_client, q, times)
    found = collect(redis_client, q)
    assert value(found, "ccx_tasks_ended_total", queue=q, status=Status.FINISHED) == 1
    assert value(found, "ccx_tasks_ended_total", queue=q, status=Status.FAILED) == 3
    assert value(found, "ccx_tasks_ended_total", queue=q, status=Status.CANCELLED) == 1
    buckets = {le: value(found, "ccx_task_duration_seconds_bucket", queue=q, le=le) for le in ("1.0", "5.0", "60.0")}
    assert buckets == {"1.0": 1, "5.0": 2, "60.0": 3}, "buckets are cumulative"
    assert value(found, "ccx_task_duration_seconds_bucket", queue=q, le="3600.0") == 3
    assert value(found, "ccx_task_duration_seconds_bucket", queue=q, le="+Inf") == 4
    assert value(found, "ccx_task_duration_seconds_count", queue=q) == 4
    assert value(found, "ccx_task_duration_seconds_sum", queue=q) == pytest.approx(2.5 + 0.3 + 7200 + 40)


def test_retries_are_counted_by_reason(redis_client: redis.Redis, queue_name: str) -> None:
    q = queue_name
    metrics.record_retry(redis_client, q, PauseKind.RETRY)
    metrics.record_retry(redis_client, q, PauseKind.RETRY)
    metrics.record_retry(redis_client, q, "stale")  # not a known reason: it appears once seen
    found = collect(redis_client, q)
    assert value(found, "ccx_task_retries_total", queue=q, reason=PauseKind.RETRY) == 2
    assert value(found, "ccx_task_retries_total", queue=q, reason="stale") == 1
    assert value(found, "ccx_task_retries_total", queue=q, reason=AttemptKind.INTERRUPTED) == 0


def test_gauges_read_the_queue_the_pause_and_the_costs(redis_client: redis.Redis, queue_name: str) -> None:
    q = queue_name
    redis_client.rpush(rq_queue_key(q), "t1", "t2", "t3")
    redis_client.zadd(rq_deferred_key(q), {"t4": 1})
    redis_client.zadd(rq_started_key(q), {"t0:exec1": 1})
    now = time.time()
    redis_client.hset(keys.info_key("t0"), mapping={"status": Status.RUNNING, "started_at": clock.iso(now - 42)})
    queue_state.pause(redis_client, q, PauseKind.MANUAL, "by hand")
    redis_client.hset(keys.costs_key(q), mapping={queue_state.TOTAL: 1.25, queue_state.day_field(): 1.25})
    queue_state.set_budget(redis_client, q, 10)
    found = parse(
        generate_latest(_Families(metrics.read_snapshot(redis_client, q, now=now))).decode()  # a fixed "now"
    )
    assert value(found, "ccx_queue_depth", queue=q, state="queued") == 3
    assert value(found, "ccx_queue_depth", queue=q, state="deferred") == 1
    assert value(found, "ccx_tasks_running", queue=q) == 1
    assert value(found, "ccx_running_task_age_seconds", queue=q) == pytest.approx(42, abs=0.01)
    assert value(found, "ccx_queue_paused", queue=q, kind=PauseKind.MANUAL) == 1
    assert value(found, "ccx_queue_paused", queue=q, kind=PauseKind.USAGE_LIMIT) == 0
    assert value(found, "ccx_cost_usd_total", queue=q) == 1.25
    assert value(found, "ccx_cost_today_usd", queue=q) == 1.25
    assert value(found, "ccx_budget_per_day_usd", queue=q) == 10
    # A task in RQ's registry whose record no longer says running (it just ended) is not running.
    redis_client.hset(keys.info_key("t0"), "status", Status.FINISHED)
    found = collect(redis_client, q)
    assert value(found, "ccx_tasks_running", queue=q) == 0
    assert value(found, "ccx_running_task_age_seconds", queue=q) == 0


class _Families:
    """A collector over one fixed snapshot (for a test that needs a fixed clock)."""

    def __init__(self, snapshot: metrics.Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[object]:
        return metrics.families(self.snapshot)


def test_a_scrape_while_redis_is_down_says_so_instead_of_failing() -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    found = collect(client, "ccx")
    assert found == {("ccx_redis_up", frozenset()): 0}


def test_a_task_end_is_counted_once_by_lifecycle(redis_url: str, queue_name: str) -> None:
    runner = Runner(redis_url=redis_url, queue=queue_name)
    try:
        task = runner.submit(agent="command", argv=["true"]).id
        assert lifecycle.end(runner.store, TaskResult(id=task, success=True, duration_ms=10), queue_name)
        assert not lifecycle.end(runner.store, TaskResult(id=task, error="late", duration_ms=10), queue_name)
        found = collect(runner.redis, queue_name)
    finally:
        runner.redis.close()
    assert value(found, "ccx_tasks_ended_total", queue=queue_name, status=Status.FINISHED) == 1
    assert value(found, "ccx_tasks_ended_total", queue=queue_name, status=Status.FAILED) == 0
    assert value(found, "ccx_task_duration_seconds_count", queue=queue_name) == 1


# ---- the worker's flags ---------------------------------------------------------------------------------------


def worker_command(redis_url: str, queue: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**LocalStack(redis_url=redis_url, queue=queue).child_env(), "CCX_HANDLER_URL": "ws://127.0.0.1:1/ws"}
    return subprocess.run(
        [PY, "-m", "runner.cli", "worker", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_a_busy_metrics_port_is_one_sentence_naming_the_flag(redis_url: str, queue_name: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = worker_command(redis_url, queue_name, "--metrics-port", str(port))
    assert done.returncode == 2, done.stderr
    assert f"Port {port} on 127.0.0.1 for the worker's metrics is in use" in done.stderr
    assert "--metrics-port" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_bad_metrics_port_is_a_usage_error(redis_url: str, queue_name: str) -> None:
    done = worker_command(redis_url, queue_name, "--metrics-port", "http")
    assert done.returncode == 2
    assert "--metrics-port must be a port number" in done.stderr and "Traceback" not in done.stderr


# ---- end to end: real tasks, scraped over HTTP -----------------------------------------------------------------


WAIT_FOR_FLAG = """
import os, sys, time
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.02)
"""


def scrape(url: str, token: str | None = None) -> Samples:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(response.read().decode())


@pytest.fixture
def metrics_stack(redis_url: str, queue_name: str, tmp_path: Path) -> Iterator[LocalStack]:
    """A real handler and dashboard on ``queue_name``; the test starts the worker (with its metrics port)."""
    stack = LocalStack(
        redis_url=redis_url,
        queue=queue_name,
        env={"CCX_WORKER_LOCK_TTL": "3", "CCX_RETRY_BACKOFF": "0.2"},
        dashboard_port=0,
    )
    try:
        stack.start_handler(30)
        stack.start_dashboard(30)
        yield stack
    finally:
        stack.stop()
        if stack.worker is not None and stack.worker.stdout is not None:
            stack.worker.stdout.close()


def start_metrics_worker(stack: LocalStack, log_path: Path) -> str:
    """``ccx worker --metrics-port 0``; returns the metrics URL its banner names."""
    with log_path.open("wb") as log:
        stack.worker = subprocess.Popen(
            [PY, "-m", "runner.cli", "worker", "--metrics-port", "0"],
            env=stack.child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    line = first_line(stack.worker, 30)
    assert "serving queue" in line and "; metrics on http://127.0.0.1:" in line, (line, log_path.read_text())
    return line.split("; metrics on ", 1)[1].split()[0]


@pytest.mark.timeout(180)
def test_metrics_move_as_real_tasks_run(metrics_stack: LocalStack, tmp_path: Path) -> None:
    stack, q = metrics_stack, metrics_stack.queue
    board = stack.dashboard_url.rstrip("/") + metrics.PATH
    token = stack.dashboard_token
    assert stack.redis_url is not None and token

    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(board)
    assert refused.value.code == 401
    assert refused.value.headers["Content-Type"] == "application/json", "a scraper gets no login page"
    with pytest.raises(urllib.error.HTTPError) as wrong:
        scrape(board, "not-the-token")
    assert wrong.value.code == 401

    before = scrape(board, token)
    assert value(before, "ccx_redis_up") == 1
    assert value(before, "ccx_tasks_ended_total", queue=q, status=Status.FINISHED) == 0
    assert value(before, "ccx_task_duration_seconds_count", queue=q) == 0

    runner = Runner(redis_url=stack.redis_url, queue=q)
    try:
        runner.pause("metrics test")
        assert value(scrape(board, token), "ccx_queue_paused", queue=q, kind=PauseKind.MANUAL) == 1
        ok = runner.submit(agent="command", argv=[PY, "-c", "print('ok')"])
        # Fails with exit code 3, is tried once more (a retry), and fails again.
        bad = runner.submit(
            agent="command", argv=[PY, "-c", "import sys; sys.exit(3)"], retries=1, retry_on_exit_codes=[3]
        )
        assert value(scrape(board, token), "ccx_queue_depth", queue=q, state="queued") == 2

        worker = start_metrics_worker(stack, tmp_path / "worker.log")
        # The worker holds while paused (it may have the first task in hand for a moment).
        wait_until(
            lambda: (
                (s := scrape(worker))
                and value(s, "ccx_queue_paused", queue=q, kind=PauseKind.MANUAL) == 1
                and value(s, "ccx_queue_depth", queue=q, state="queued") == 2
            ),
            timeout=30,
            what="the worker's scrape to show the paused queue with two tasks waiting",
        )
        runner.resume()
        assert ok.result(timeout=60).success
        failed = bad.result(timeout=60)
        assert not failed.success and failed.exit_code == 3
        ended = wait_until(
            lambda: (
                (s := scrape(worker)) and value(s, "ccx_tasks_ended_total", queue=q, status=Status.FAILED) == 1 and s
            ),
            timeout=30,
            what="the worker's scrape to count the failed task",
        )
        for found in (ended, scrape(board, token)):  # the worker and the dashboard say the same
            assert value(found, "ccx_tasks_ended_total", queue=q, status=Status.FINISHED) == 1
            assert value(found, "ccx_tasks_ended_total", queue=q, status=Status.FAILED) == 1
            assert value(found, "ccx_tasks_ended_total", queue=q, status=Status.CANCELLED) == 0
            assert value(found, "ccx_task_duration_seconds_count", queue=q) == 2
            assert value(found, "ccx_task_duration_seconds_bucket", queue=q, le="+Inf") == 2
            assert value(found, "ccx_task_duration_seconds_sum", queue=q) > 0
            assert value(found, "ccx_task_retries_total", queue=q, reason=PauseKind.RETRY) == 1
            assert value(found, "ccx_queue_depth", queue=q, state="queued") == 0
            assert all(value(found, "ccx_queue_paused", queue=q, kind=kind) == 0 for kind in metrics.PAUSE_KINDS)

        flag = tmp_path / "go"
        slow = runner.submit(agent="command", argv=[PY, "-c", WAIT_FOR_FLAG, str(flag)])
        first = wait_until(
            lambda: (s := scrape(worker)) and value(s, "ccx_tasks_running", queue=q) == 1 and s,
            timeout=30,
            what="the worker's scrape to show the task running",
        )
        age = value(first, "ccx_running_task_age_seconds", queue=q)
        wait_until(
            lambda: value(scrape(board, token), "ccx_running_task_age_seconds", queue=q) >= age + 0.2,
            timeout=30,
            what="the running task's age to grow",
        )
        flag.touch()
        assert slow.result(timeout=60).success
        after = wait_until(
            lambda: (
                (s := scrape(worker))
                and value(s, "ccx_tasks_ended_total", queue=q, status=Status.FINISHED) == 2
                and value(s, "ccx_tasks_running", queue=q) == 0
                and s
            ),
            timeout=30,
            what="the worker's scrape to count the third task",
        )
        assert value(after, "ccx_running_task_age_seconds", queue=q) == 0
        assert value(after, "ccx_task_duration_seconds_count", queue=q) == 3
    finally:
        runner.redis.close()
