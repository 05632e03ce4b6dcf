"""The task commands: ``ccx run``, ``submit``, ``follow``, ``result``, ``status``, ``list`` and ``cancel``."""

from __future__ import annotations

import shutil
import sys
from typing import Any, NoReturn

import click

from runner.cli.helpers import (
    TaskRequest,
    cli_settings,
    emit_json,
    escapes,
    fail,
    json_option,
    pass_runner,
    pass_task,
    queue_option,
    raw_option,
    redis_option,
)
from runner.cli.queue import print_queue_status
from runner.client import Runner
from runner.config import Settings
from runner.errors import EXIT_TASK_FAILED, UnknownTask
from runner.render import Renderer, ago, escape_controls, summary
from runner.stack import LocalStack
from runner.store import TaskRecord
from runner.vocabulary import EventType


def needs_embedded_stack(settings: Settings) -> bool:
    """Whether ``ccx run`` brings up its own stack: exactly when no Redis is configured. Never a Redis at a default
    address instead: any local user could listen there, without a password, and receive the task."""
    return not settings.redis_url


def _follow(
    runner: Runner, task_id: str, agent: str, as_json: bool, timeout: float | None = None, raw: bool = False
) -> dict[str, Any]:
    """Print a task's events until its result; return the result dict."""
    renderer = Renderer(
        agent,
        progress=not as_json and sys.stderr.isatty(),
        escape_out=escapes(sys.stdout, raw),
        escape_err=escapes(sys.stderr, raw),
    )
    result: dict[str, Any] = {}
    try:
        for event in runner.handle(task_id).events(timeout=timeout):
            if as_json:
                emit_json(event)
            else:
                renderer.event(event)
            if event.get("type") == EventType.RESULT:
                result = event["result"]
    finally:
        if renderer.progress is not None:
            renderer.progress.stop()
    if not as_json:
        renderer.finish()
        click.echo(summary(result), err=True)
    return result


def _exit_with(result: dict[str, Any]) -> NoReturn:
    sys.exit(0 if result.get("success") else EXIT_TASK_FAILED)


def _record(runner: Runner, task_id: str) -> TaskRecord:
    record = runner.get(task_id)
    if record is None:
        raise UnknownTask(task_id)
    return record


@click.command(context_settings={"ignore_unknown_options": True})
@pass_task
@redis_option
@queue_option
@json_option
@raw_option
def run(request: TaskRequest, redis_url: str | None, queue: str | None, as_json: bool, raw: bool) -> None:
    """Submit a task and follow it to the end (exit 0 only if it succeeded).

    \b
    ccx run "Create a FastAPI app with a health endpoint" --tools Write,Edit
    ccx run --agent command -- echo hello

    With no Redis configured (no --redis-url, CCX_REDIS_URL or REDIS_URL, no
    running `ccx up`), an embedded stack (Redis with a password of its own, the
    handler, a worker) runs for the duration of the command.
    """
    # Not pass_runner: with no Redis configured there is none to ask until the embedded stack is up.
    settings = cli_settings(redis_url, queue)
    stack = LocalStack(queue=settings.queue) if needs_embedded_stack(settings) else None
    try:
        if stack is not None:
            settings = settings.replace(redis_url=stack.start().redis_url)
        runner = Runner(settings=settings)
        handle = request.submit(runner)
        if not as_json:
            click.echo(f"task {handle.id} submitted", err=True)
        try:
            result = _follow(runner, handle.id, request.agent, as_json, raw=raw)
        except KeyboardInterrupt:
            if stack is None:
                raise
            # The embedded stack dies with this command, so the task must too.
            runner.cancel(handle.id)
            stack.stop()
            stack = None
            fail(f"interrupted; task {handle.id} was cancelled and the embedded stack stopped.", 130)
    finally:
        if stack is not None:
            stack.stop()
    _exit_with(result)


@click.command(context_settings={"ignore_unknown_options": True})
@pass_task
@pass_runner
@json_option
@click.option("--follow", "follow_it", is_flag=True, help="follow the task's output until it ends.")
@raw_option
def submit(request: TaskRequest, runner: Runner, as_json: bool, follow_it: bool, raw: bool) -> None:
    """Submit a task and print its id."""
    handle = request.submit(runner)
    if as_json and not follow_it:
        emit_json({"id": handle.id})
    else:
        click.echo(handle.id)
    record = runner.get(handle.id) if request.after else None
    if record is not None and record.result is not None and record.result.cancelled and not follow_it:
        # Its predecessor had already failed or been cancelled: it will never run.
        fail(f"Task {handle.id} was cancelled at once. {record.result.error}", EXIT_TASK_FAILED)
    if follow_it:
        _exit_with(_follow(runner, handle.id, request.agent, as_json, raw=raw))


