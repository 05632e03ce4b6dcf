"""What people read: durations and ages as a person would say them, notices for gaps and interruptions."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from runner.agents.claude import describe_claude_event
from runner.render import Renderer, ago, escape_controls, format_duration, summary


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


# What a terminal acts on instead of showing: set the window title (OSC 0), write the clipboard (OSC 52), wipe
# the screen (CSI 2J), go back over a line (CR), ring the bell, and a C1 CSI (U+009B).
HOSTILE = "a\x1b]52;c;cm0gLXJmIH4=\x07b\x1b]0;title\x07c\x1b[2J\x9b31md\rover\x7f\tand\x01\r\nend\n"
SHOWN = "a\\x1b]52;c;cm0gLXJmIH4=\\x07b\\x1b]0;title\\x07c\\x1b[2J\\x9b31md\\x0dover\\x7f\tand\\x01\nend\n"


def test_every_control_character_but_newline_and_tab_is_shown_as_text() -> None:
    """C0 (ESC, BEL, CR…), DEL and C1 become \\xNN; newline, tab and everything printable stay; CRLF is a newline."""
    controls = [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)]
    for code in controls:
        assert escape_controls(f"<{chr(code)}>") == f"<\\x{code:02x}>"
    kept = "\t\n é ✓ → \u00a0 \\x1b [2J"
    assert escape_controls(kept) == kept
    assert escape_controls(HOSTILE) == SHOWN
    assert escape_controls("ascii\x1b[0m") == "ascii\\x1b[0m" and escape_controls("é\x1b[0m") == "é\\x1b[0m"


def test_output_is_escaped_on_the_streams_asked_and_left_raw_on_the_others() -> None:
    """`ccx follow` on a terminal: the task's output shows its escapes as text; to a pipe (or with --raw) it
    passes unchanged, each stream decided on its own."""
    out, err = io.StringIO(), io.StringIO()
    renderer = Renderer("command", out=out, err=err, escape_out=True, escape_err=False)
    renderer.event({"type": "output", "stream": "stdout", "seq": 0, "data": HOSTILE})
    renderer.event({"type": "output", "stream": "stderr", "seq": 1, "data": HOSTILE})
    assert (out.getvalue(), err.getvalue()) == (SHOWN, HOSTILE)
    out, err = io.StringIO(), io.StringIO()
    renderer = Renderer("command", out=out, err=err, escape_out=False, escape_err=True)
    renderer.event({"type": "output", "stream": "stdout", "seq": 0, "data": HOSTILE})
    renderer.event({"type": "output", "stream": "stderr", "seq": 1, "data": HOSTILE})
    assert (out.getvalue(), err.getvalue()) == (HOSTILE, SHOWN)


def test_a_claude_transcript_is_escaped_too_and_notices_and_the_summary_always_are() -> None:
    text = '{"type":"assistant","message":{"content":[{"type":"text","text":"hi\\u001b]0;owned\\u0007"}]}}\n'
    out, err = io.StringIO(), io.StringIO()
    renderer = Renderer("claude", out=out, err=err, escape_out=True)
    renderer.event({"type": "output", "stream": "stdout", "seq": 0, "data": text + "not json \x1b[2J\n"})
    renderer.event({"type": "interrupted", "attempt": 1, "error": "lost \x1b]52;c;eA==\x07"})
    renderer.finish()
    assert out.getvalue() == "hi\\x1b]0;owned\\x07\nnot json \\x1b[2J\n"
    assert err.getvalue() == "[attempt 1 interrupted: lost \\x1b]52;c;eA==\\x07 It runs again.]\n"
    raw = io.StringIO()
    Renderer("claude", out=raw, err=io.StringIO()).event({"type": "output", "stream": "stdout", "data": text})
    assert raw.getvalue() == "hi\x1b]0;owned\x07\n"
    line = summary({"id": "t", "success": False, "duration_ms": 5, "error": "exited: \x1b]0;x\x07"})
    assert line == "✗ failed in 5 ms (task t)\n  exited: \\x1b]0;x\\x07"
