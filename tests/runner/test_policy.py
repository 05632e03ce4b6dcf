"""What a failed attempt means (runner/policy.py): here, a usage limit met again right after its pause."""

from __future__ import annotations

from typing import Any

import pytest

from runner import policy
from runner.config import Settings
from runner.spec import TaskResult, TaskSpec
from runner.vocabulary import PauseKind

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
    return {"started_at": "…", "ended_at": "…", "error": "usage limit", "kind": PauseKind.USAGE_LIMIT}


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
    assert decision.action == policy.AGAIN and decision.kind == PauseKind.USAGE_LIMIT
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


# --------------------------------------------------------------------------- every branch of decide, as a table

# Settings unlike the defaults and unlike each other, so each expected time shows which setting it came from.
TABLE_SETTINGS = Settings(pause_margin=7.0, limit_backoff=40.0, limit_backoff_max=300.0, retry_backoff=10.0)
RESET = NOW + 1000


def api_error(status: object, error: str = "Claude Code reported an error", output: str = "") -> TaskResult:
    """An attempt Claude Code ended with an API error (``status`` None: no HTTP status, as a network error)."""
    return TaskResult(id="t", error=error, output=output, agent={"is_error": True, "api_error_status": status})


def limit(
    resets_at: Any = RESET,
    kind: str | None = "five_hour",
    status: str = "rejected",
    tool_calls: int = 0,
    session_id: str | None = None,
) -> TaskResult:
    rate_limit: dict[str, Any] = {"status": status, "resetsAt": resets_at}
    if kind is not None:
        rate_limit["rateLimitType"] = kind
    agent: dict[str, Any] = {"is_error": True, "rate_limit": rate_limit, "tool_calls": tool_calls}
    if session_id is not None:
        agent["session_id"] = session_id
    return TaskResult(id="t", error="usage limit", agent=agent)


def exited(code: int) -> TaskResult:
    return TaskResult(id="t", exit_code=code, error=f"exited with code {code}")


def retried(n: int) -> list[dict[str, Any]]:
    """``n`` earlier attempts held back by a retry (what counts against ``retries``)."""
    return [{"error": "API error", "kind": PauseKind.RETRY}] * n


def limits(n: int) -> list[dict[str, Any]]:
    return [limit_attempt()] * n


AGENT = TaskSpec(task="t")
COMMAND = TaskSpec(agent="command", argv=["make"], retry_on_exit_codes=[75], retries=1)
CONTINUING = TaskSpec(task=policy.CONTINUE_PROMPT, resume=SESSION)
FAIL = policy.Decision(policy.FAIL)
USAGE, RETRY, BACKOFF = PauseKind.USAGE_LIMIT, PauseKind.RETRY, PauseKind.BACKOFF


def again(kind: str, reason: str, until: float | None = None, session: str | None = None) -> policy.Decision:
    return policy.Decision(policy.AGAIN, kind, reason, until, session)


CREDENTIALS = again(
    PauseKind.CREDENTIALS,
    "credentials rejected (401): fix the agent's login on the handler's machine, then `ccx resume`",
)