@click.command()
@click.argument("task_id")
@click.option("--timeout", type=float, help="give up after this many seconds.")
@raw_option
@pass_runner
@json_option
def follow(task_id: str, timeout: float | None, raw: bool, runner: Runner, as_json: bool) -> None:
    """Print a task's output from its first byte, then live, until it ends (JSON lines with --json)."""
    record = _record(runner, task_id)
    _exit_with(_follow(runner, task_id, record.spec.agent, as_json, timeout, raw))


@click.command()
@click.argument("task_id")
@click.option("--wait", type=float, default=None, help="wait up to this many seconds for the task to end.")
@raw_option
@pass_runner
@json_option
def result(task_id: str, wait: float | None, raw: bool, runner: Runner, as_json: bool) -> None:
    """Print a task's result (exit 0 if it succeeded, 1 if not or not yet ended)."""
    record = _record(runner, task_id)
    if record.result is None and wait:
        outcome = runner.handle(task_id).result(timeout=wait).to_dict()
    elif record.result is None:
        if as_json:
            emit_json({"id": task_id, "status": record.status, "result": None})
        else:
            click.echo(f"task {task_id} is {record.status}; no result yet (use --wait SECONDS).", err=True)
        sys.exit(EXIT_TASK_FAILED)
    else:
        outcome = record.result.to_dict()
    if as_json:
        emit_json(outcome)
    else:
        if outcome.get("output"):
            output = outcome["output"].rstrip("\n")
            click.echo(escape_controls(output) if escapes(sys.stdout, raw) else output)
        click.echo(summary(outcome), err=True)
    _exit_with(outcome)


@click.command()
@click.argument("task_id", required=False)
@pass_runner
@json_option
def status(task_id: str | None, runner: Runner, as_json: bool) -> None:
    """Print a task's status (queued, scheduled, deferred, running, finished, failed or cancelled); without an id,
    the queue's: running or paused (why, until when), with its running and queued tasks."""
    if task_id is None:
        print_queue_status(runner, as_json)
        return
    record = _record(runner, task_id)
    if as_json:
        data = record.to_dict()
        if data["result"]:
            data["result"].pop("output", None)
        emit_json(data)
    else:
        click.echo(record.status)


@click.command(name="list")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="at most this many tasks.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    help="only tasks with this status: queued, scheduled, deferred, running, finished, failed, cancelled (repeatable).",
)
@pass_runner
@json_option
def list_tasks(limit: int, statuses: tuple[str, ...], runner: Runner, as_json: bool) -> None:
    """List the newest tasks of the queue: status, agent, when submitted and ended, what they run."""
    wanted = [s for group in statuses for s in group.split(",") if s]
    records = runner.list(limit, status=wanted or None)
    if as_json:
        emit_json(
            [
                {k: v for k, v in r.to_dict().items() if k not in ("result", "spec")} | {"agent": r.spec.agent}
                for r in records
            ]
        )
        return
    if not records:
        click.echo("no tasks" + (f" with status {', '.join(wanted)}" if wanted else "") + " in this queue.", err=True)
        return
    width = shutil.get_terminal_size((100, 24)).columns
    head = f"{'ID':<36}  {'STATUS':<9}  {'AGENT':<7}  {'SUBMITTED':<11}  {'ENDED':<11}  "
    room = max(20, width - len(head))
    click.echo(head + "TASK")
    for record in records:
        what = " ".join(record.spec.argv or []) if record.spec.agent == "command" else record.spec.task
        what = " ".join(escape_controls(what).split())  # always: a title is anyone's text, on anyone's terminal
        what = what if len(what) <= room else what[: room - 1] + "…"
        click.echo(
            f"{record.id:<36}  {record.status:<9}  {record.spec.agent:<7}  {ago(record.submitted_at):<11}  "
            f"{ago(record.ended_at):<11}  {what}"
        )


@click.command()
@click.argument("task_id")
@pass_runner
@json_option
def cancel(task_id: str, runner: Runner, as_json: bool) -> None:
    """Cancel a task: a queued one never runs, a running one is stopped."""
    outcome = runner.cancel(task_id)
    if as_json:
        emit_json({"id": task_id, "outcome": outcome})
    elif outcome != "ended":
        click.echo({"cancelled": "cancelled", "cancelling": "stopping the running task"}[outcome])
    if outcome == "ended":
        record = runner.get(task_id)
        fail(
            f"Task {task_id} had already ended ({record.status if record else 'ended'}); there was nothing to cancel.",
            EXIT_TASK_FAILED,
        )


COMMANDS = (run, submit, follow, result, status, list_tasks, cancel)
