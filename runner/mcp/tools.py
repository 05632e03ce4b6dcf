"""What the MCP tools do, as plain functions of a :class:`~runner.client.Runner` (no MCP in here).

Each returns a small JSON-able dict written for a model to read: ids, statuses,
one-sentence messages, and output bounded in size (a task's whole log never
goes into the orchestrator's context; :func:`read_output` pages through it).
A failure raises :class:`~runner.errors.CcxError` (or a subclass) carrying
the same sentence the CLI prints; the server turns it into an MCP tool error.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import orjson
import redis

from runner import clock
from runner.agents import get_agent
from runner.client import Runner
from runner.errors import BadCursor, Unavailable, UnknownTask, UsageError
from runner.mcp.output import read_page
from runner.spec import title
from runner.vocabulary import Status

RESULT_OUTPUT_CHARS = 4000
"""The result's output a model gets from wait_for_result; the rest is one read_output call away."""
STRUCTURED_OUTPUT_CHARS = 16_000
MAX_WAIT_SECONDS = 600.0
MAX_LISTED = 100
DEFAULT_PAGE_BYTES = 8000


def _redis_errors(func: Any) -> Any:
    """Redis failing mid-call is said in one sentence, like the CLI says it."""

    @functools.wraps(func)
    def wrapper(runner: Runner, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(runner, *args, **kwargs)
        except redis.RedisError as exc:
            runner.ping()  # the sentence that names the URL and what to do, when Redis is down or refuses us
            raise Unavailable(f"Redis failed the request ({exc}); call the tool again.") from None

    return wrapper


def _progress(runner: Runner, task_id: str) -> dict[str, Any]:
    job = runner.job(task_id)
    progress = (job.meta or {}).get("ccx_progress") if job is not None else None
    return progress if isinstance(progress, dict) else {}


def _ahead(runner: Runner, task_id: str) -> int | None:
    """Tasks that run before this queued one: those before it in the queue, and the running one."""
    position = runner.queue.get_job_position(task_id)
    if position is None:
        return None
    return position + len(runner.list(5, status=Status.RUNNING))


@_redis_errors
def submit_task(
    runner: Runner,
    spec: dict[str, Any],
    after: str | None,
    after_any: bool,
    key: str | None,
    at: str | None = None,
    in_seconds: float | None = None,
) -> dict:
    """Queue one task; its id, status and place in the line."""
    handle = runner.submit(spec, after=after or None, after_any=after_any, key=key or None, at=at, in_=in_seconds)
    record = runner.get(handle.id)
    status = record.status if record else Status.QUEUED
    answer: dict[str, Any] = {"id": handle.id, "status": status}
    if status == Status.QUEUED:
        ahead = _ahead(runner, handle.id)
        answer["tasks_ahead"] = ahead
        answer["message"] = (
            f"Queued as {handle.id}; "
            + ("it runs next." if not ahead else f"{ahead} task(s) run before it.")
            + " Call wait_for_result with this id."
        )
    elif status == Status.SCHEDULED and record is not None:
        answer["scheduled_for"] = record.scheduled_for
        answer["message"] = f"Scheduled as {handle.id}; at {record.scheduled_for} it joins the end of the line."
    elif status == Status.DEFERRED:
        waits_for = f"task {after}" if after else "the task it was submitted after"
        answer["message"] = f"Queued as {handle.id}; it waits for {waits_for} to end, then joins the line."
    else:
        answer["message"] = f"Task {handle.id} is {status} (an earlier submit with the same key)."
    return answer


@_redis_errors
def task_status(runner: Runner, task_id: str) -> dict[str, Any]:
    """Where a task is: its status, times, and for a running one the lines it has printed so far."""
    record = runner.get(task_id)
    if record is None:
        raise UnknownTask(task_id)
    answer: dict[str, Any] = {
        "id": task_id,
        "status": record.status,
        "title": title(record.spec.to_dict()),
        "agent": record.spec.agent,
        "submitted_at": record.submitted_at,
        "started_at": record.started_at,
        "ended_at": record.ended_at,
    }
    if record.status == Status.QUEUED:
        answer["tasks_ahead"] = _ahead(runner, task_id)
    if record.scheduled_for and record.status == Status.SCHEDULED:
        answer["scheduled_for"] = record.scheduled_for
    if record.status == Status.RUNNING:
        answer["lines_so_far"] = _progress(runner, task_id).get("lines", 0)
    if record.result is not None:
        answer.update(_outcome(record.result.to_dict(), with_output=False))
    return answer


def _outcome(result: dict[str, Any], with_output: bool) -> dict[str, Any]:
    agent = result.get("agent") if isinstance(result.get("agent"), dict) else {}
    answer: dict[str, Any] = {
        "success": bool(result.get("success")),
        "exit_code": result.get("exit_code"),
        "error": result.get("error"),
        "duration_ms": result.get("duration_ms"),
        "cost_usd": agent.get("total_cost_usd"),
    }
    if agent.get("session_id"):
        answer["session_id"] = agent["session_id"]
    if result.get("attempts"):
        answer["attempts"] = len(result["attempts"]) + 1
    if with_output:
        output = str(result.get("output") or "")
        answer["output"] = output[:RESULT_OUTPUT_CHARS]
        if len(output) > RESULT_OUTPUT_CHARS:
            answer["output_truncated"] = True
            answer["output_chars"] = len(output)
        structured = result.get("structured_output")
        if structured is not None:
            text = orjson.dumps(structured).decode()
            if len(text) <= STRUCTURED_OUTPUT_CHARS:
                answer["structured_output"] = structured
            else:  # too big for the model's context: the start of its JSON, said to be cut
                answer["structured_output_json_start"] = text[:STRUCTURED_OUTPUT_CHARS]
                answer["structured_output_truncated"] = True
    return answer


@_redis_errors
def wait_for_result(runner: Runner, task_id: str, timeout_seconds: float) -> dict[str, Any]:
    """The task's result if it ends within ``timeout_seconds`` (at most 600), else where it is now."""
    if runner.get(task_id) is None:
        raise UnknownTask(task_id)
    wait = min(max(float(timeout_seconds), 0.0), MAX_WAIT_SECONDS)
    try:
        result = runner.handle(task_id).result(timeout=wait)
    except TimeoutError:
        record = runner.get(task_id)
        status = record.status if record else "unknown"
        if status == Status.RUNNING:
            lines = _progress(runner, task_id).get("lines", 0)
            message = f"Still running, {lines} line(s) of output so far; call wait_for_result again."
        elif status == Status.QUEUED:
            ahead = _ahead(runner, task_id)
            message = (
                f"Still queued, {ahead if ahead is not None else 'some'} task(s) ahead; call wait_for_result again."
            )
        else:
            message = f"Not ended yet ({status}); call wait_for_result again."
        return {"id": task_id, "done": False, "status": status, "message": message}
    return {"id": task_id, "done": True, "status": result.status, **_outcome(result.to_dict(), with_output=True)}


@_redis_errors
def read_output(runner: Runner, task_id: str, since_seq: str, max_bytes: int) -> dict[str, Any]:
    """One page of a task's output from ``since_seq``: its agent's transcript if it has one, else raw text."""
    record = runner.get(task_id)
    if record is None:
        raise UnknownTask(task_id)
    try:
        page = read_page(
            runner.redis,
            task_id,
            since_seq,
            max_bytes,
            transcript=get_agent(record.spec.agent).transcript(),
            ended=record.result is not None,
        )
    except BadCursor as exc:
        raise UsageError(str(exc)) from None
    answer = {"id": task_id, "status": record.status, **page.to_dict()}
    if not page.more:
        answer["note"] = (
            "That is all the output so far; the task is still going."
            if record.result is None
            else "That is all of the task's output."
        )
    return answer


@_redis_errors
def cancel_task(runner: Runner, task_id: str) -> dict[str, Any]:
    """Cancel a task: a queued one never runs, a running one is stopped; its dependents are cancelled."""
    outcome = runner.cancel(task_id)
    messages = {
        "cancelled": f"Task {task_id} is cancelled; it will not run.",
        "cancelling": f"Task {task_id} is being stopped; wait_for_result returns its end.",
        "ended": f"Task {task_id} had already ended; nothing was cancelled.",
    }
    return {"id": task_id, "outcome": outcome, "message": messages.get(outcome, outcome)}


@_redis_errors
def list_tasks(runner: Runner, limit: int, status: str | None) -> dict[str, Any]:
    """The newest tasks, newest first."""
    records = runner.list(max(1, min(int(limit), MAX_LISTED)), status=status or None)
    rows = []
    for record in records:
        row: dict[str, Any] = {
            "id": record.id,
            "status": record.status,
            "title": title(record.spec.to_dict()),
            "submitted_at": record.submitted_at,
            "ended_at": record.ended_at,
        }
        if record.result is not None:
            row["success"] = record.result.success
        rows.append(row)
    return {"queue": runner.settings.queue, "tasks": rows}


@_redis_errors
def queue_status(runner: Runner) -> dict[str, Any]:
    """The queue at a glance: paused or not (why, until when), the running task, how many wait, today's cost."""
    state = runner.queue_state()
    now = time.time()
    running = []
    for record in runner.list(5, status=Status.RUNNING):
        started = clock.epoch(record.started_at) if record.started_at else None
        running.append(
            {
                "id": record.id,
                "title": title(record.spec.to_dict()),
                "running_for_s": round(now - started, 1) if started else None,
            }
        )
    costs = runner.costs()
    answer: dict[str, Any] = {
        **state.to_dict(),
        "state": state.describe(),
        "running": running,
        "queued": runner.queue.count,
        "cost_today_usd": round(costs.get("today", 0.0), 6),
        "cost_total_usd": round(costs.get("total", 0.0), 6),
    }
    if "budget_per_day" in costs:
        answer["budget_per_day_usd"] = costs["budget_per_day"]
    return answer
