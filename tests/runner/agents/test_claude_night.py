"""A night of Claude tasks: usage limits pause the queue, transient errors are retried, nothing is cancelled.

The real Claude Code CLI against the local stand-in API (tests/support/fake_anthropic.py), through the
whole pipeline; ``CLAUDE_CODE_OAUTH_TOKEN=dummy`` gives the subscription behaviour, and the CLI's own
retries are cut to one (CLAUDE_CODE_MAX_RETRIES=1) so that the tests stay fast. The stack's pause margin
and backoffs are fractions of a second here; their defaults are a minute.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from runner import clock
from runner.client import Runner, TaskHandle
from runner.spec import TaskResult
from runner.stack import LocalStack
from runner.vocabulary import EventType
from tests.conftest import running_stack
from tests.runner.agents import test_claude_real_cli
from tests.runner.agents.test_claude_real_cli import task_env, user_texts
from tests.support.claude_cli import claude_env
from tests.support.fake_anthropic import FakeAnthropic, Reply
from tests.support.lifecycle import queue_events, subscribed
from tests.support.processes import wait_until

pytestmark = pytest.mark.timeout(300)
claude_bin = test_claude_real_cli.claude_bin  # the CLI, installed once (a fixture)
WAIT = 120.0


@pytest.fixture
def stack(claude_bin: Path, redis_url: str, queue_name: str, tmp_path: Path) -> Iterator[LocalStack]:
    with running_stack(
        redis_url,
        queue_name,
        tmp_path / "worker.log",
        CCX_CLAUDE_BIN=str(claude_bin),
        CCX_PAUSE_MARGIN="0.5",
        CCX_RETRY_BACKOFF="0.2",
        CCX_LIMIT_BACKOFF="1",
    ) as stack:
        yield stack


def subscription_env(url: str, home: Path) -> dict[str, str]:
    env = claude_env(url, home, {"CLAUDE_CODE_MAX_RETRIES": "1"})
    env.pop("ANTHROPIC_API_KEY")
    env["CLAUDE_CODE_OAUTH_TOKEN"] = "dummy"
    return env


def api_key_env(url: str, home: Path) -> dict[str, str]:
    return claude_env(url, home, {"CLAUDE_CODE_MAX_RETRIES": "1"})


def prompt_of(body: dict[str, Any]) -> str:
    return " ".join(user_texts(body))


def result_of(handle: TaskHandle) -> TaskResult:
    return handle.result(timeout=WAIT)


def test_a_usage_limit_pauses_the_queue_and_the_chain_goes_on_when_it_resets(
    runner: Runner, stack: LocalStack, redis_client: redis.Redis, queue_name: str, tmp_path: Path
) -> None:
    """Three tasks in a chain; the second hits a five-hour limit resetting 5 s ahead. The queue pauses with
    the reason and resume time, resumes by itself, the second task succeeds on its second attempt, the third
    runs after it. Nothing is cancelled."""
    limited: dict[str, float] = {}

    def script(body: dict[str, Any]) -> Reply:
        # Which task is asking: the latest named, since a request may carry context from the earlier ones.
        text = prompt_of(body)
        task = next(name for name in ("third", "second", "first") if f"the {name} task" in text)
        if task == "second" and not limited:
            # Ahead of the moment of the request: the CLI ignores a reset time already past when it reads it.
            limited["resets_at"] = time.time() + 5
            return Reply.usage_limit(limited["resets_at"])
        return Reply.text(f"did {task}")

    home = tmp_path / "home"
    # The pause is read from its announcement, not by polling the live state: on a busy machine the CLI may
    # take seconds to exit after the 429, and a pause that ends soon after it begins is easily polled past.
    with FakeAnthropic(script) as api, subscribed(redis_client) as lifecycle:
        env = task_env(stack, subscription_env(api.url, home))
        first = runner.submit("the first task", env=env)
        second = runner.submit("the second task", env=env, after=first.id)
        third = runner.submit("the third task", env=env, after=second.id)
        paused, resumed = queue_events(lifecycle, queue_name, 2, 60, types=(EventType.PAUSED, EventType.RESUMED))
        assert paused["type"] == EventType.PAUSED and resumed["type"] == EventType.RESUMED, (paused, resumed)
        assert paused["kind"] == resumed["kind"] == "usage_limit" and paused["reason"] == "five-hour usage limit"
        until = clock.epoch(paused["until"])
        assert abs(until - (int(limited["resets_at"]) + 0.5)) < 1
        results = [result_of(handle) for handle in (first, second, third)]
    assert [r.success for r in results] == [True, True, True], [r.error for r in results]
    assert results[1].output == "did second"
    assert [a["kind"] for a in results[1].attempts] == ["usage_limit"]
    assert results[2].started_at > results[1].ended_at  # type: ignore[operator]
    assert not runner.queue_state().paused
    assert all(not r.cancelled for r in results)


def test_a_529_is_retried_by_policy_and_each_attempt_is_recorded(
    runner: Runner, stack: LocalStack, tmp_path: Path
) -> None:
    """Overloaded (529) for the CLI's attempt and its one retry: the task fails that attempt, the policy runs
    it again after its backoff, and the API answering now, it succeeds."""
    # The CLI's first try and its one retry (CLAUDE_CODE_MAX_RETRIES=1) are overloaded; the next one answers.
    with FakeAnthropic([Reply.error(529, "overloaded_error", "Overloaded")] * 2 + [Reply.text("made it")]) as api:
        handle = runner.submit("flaky API", env=task_env(stack, api_key_env(api.url, tmp_path / "home")))
        result = result_of(handle)
    assert result.success, result.error
    assert result.output == "made it"
    assert [a["kind"] for a in result.attempts] == ["retry"]
    assert "API error 529; retry 1/2" in result.attempts[0]["reason"]


def test_an_api_key_429_pauses_with_backoff_then_succeeds(runner: Runner, stack: LocalStack, tmp_path: Path) -> None:
    with FakeAnthropic(
        [Reply.error(429, "rate_limit_error", "Rate limited")] * 2 + [Reply.text("after backoff")]
    ) as api:
        handle = runner.submit("rate limited", env=task_env(stack, api_key_env(api.url, tmp_path / "home")))
        paused = wait_until(lambda: runner.queue_state().paused and runner.queue_state(), 60, what="the backoff")
        assert paused.kind == "backoff" and "429" in paused.reason
        result = result_of(handle)
    assert result.success and result.output == "after backoff"
    assert [a["kind"] for a in result.attempts] == ["backoff"]


def test_rejected_credentials_pause_the_queue_until_resumed(runner: Runner, stack: LocalStack, tmp_path: Path) -> None:
    replies = [Reply.error(401, "authentication_error", "invalid x-api-key")] * 4 + [Reply.text("logged in")]
    with FakeAnthropic(replies) as api:
        handle = runner.submit("needs a login", env=task_env(stack, api_key_env(api.url, tmp_path / "home")))
        paused = wait_until(lambda: runner.queue_state().paused and runner.queue_state(), 60, what="the pause")
        assert paused.kind == "credentials" and paused.until is None and "`ccx resume`" in paused.reason
        assert handle.status() == "queued"
        while len(api._script) > 1:  # the operator fixes the login: the API answers from now on
            api._script.pop(0)
        assert runner.resume()
        result = result_of(handle)
    assert result.success and result.output == "logged in"


def test_a_pause_survives_a_worker_restart(runner: Runner, stack: LocalStack, tmp_path: Path) -> None:
    """`ccx pause` holds the queue across a worker restart: nothing runs until `ccx resume`."""
    runner.pause("maintenance")
    marker = tmp_path / "ran"
    handle = runner.submit(agent="command", argv=["touch", str(marker)])
    assert stack.worker is not None
    log = tmp_path / "worker.log"
    held = f"queue {runner.settings.queue} is paused — maintenance"
    wait_until(lambda: held in log.read_text(), 30, what="the worker to hold the task")
    stack.worker.terminate()
    stack.worker.wait(30)
    before = log.read_text().count(held)
    stack.start_worker(30)
    # The new worker takes the task, finds the queue paused and puts it back: it holds too.
    wait_until(lambda: log.read_text().count(held) > before, 30, what="the restarted worker to hold the task")
    assert not marker.exists() and handle.status() == "queued"
    state = runner.queue_state()
    assert state.paused and state.reason == "maintenance"
    assert runner.resume()
    assert handle.result(timeout=60).success and marker.exists()


def test_a_command_is_retried_on_the_exit_codes_its_submitter_names(runner: Runner, tmp_path: Path) -> None:
    flag = tmp_path / "tried"
    script = f"if [ -e {flag} ]; then echo second; else touch {flag}; exit 75; fi"
    handle = runner.submit(agent="command", argv=["sh", "-c", script], retries=1, retry_on_exit_codes=[75])
    result = result_of(handle)
    assert (result.success, result.output) == (True, "second\n")
    assert [a["kind"] for a in result.attempts] == ["retry"] and "exit code 75" in result.attempts[0]["reason"]
    other = runner.submit(agent="command", argv=["sh", "-c", "exit 3"], retries=1, retry_on_exit_codes=[75])
    assert result_of(other).attempts == []


def test_costs_add_up_per_queue_and_a_daily_budget_stops_the_next_task(
    runner: Runner, stack: LocalStack, tmp_path: Path
) -> None:
    """Every result carries the cost the CLI reported; the queue keeps today's and all-time totals; once
    today's spend reaches the budget, the queue pauses ("budget reached") before the next task starts."""
    with FakeAnthropic([Reply.text("one"), Reply.text("two")]) as api:
        env = task_env(stack, api_key_env(api.url, tmp_path / "home"))
        first = result_of(runner.submit("first", env=env))
        cost = first.agent["total_cost_usd"]
        assert isinstance(cost, float) and cost > 0
        spent = runner.costs()
        assert spent["today"] == pytest.approx(cost) and spent["total"] == pytest.approx(cost)
        runner.set_budget(cost / 2)  # already reached
        blocked = runner.submit("second", env=env)
        paused = wait_until(lambda: runner.queue_state().paused and runner.queue_state(), 60, what="the budget pause")
        assert paused.kind == "budget" and paused.reason.startswith("budget reached: $")
        assert paused.until is not None and paused.until % 86400 == 0, "until the next UTC midnight"
        assert blocked.status() == "queued"
        runner.set_budget(None)
        assert runner.resume()
        second = result_of(blocked)
    assert second.success and second.output == "two"
    assert runner.costs()["total"] == pytest.approx(cost + second.agent["total_cost_usd"])
