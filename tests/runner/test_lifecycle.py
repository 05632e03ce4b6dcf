"""The life of a task (runner/lifecycle.py): one end per task, and what it means for the tasks after it.

No worker serves these queues: the transitions are called directly, against a real Redis and real RQ jobs.
"""

from __future__ import annotations

import pytest

from runner import job as job_module
from runner import lifecycle, queue_state
from runner.client import Runner
from runner.config import Settings
from runner.spec import TaskResult, TaskSpec
from runner.vocabulary import AttemptKind, PauseKind


def chain(runner: Runner) -> tuple[str, str, str]:
    first = runner.submit(agent="command", argv=["true"]).id
    plain = runner.submit(agent="command", argv=["true"], after=first).id
    anyway = runner.submit(agent="command", argv=["true"], after=first, after_any=True).id
    return first, plain, anyway


def status(runner: Runner, task_id: str) -> str:
    record = runner.get(task_id)
    assert record is not None
    return record.status


@pytest.mark.parametrize(
    ("result", "plain", "anyway"),
    [
        ({"success": True}, "queued", "queued"),
        ({"error": "The command exited with code 1."}, "cancelled", "queued"),
        ({"cancelled": True, "error": "Cancelled."}, "cancelled", "cancelled"),
    ],
    ids=["succeeded", "failed", "cancelled"],
)
def test_an_end_settles_the_dependents(redis_url: str, queue_name: str, result: dict, plain: str, anyway: str) -> None:
    runner = Runner(redis_url=redis_url, queue=queue_name)
    first, plain_id, anyway_id = chain(runner)
    assert (status(runner, plain_id), status(runner, anyway_id)) == ("deferred", "deferred")
    assert lifecycle.end(runner.store, TaskResult(id=first, **result), queue_name)
    assert (status(runner, plain_id), status(runner, anyway_id)) == (plain, anyway)
    if plain == "cancelled":
        record = runner.get(plain_id)
        assert record is not None and record.result is not None
        assert record.result.error is not None and f"after task {first}" in record.result.error


def test_a_task_ends_once_and_only_its_current_run_may_end_it(redis_url: str, queue_name: str) -> None:
    runner = Runner(redis_url=redis_url, queue=queue_name)
    task = runner.submit(agent="command", argv=["true"]).id
    assert lifecycle.start(runner.store, task, queue_name, "1:current", None, 5000).code == 1
    stale = TaskResult(id=task, success=True, output="from a run that lost the queue")
    assert not lifecycle.end(runner.store, stale, queue_name, run="0:old")
    assert lifecycle.end(runner.store, TaskResult(id=task, success=True, output="real"), queue_name, run="1:current")
    assert not lifecycle.end(runner.store, TaskResult(id=task, error="late"), queue_name)
    assert runner.handle(task).result(timeout=5).output == "real"
    assert lifecycle.start(runner.store, task, queue_name, "2:again", None, 5000).code == 0, (
        "an ended task never restarts"
    )


def test_a_stale_fencing_token_cannot_start_a_run(redis_url: str, queue_name: str) -> None:
    runner = Runner(redis_url=redis_url, queue=queue_name)
    task = runner.submit(agent="command", argv=["true"]).id
    runner.redis.set(f"ccx:worker:{queue_name}:fence", 7)
    assert lifecycle.start(runner.store, task, queue_name, "6:x", 6, 5000).code == -1
    assert status(runner, task) == "queued"
    assert lifecycle.start(runner.store, task, queue_name, "7:x", 7, 5000).code == 1


def test_an_interrupted_attempt_goes_back_to_queued_with_its_dependents_waiting(
    redis_url: str, queue_name: str
) -> None:
    runner = Runner(redis_url=redis_url, queue=queue_name)
    first, plain_id, _ = chain(runner)
    assert lifecycle.start(runner.store, first, queue_name, "1:a", None, 5000).code == 1
    attempt = {"started_at": "s", "ended_at": "e", "error": "The handler shut down."}
    assert lifecycle.interrupt(runner.store, first, queue_name, "1:a", [attempt])
    assert status(runner, first) == "queued" and status(runner, plain_id) == "deferred"
    assert runner.store.attempts(first) == [attempt]
    assert not runner.redis.exists(f"ccx:task:{first}:lease"), "the lease went with the attempt"


