"""What an attempt that did not succeed means: end the task, or hold the queue and run the task again.

A night of agent tasks mostly fails on the API, not on the task, and failing
(which cancels every dependent) is the wrong answer to that:

* **Usage limit** (a subscription's ``rate_limit_event`` with ``status: rejected``):
  the queue pauses until ``resetsAt`` plus ``CCX_PAUSE_MARGIN`` (5 s); the task goes
  back to the front, as often as it meets the limit. If the attempt had made
  progress (it used a tool), the next one continues its session (``--resume
  <session_id>`` with :data:`CONTINUE_PROMPT`); one that was continuing and made none
  continues the same session again; otherwise it starts afresh. A limit met again
  right after its pause waits at least ``CCX_LIMIT_BACKOFF`` doubled per repeat
  (a reset time already past would otherwise run it again at once).
* **429 with no reset time** (an API key): the queue pauses with backoff,
  ``CCX_LIMIT_BACKOFF`` seconds doubled at each consecutive one, at most
  ``CCX_LIMIT_BACKOFF_MAX``.
* **401**: the queue pauses until someone resumes it ("credentials rejected"):
  every later task would fail the same way.
* **529, other 5xx, or a network error** (``api_error_status`` null): the task runs
  again up to ``retries`` times (default 2), the queue holding
  ``CCX_RETRY_BACKOFF`` seconds doubled each time. 400 never retries.
* **Commands**: ``retries`` times when the exit code is in ``retry_on_exit_codes``.

Timeouts, hangs (``idle_timeout``) and cancels are final.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from runner.config import Settings
from runner.spec import TaskResult, TaskSpec
from runner.vocabulary import PauseKind

FAIL = "fail"
AGAIN = "again"

CONTINUE_PROMPT = (
    "You were interrupted by a usage limit, which has now reset. Continue the task where you stopped, "
    "without redoing finished work."
)
LIMIT_NAMES = {
    "five_hour": "five-hour usage limit",
    "seven_day": "weekly usage limit",
    "seven_day_opus": "weekly Opus usage limit",
    "seven_day_sonnet": "weekly Sonnet usage limit",
}


@dataclass(frozen=True)
class Decision:
    action: str
    kind: str = ""
    """The queue's pause (runner.queue_state kinds) while the task waits to run again."""
    reason: str = ""
    until: float | None = None
    continue_session: str | None = None


def _retries_used(attempts: list[dict[str, Any]]) -> int:
    return sum(1 for attempt in attempts if attempt.get("kind") == PauseKind.RETRY)


def _limits_in_a_row(attempts: list[dict[str, Any]]) -> int:
    """How many of the latest attempts a usage limit stopped, one after another."""
    count = 0
    for attempt in reversed(attempts):
        if attempt.get("kind") != PauseKind.USAGE_LIMIT:
            break
        count += 1
    return count


def _usage_limit(
    spec: TaskSpec,
    info: dict[str, Any],
    limit: dict[str, Any],
    attempts: list[dict[str, Any]],
    settings: Settings,
    now: float,
) -> Decision:
    """Pause until the reset (plus the margin), the task back to the front, however often it meets the limit."""
    name = LIMIT_NAMES.get(str(limit.get("rateLimitType")), "usage limit")
    until = float(limit["resetsAt"]) + settings.pause_margin
    repeats = _limits_in_a_row(attempts)
    if repeats:
        # Met again right after a pause: if the reset time is already behind us (clocks differ, or the API
        # lifts the limit late), the margin alone would run the task again at once, again and again.
        until = max(until, now + min(settings.limit_backoff * 2 ** (repeats - 1), settings.limit_backoff_max))
    if bool(info.get("tool_calls")) and isinstance(info.get("session_id"), str):
        session: str | None = info["session_id"]  # it made progress: the next attempt goes on from here
    elif spec.task == CONTINUE_PROMPT and spec.resume:
        # It was continuing earlier progress and met the limit before adding any: continue the same again,
        # rather than start afresh and lose what the earlier attempts did.
        session = spec.resume
    else:
        session = None
    return Decision(AGAIN, PauseKind.USAGE_LIMIT, name, until, session)


def _not_logged_in(result: TaskResult) -> bool:
    # Claude Code's answer when it has no login at all: is_error with no API status, like a network error.
    return "Not logged in" in (result.error or "") or "Not logged in" in (result.output or "")[:1000]


def decide(
    spec: TaskSpec,
    result: TaskResult,
    attempts: list[dict[str, Any]],
    settings: Settings,
    backoff_level: int = 0,
    default_retries: int = 0,
    now: float | None = None,
) -> Decision:
    """What to do after ``result`` (``attempts``: the task's earlier ones)."""
    now = time.time() if now is None else now
    if result.success or result.cancelled or result.timed_out or result.interrupted:
        return Decision(FAIL)
    retries = spec.retries if spec.retries is not None else default_retries
    info = result.agent or {}
    limit = info.get("rate_limit") or {}
    if limit.get("status") == "rejected" and isinstance(limit.get("resetsAt"), (int, float)):
        return _usage_limit(spec, info, limit, attempts, settings, now)
    if info.get("is_error") and "api_error_status" in info:
        status = info.get("api_error_status")
        if status == 429:
            delay = min(settings.limit_backoff * 2**backoff_level, settings.limit_backoff_max)
            return Decision(
                AGAIN, PauseKind.BACKOFF, f"rate limited (429) with no reset time; waiting {delay:g} s", now + delay
            )
        if status == 401:
            return Decision(
                AGAIN,
                PauseKind.CREDENTIALS,
                "credentials rejected (401): fix the agent's login on the handler's machine, then `ccx resume`",
            )
        if status is None and _not_logged_in(result):
            return Decision(FAIL)  # no network error: trying again would only wait out the backoff to fail again
        if (status is None or status == 529 or (isinstance(status, int) and status >= 500)) and (
            _retries_used(attempts) < retries
        ):
            n = _retries_used(attempts) + 1
            what = f"API error {status}" if status is not None else "network error"
            delay = settings.retry_backoff * 2 ** (n - 1)
            return Decision(AGAIN, PauseKind.RETRY, f"{what}; retry {n}/{retries} in {delay:g} s", now + delay)
        return Decision(FAIL)
    if spec.retry_on_exit_codes and result.exit_code in spec.retry_on_exit_codes and _retries_used(attempts) < retries:
        n = _retries_used(attempts) + 1
        delay = settings.retry_backoff * 2 ** (n - 1)
        return Decision(
            AGAIN, PauseKind.RETRY, f"exit code {result.exit_code}; retry {n}/{retries} in {delay:g} s", now + delay
        )
    return Decision(FAIL)
