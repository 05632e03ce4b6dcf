"""What people read: durations and ages as a person would say them, notices for gaps and interruptions."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from runner.render import Renderer, ago, format_duration, summary


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0.4, "0.4 ms"),
        (3.2, "3 ms"),
        (999.4, "999 ms"),
        (1250, "1.25 s"),
        (65_000, "1 min 05 s"),
        (7_380_000, "2 h 03 min"),
    ],
)
def test_durations(ms: float, text: str) -> None:
    assert format_duration(ms) == text


def test_a_task_under_5_ms_is_said_in_ms_not_as_zero_seconds() -> None:
    line = summary({"id": "t", "success": True, "duration_ms": 3.4})
    assert line == "✓ finished in 3 ms (task t)"


def test_ages() -> None:
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert ago("2026-12-01T11:59:48.000Z", now) == "12 s ago"
    assert ago("2026-12-01T11:57:00.000Z", now) == "3 min ago"
    assert ago("2026-12-01T09:30:00.000Z", now) == "2 h ago"
    assert ago("2026-11-27T12:00:00.000Z", now) == "4 days ago"
    assert ago("2026-11-30T11:00:00.000Z", now) == "1 day ago"
    assert ago(None, now) == "-"


def test_gap_and_interruption_notices_go_to_stderr() -> None:
    out, err = io.StringIO(), io.StringIO()
    renderer = Renderer("command", out=out, err=err)
    renderer.event({"type": "gap", "missing": 1234, "from_seq": 0})
    renderer.event({"type": "interrupted", "attempt": 1, "error": "The handler shut down."})
    renderer.event({"type": "output", "stream": "stdout", "seq": 1234, "data": "tail\n"})
    assert out.getvalue() == "tail\n"
    assert err.getvalue().splitlines() == [
        "[1,234 earlier output frame(s) are no longer in the task's log: it keeps only the newest CCX_LOG_MAXLEN entries]",
        "[attempt 1 interrupted: The handler shut down. It runs again.]",
    ]


def test_claude_retries_fallbacks_and_limits_read_as_progress() -> None:
    from runner.render import describe_claude_event

    retry = {"type": "system", "subtype": "api_retry", "attempt": 3, "max_retries": 10, "retry_delay_ms": 2000,
             "error_status": 429, "error": "rate_limit"}  # fmt: skip
    assert describe_claude_event(retry) == ["↻ retrying 3/10 after 429 (rate_limit, in 2.0 s)"]
    network = {**retry, "error_status": None, "error": "unknown"}
    assert describe_claude_event(network) == ["↻ retrying 3/10 after a network error (unknown, in 2.0 s)"]
    fallback = {"type": "system", "subtype": "model_fallback", "trigger": "overloaded", "fallback_model": "m2"}
    assert describe_claude_event(fallback) == ["↘ falling back to m2 (overloaded)"]
    warning = {"type": "rate_limit_event",
               "rate_limit_info": {"status": "allowed_warning", "utilization": 0.95, "rateLimitType": "five_hour"}}  # fmt: skip
    assert describe_claude_event(warning) == ["⚠ 95% of the five_hour limit used"]
    rejected = {"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "rateLimitType": "seven_day"}}
    assert describe_claude_event(rejected) == ["■ usage limit reached (seven_day); the queue pauses until it resets"]