def test_past_the_interruption_limit_a_task_gets_one_last_look_for_an_outcome_left_unread(
    redis_url: str, queue_name: str
) -> None:
    """Its attempts ran out, but its last run may have reached its end with the answer lost: it is not failed at
    once. The next attempt only collects (marked with the sentence it would end with); interrupted again, it
    ends failed with that sentence's count."""
    runner = Runner(redis_url=redis_url, queue=queue_name)
    task = runner.submit(agent="command", argv=["true"]).id
    job = lifecycle.fetch_job(runner.redis, task)
    assert job is not None
    spec, settings = TaskSpec(agent="command", argv=["true"]), Settings()
    earlier = [{"started_at": "s", "ended_at": "e", "error": "x", "kind": AttemptKind.INTERRUPTED, "run": "0:a"}]

    def attempt(run: str, attempts: list[dict]) -> str | None:
        assert lifecycle.start(runner.store, task, queue_name, run, None, 5000).code == 1
        cut = TaskResult(id=task, error="The handler closed the connection.", interrupted=True)
        return lifecycle.conclude(runner.store, job, spec, cut, attempts, settings, run)

    assert attempt("1:b", list(earlier)) == AttemptKind.INTERRUPTED
    attempts = runner.store.attempts(task)
    assert attempts[-1]["run"] == "1:b" and attempts[-1][lifecycle.LAST_LOOK] == (
        "The handler closed the connection. It was tried 2 time(s); resubmit it to try again."
    )
    assert status(runner, task) == "queued"
    assert attempt("2:c", attempts) is None
    result = runner.handle(task).result(timeout=5)
    assert not result.success and result.error == (
        "The handler closed the connection. It was tried 3 time(s); resubmit it to try again."
    )


def test_an_unreachable_handler_holds_the_queue_and_folds_its_attempts_into_one(
    redis_url: str, queue_name: str
) -> None:
    """Nothing ran: the task goes back to queued, the queue pauses for the handler, and repeats fold into one
    attempt entry that counts against no limit (an earlier interruption's run is still there to collect)."""
    runner = Runner(redis_url=redis_url, queue=queue_name)
    task = runner.submit(agent="command", argv=["true"]).id
    earlier = [{"started_at": "s", "ended_at": "e", "error": "x", "kind": AttemptKind.INTERRUPTED, "run": "0:a"}]
    error = "Could not reach the handler at ws://127.0.0.1:9/ws for 30 s (CCX_HANDLER_WAIT; refused)."
    attempts = list(earlier)
    for run in ("1:b", "2:c", "3:d"):
        assert lifecycle.start(runner.store, task, queue_name, run, None, 5000).code == 1
        assert lifecycle.hold_for_handler(runner.store, task, queue_name, run, attempts, error, f"at {run}")
        attempts = runner.store.attempts(task)
        assert status(runner, task) == "queued"
    assert attempts[0] == earlier[0] and len(attempts) == 2
    held = attempts[1]
    assert (held["kind"], held["times"], held["started_at"], held["error"]) == (PauseKind.HANDLER, 3, "at 1:b", error)
    state = runner.queue_state()
    assert (state.kind, state.until) == (PauseKind.HANDLER, None)
    assert state.reason == f"{error} The queue waits for it and goes on by itself once the handler answers."
    assert job_module._unread_runs(attempts) == ["0:a"]
    # Only the handler's own pause is lifted by the worker's probe; a person's pause is not.
    runner.pause("maintenance")
    assert not queue_state.resume(runner.redis, queue_name, "back", only_kind=PauseKind.HANDLER)
    assert runner.queue_state().kind == PauseKind.MANUAL


def test_holding_for_the_handler_is_refused_for_a_run_that_is_no_longer_the_tasks(
    redis_url: str, queue_name: str
) -> None:
    runner = Runner(redis_url=redis_url, queue=queue_name)
    task = runner.submit(agent="command", argv=["true"]).id
    assert lifecycle.start(runner.store, task, queue_name, "2:new", None, 5000).code == 1
    assert not lifecycle.hold_for_handler(runner.store, task, queue_name, "1:old", [], "unreachable", "s")
    assert status(runner, task) == "running" and not runner.queue_state().paused