# spec, result, earlier attempts, backoff level, default retries -> decision
DECIDE_CASES = [
    # Final outcomes: nothing runs again, whatever else the result says.
    pytest.param(AGENT, TaskResult(id="t", success=True), [], 0, 2, FAIL, id="success-ends"),
    pytest.param(AGENT, TaskResult(id="t", cancelled=True, agent=api_error(529).agent), [], 0, 2, FAIL,
                 id="cancelled-is-final-even-with-a-529"),
    pytest.param(AGENT, TaskResult(id="t", timed_out=True, agent=limit().agent), [], 0, 2, FAIL,
                 id="timed-out-is-final-even-with-a-usage-limit"),
    pytest.param(COMMAND, TaskResult(id="t", interrupted=True, exit_code=75), [], 0, 0, FAIL,
                 id="interrupted-is-not-the-policys-to-retry"),
    # Usage limit: pause until the reset plus the margin, the task back to the front.
    pytest.param(AGENT, limit(), [], 0, 2, again(USAGE, "five-hour usage limit", RESET + 7.0),
                 id="limit-first-waits-for-the-reset-plus-the-margin"),
    pytest.param(AGENT, limit(kind="seven_day"), [], 0, 2, again(USAGE, "weekly usage limit", RESET + 7.0),
                 id="limit-weekly-is-named"),
    pytest.param(AGENT, limit(kind="seven_day_opus"), [], 0, 2,
                 again(USAGE, "weekly Opus usage limit", RESET + 7.0), id="limit-weekly-opus-is-named"),
    pytest.param(AGENT, limit(kind="seven_day_sonnet"), [], 0, 2,
                 again(USAGE, "weekly Sonnet usage limit", RESET + 7.0), id="limit-weekly-sonnet-is-named"),
    pytest.param(AGENT, limit(kind="overage"), [], 0, 2, again(USAGE, "usage limit", RESET + 7.0),
                 id="limit-of-an-unknown-type-is-a-usage-limit"),
    pytest.param(AGENT, limit(kind=None), [], 0, 2, again(USAGE, "usage limit", RESET + 7.0),
                 id="limit-without-a-type-is-a-usage-limit"),
    pytest.param(AGENT, limit(resets_at=int(RESET)), [], 0, 2, again(USAGE, "five-hour usage limit", RESET + 7.0),
                 id="limit-reset-as-an-integer"),
    pytest.param(AGENT, limit(), retried(2), 0, 2, again(USAGE, "five-hour usage limit", RESET + 7.0),
                 id="limit-ignores-retries-used-up"),
    pytest.param(AGENT, limit(resets_at=NOW - 10), [], 0, 2, again(USAGE, "five-hour usage limit", NOW - 3.0),
                 id="limit-first-with-a-reset-already-past-waits-the-margin-only"),
    pytest.param(AGENT, limit(), limits(3), 0, 2, again(USAGE, "five-hour usage limit", RESET + 7.0),
                 id="limit-repeated-with-a-later-reset-waits-for-the-reset"),
    pytest.param(AGENT, limit(resets_at=NOW - 10), limits(1), 0, 2, again(USAGE, "five-hour usage limit", NOW + 40.0),
                 id="limit-repeated-once-past-its-reset-backs-off"),
    pytest.param(AGENT, limit(resets_at=NOW - 10), limits(3), 0, 2,
                 again(USAGE, "five-hour usage limit", NOW + 160.0), id="limit-repeated-thrice-doubles-twice"),
    pytest.param(AGENT, limit(resets_at=NOW - 10), limits(4), 0, 2,
                 again(USAGE, "five-hour usage limit", NOW + 300.0), id="limit-backoff-capped-at-its-max"),
    pytest.param(AGENT, limit(resets_at=NOW - 10), [*limits(2), *retried(1)], 0, 2,
                 again(USAGE, "five-hour usage limit", NOW - 3.0), id="limit-repeats-count-only-the-latest-in-a-row"),
    pytest.param(AGENT, limit(tool_calls=3, session_id="s-progress"), [], 0, 2,
                 again(USAGE, "five-hour usage limit", RESET + 7.0, "s-progress"),
                 id="limit-after-progress-continues-its-own-session"),
    pytest.param(AGENT, limit(tool_calls=3), [], 0, 2, again(USAGE, "five-hour usage limit", RESET + 7.0),
                 id="limit-after-progress-without-a-session-id-starts-afresh"),
    pytest.param(CONTINUING, limit(tool_calls=0, session_id="s-new"), [], 0, 2,
                 again(USAGE, "five-hour usage limit", RESET + 7.0, SESSION),
                 id="limit-continuing-without-progress-continues-the-same-session"),
    pytest.param(CONTINUING, limit(tool_calls=1, session_id="s-new"), [], 0, 2,
                 again(USAGE, "five-hour usage limit", RESET + 7.0, "s-new"),
                 id="limit-continuing-with-progress-continues-the-newer-session"),
    pytest.param(TaskSpec(task=policy.CONTINUE_PROMPT), limit(), [], 0, 2,
                 again(USAGE, "five-hour usage limit", RESET + 7.0), id="limit-continue-prompt-without-resume-afresh"),
    pytest.param(TaskSpec(task="own prompt", resume=SESSION), limit(), [], 0, 2,
                 again(USAGE, "five-hour usage limit", RESET + 7.0), id="limit-submitters-own-resume-starts-afresh"),
    # Not a usage limit after all: the rest of decide applies.
    pytest.param(AGENT, limit(status="allowed"), [], 0, 2, FAIL, id="limit-allowed-is-no-limit"),
    pytest.param(AGENT, limit(resets_at="soon"), [], 0, 2, FAIL, id="limit-without-a-numeric-reset-is-no-limit"),
    pytest.param(AGENT, limit(resets_at=None), [], 0, 2, FAIL, id="limit-without-a-reset-is-no-limit"),
    # 429 with no reset time: the queue backs off, doubling per level, capped.
    pytest.param(AGENT, api_error(429), [], 0, 2, again(BACKOFF, "rate limited (429) with no reset time; waiting 40 s",
                                                        NOW + 40.0), id="429-first-backs-off"),
    pytest.param(AGENT, api_error(429), [], 2, 2, again(BACKOFF, "rate limited (429) with no reset time; waiting 160 s",
                                                        NOW + 160.0), id="429-doubles-per-level"),
    pytest.param(AGENT, api_error(429), retried(5), 5, 0,
                 again(BACKOFF, "rate limited (429) with no reset time; waiting 300 s", NOW + 300.0),
                 id="429-capped-and-never-counted-against-retries"),
    # 401: held until someone resumes the queue.
    pytest.param(AGENT, api_error(401), retried(2), 0, 2, CREDENTIALS, id="401-holds-the-queue-for-a-resume"),
    # No API status: a network error is retried; no login at all is not.
    pytest.param(AGENT, api_error(None, "Claude Code reported an error: Not logged in · Please run /login"), [], 0, 2,
                 FAIL, id="not-logged-in-in-the-error-fails"),
    pytest.param(AGENT, api_error(None, output="Not logged in · Please run /login"), [], 0, 2, FAIL,
                 id="not-logged-in-in-the-output-fails"),
    pytest.param(AGENT, api_error(None, output="x" * 1000 + "Not logged in"), [], 0, 2,
                 again(RETRY, "network error; retry 1/2 in 10 s", NOW + 10.0),
                 id="not-logged-in-past-the-outputs-first-1000-characters-is-not-looked-for"),
    pytest.param(AGENT, api_error(None), [], 0, 2, again(RETRY, "network error; retry 1/2 in 10 s", NOW + 10.0),
                 id="network-error-retried"),
    pytest.param(AGENT, api_error(None), [*limits(2), *retried(1)], 0, 2,
                 again(RETRY, "network error; retry 2/2 in 20 s", NOW + 20.0),
                 id="network-error-second-retry-doubles-and-counts-only-retries"),
    pytest.param(AGENT, api_error(None), retried(2), 0, 2, FAIL, id="network-error-retries-used-up"),
    pytest.param(AGENT, api_error(529), [], 0, 2, again(RETRY, "API error 529; retry 1/2 in 10 s", NOW + 10.0),
                 id="529-retried"),
    pytest.param(AGENT, api_error(500), [], 0, 2, again(RETRY, "API error 500; retry 1/2 in 10 s", NOW + 10.0),
                 id="500-retried"),
    pytest.param(AGENT, api_error(503), retried(1), 0, 3, again(RETRY, "API error 503; retry 2/3 in 20 s", NOW + 20.0),
                 id="503-retried-up-to-the-default-retries"),
    pytest.param(TaskSpec(task="t", retries=1), api_error(500), retried(1), 0, 3, FAIL,
                 id="5xx-spec-retries-override-the-default"),
    pytest.param(TaskSpec(task="t", retries=0), api_error(529), [], 0, 2, FAIL, id="5xx-retries-0-never-retries"),
    pytest.param(AGENT, api_error(400), [], 0, 2, FAIL, id="400-never-retries"),
    pytest.param(AGENT, api_error(404), [], 0, 2, FAIL, id="other-4xx-never-retries"),
    pytest.param(AGENT, api_error("500"), [], 0, 2, FAIL, id="status-not-a-number-fails"),
    # Exit codes a command's spec calls transient.
    pytest.param(COMMAND, exited(75), [], 0, 0, again(RETRY, "exit code 75; retry 1/1 in 10 s", NOW + 10.0),
                 id="exit-code-listed-retried"),
    pytest.param(COMMAND, exited(75), retried(1), 0, 0, FAIL, id="exit-code-listed-retries-used-up"),
    pytest.param(COMMAND, exited(1), [], 0, 0, FAIL, id="exit-code-not-listed-fails"),
    pytest.param(TaskSpec(agent="command", argv=["make"], retry_on_exit_codes=[75]), exited(75), retried(1), 0, 2,
                 again(RETRY, "exit code 75; retry 2/2 in 20 s", NOW + 20.0),
                 id="exit-code-retries-default-when-the-spec-has-none"),
    pytest.param(TaskSpec(agent="command", argv=["make"], retry_on_exit_codes=[75]), exited(75), [], 0, 0, FAIL,
                 id="exit-code-listed-with-no-retries-fails"),
    pytest.param(TaskSpec(agent="command", argv=["make"], retries=2), exited(75), [], 0, 2, FAIL,
                 id="exit-code-with-no-list-fails"),
    pytest.param(COMMAND, TaskResult(id="t", exit_code=75, agent={"is_error": True, "api_error_status": 400}), [], 0,
                 0, FAIL, id="an-api-error-decides-before-the-exit-code"),
    pytest.param(COMMAND, TaskResult(id="t", exit_code=75, agent={"is_error": False, "api_error_status": 500}), [], 0,
                 0, again(RETRY, "exit code 75; retry 1/1 in 10 s", NOW + 10.0),
                 id="an-api-status-without-is-error-is-no-api-error"),
    pytest.param(AGENT, TaskResult(id="t", agent={"is_error": True}), [], 0, 2, FAIL,
                 id="agent-error-without-an-api-status-fails"),
    # Anything else.
    pytest.param(AGENT, TaskResult(id="t", exit_code=1, error="exited with code 1"), [], 0, 2, FAIL,
                 id="plain-failure-fails"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "result", "attempts", "backoff_level", "default_retries", "expected"), DECIDE_CASES)
def test_decide(
    spec: TaskSpec,
    result: TaskResult,
    attempts: list[dict[str, Any]],
    backoff_level: int,
    default_retries: int,
    expected: policy.Decision,
) -> None:
    decision = policy.decide(spec, result, attempts, TABLE_SETTINGS, backoff_level, default_retries, now=NOW)
    assert decision == expected
