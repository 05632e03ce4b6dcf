"""One attempt in the work-horse (runner/job.py): which earlier runs it asks the handler for."""

from __future__ import annotations

from runner.job import _unread_runs
from runner.vocabulary import AttemptKind


def test_an_attempt_collects_the_unread_runs_since_the_last_answered_one() -> None:
    attempts = [
        {"kind": AttemptKind.INTERRUPTED, "run": "R1"},  # answered later by R2's failure: nothing left to collect
        {"kind": "retry", "error": "failed"},
        {"kind": AttemptKind.INTERRUPTED, "run": "R3"},
        {"kind": AttemptKind.STALE},  # refused before it started
        {"kind": AttemptKind.INTERRUPTED},  # a run of an older worker that recorded no name
        {"kind": AttemptKind.INTERRUPTED, "run": "R5"},
    ]
    assert _unread_runs(attempts) == ["R3", "R5"]
    assert _unread_runs([]) == []
    assert _unread_runs([{"kind": "usage_limit"}]) == []
