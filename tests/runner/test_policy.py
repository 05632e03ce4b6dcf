"""What a failed attempt means (runner/policy.py): here, a usage limit met again right after its pause."""

from __future__ import annotations

from typing import Any

from runner import policy, queue_state
from runner.config import Settings
from runner.spec import TaskResult, TaskSpec

NOW = 1_800_000_000.0
SESSION = "0b6c3a4e-session-with-the-work-so-far"


def limited(resets_at: float, tool_calls: int = 0, session_id: str | None = "new-session") -> TaskResult:
    """An attempt a subscription's usage limit stopped (as runner/agents/claude.py reports it)."""
    agent: dict[str, Any] = {
        "is_error": True,
        "rate_limit": {"status": "rejected", "resetsAt": resets_at, "rateLimitType": "five_hour"},
        "tool_calls": tool_calls,
    }
    if session_id is not None:
        agent["session_id"] = session_id
    return TaskResult(id="t", error="usage limit", agent=agent)


def limit_attempt() -> dict[str, Any]:
    """An earlier attempt of the task, as job.py records it when a usage limit paused the queue."""
    return {"started_at": "…", "ended_at": "…", "error": "usage limit", "kind": queue_state.USAGE_LIMIT}


def test_the_margin_after_a_reset_is_seconds_by_default() -> None:
    settings = Settings()
    assert settings.pause_margin == 5.0
    decision = policy.decide(TaskSpec(task="t"), limited(NOW + 600), [], settings, now=NOW)
    assert decision.until == NOW + 600 + 5.0


def test_a_limit_met_again_right_after_a_resume_pauses_again_and_keeps_the_task() -> None:
    """The first request after the pause meets the limit again (a new, later reset): the queue pauses again
    until then and the task goes back to the front (AGAIN), however many times it was limited before."""
    settings = Settings()
    attempts = [limit_attempt(), limit_attempt(), limit_attempt()]
    decision = policy.decide(TaskSpec(task="t"), limited(NOW + 3 * 3600), attempts, settings, now=NOW)
    assert decision.action == policy.AGAIN and decision.kind == queue_state.USAGE_LIMIT
    assert decision.until == NOW + 3 * 3600 + settings.pause_margin


def test_a_limit_whose_reset_has_passed_backs_off_rather_than_looping() -> None:
    """The API still refuses though its reset time is behind us (clocks differ): each repeat waits longer,
    from ``CCX_LIMIT_BACKOFF``, instead of running the task again at once."""
    settings = Settings()
    first = policy.decide(TaskSpec(task="t"), limited(NOW - 10), [limit_attempt()], settings, now=NOW)
    again = policy.decide(TaskSpec(task="t"), limited(NOW - 10), [limit_attempt(), limit_attempt()], settings, now=NOW)
    assert first.action == again.action == policy.AGAIN
    assert first.until == NOW + settings.limit_backoff
    assert again.until == NOW + 2 * settings.limit_backoff


def test_a_first_limit_after_a_reset_already_past_still_waits_only_the_margin() -> None:
    """No earlier limit: nothing says the API will refuse again, so no backoff; the margin only."""
    decision = policy.decide(TaskSpec(task="t"), limited(NOW - 10), [], Settings(), now=NOW)
    assert decision.until == NOW - 10 + Settings().pause_margin


def test_a_continued_session_limited_before_any_progress_is_continued_again_not_restarted() -> None:
    """The attempt continued the session with the work so far (job.py gives it that session and the continue
    prompt) and met the limit at its first request: the next attempt continues that session again. Starting
    afresh would throw the earlier attempts' work away."""
    spec = TaskSpec(task=policy.CONTINUE_PROMPT, resume=SESSION)
    decision = policy.decide(spec, limited(NOW + 600, tool_calls=0), [limit_attempt()], Settings(), now=NOW)
    assert decision.action == policy.AGAIN and decision.continue_session == SESSION


def test_an_attempt_that_progressed_is_continued_in_its_own_session() -> None:
    spec = TaskSpec(task=policy.CONTINUE_PROMPT, resume=SESSION)
    decision = policy.decide(spec, limited(NOW + 600, tool_calls=2, session_id="later"), [], Settings(), now=NOW)
    assert decision.continue_session == "later"


def test_a_submitters_own_resume_is_not_taken_for_a_continuation() -> None:
    """``resume`` given by the submitter, with their own prompt: no progress, so the task simply runs again."""
    spec = TaskSpec(task="review the diff", resume=SESSION)
    decision = policy.decide(spec, limited(NOW + 600), [], Settings(), now=NOW)
    assert decision.continue_session is None


def test_not_logged_in_fails_at_once_while_a_network_error_is_retried() -> None:
    """Claude Code without a login answers is_error with no API status, as a network error does: trying again only
    waits out the retry backoff (30 s, then 60 s) to fail the same way, so it fails at once."""
    agent = {"is_error": True, "api_error_status": None}
    spec = TaskSpec(task="hi")
    no_login = TaskResult(id="t", error="Claude Code reported an error: Not logged in · Please run /login", agent=agent)
    network = TaskResult(id="t", error="Claude Code reported an error: Connection error.", agent=agent)
    assert policy.decide(spec, no_login, [], Settings(), default_retries=2, now=NOW).action == policy.FAIL
    assert policy.decide(spec, network, [], Settings(), default_retries=2, now=NOW).action == policy.AGAIN
