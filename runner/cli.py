"""``ccx``: the command line. Logic lives in the runner modules; this file parses and prints.

Every failure ends in one sentence on stderr and a non-zero exit status:
1 when a task did not succeed, 2 for a usage or input error, 3 when a
service (Redis, the handler) cannot be reached.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson
import redis

from handler.config import ConfigError, parse_port
from runner import events
from runner.client import Runner
from runner.config import Settings, check_handler_url, check_redis_url, redact_url
from runner.errors import EXIT_TASK_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE, CcxError, UnknownTask
from runner.render import Renderer, ago, escape_controls, summary
from runner.spec import SpecError
from runner.stack import LocalStack, StackError, default_data_dir


def _fail(message: str, code: int) -> None:
    click.echo(f"ccx: {message}", err=True)
    sys.exit(code)


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can meet into one sentence and an exit status, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CcxError as exc:  # each carries its exit status (runner/errors.py)
            _fail(str(exc), exc.exit_status)
        except ValueError as exc:  # the handler's ConfigError among them
            _fail(str(exc), EXIT_USAGE)
        except TimeoutError as exc:
            _fail(f"{exc} It is still queued or running; check later with `ccx status`.", EXIT_TASK_FAILED)
        except redis.RedisError as exc:
            _fail(f"Lost the connection to Redis ({exc}); check that it is running, then try again.", EXIT_UNAVAILABLE)
        except BrokenPipeError:
            # The reader went away (e.g. `ccx follow ID | head`): nothing is wrong with the task.
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter from complaining at exit
            sys.exit(0)
        except KeyboardInterrupt:
            _fail("interrupted; a submitted task keeps running (see `ccx list`, stop it with `ccx cancel ID`).", 130)

    return wrapper


def _emit_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def _settings(redis_url: str | None, queue: str | None, **flags: Any) -> Settings:
    """The environment's settings with the command's flags over it (the Redis URL checked as Settings do)."""
    url = check_redis_url(redis_url, "--redis-url") if redis_url else None
    return Settings.from_env(redis_url=url, queue=queue, **flags)


def _runner(redis_url: str | None, queue: str | None) -> Runner:
    runner = Runner(settings=_settings(redis_url, queue))
    runner.ping()
    return runner


def _insecure_redis(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--insecure-redis`` is CCX_INSECURE_REDIS=1 for this command and the processes it starts."""
    if value:
        os.environ["CCX_INSECURE_REDIS"] = "1"


insecure_redis_option = click.option(
    "--insecure-redis",
    is_flag=True,
    expose_value=False,
    callback=_insecure_redis,
    help="use a Redis whose URL has no password (CCX_INSECURE_REDIS=1); anyone who can listen there gets the tasks.",
)


def redis_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--redis-url`` (the environment's CCX_REDIS_URL / REDIS_URL are read by Settings) and ``--insecure-redis``."""
    url = click.option(
        "--redis-url",
        help="Redis URL (CCX_REDIS_URL or REDIS_URL; default: the Redis of a running `ccx up`).",
    )
    return url(insecure_redis_option(func))


queue_option = click.option("--queue", envvar="CCX_QUEUE", help="queue name (CCX_QUEUE; default ccx).")
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable JSON output.")
raw_option = click.option(
    "--raw",
    is_flag=True,
    help="write the task's output as it is, terminal escapes included (on a terminal, by default, control "
    "characters such as ESC are shown as \\x1b).",
)


def _escapes(stream: Any, raw: bool) -> bool:
    """Whether the task's output written to ``stream`` shows its control characters as text (``\\x1b``):
    on a terminal, which would act on them (window title, clipboard, cursor), unless ``--raw``."""
    return not raw and stream.isatty()


def task_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.argument("task", required=False, default=""),
        click.argument("argv", nargs=-1, type=click.UNPROCESSED),
        click.option("--agent", default="claude", show_default=True, help="claude, codex, gemini or command."),
        click.option("--tools", multiple=True, help="allowed tools, e.g. Write,Edit (repeatable)."),
        click.option("--disallowed-tools", multiple=True, help="tools the agent may not use (repeatable)."),
        click.option("--timeout", type=float, help="seconds before the task is stopped (default 3600)."),
        click.option(
            "--idle-timeout",
            type=float,
            help="seconds without output before the task is stopped as hung (default 600 for agents, none for commands; 0: never).",
        ),
        click.option("--cwd", help="working directory of the task, on the handler's machine."),
        click.option("--model", help="model for the agent."),
        click.option("--max-turns", type=int, help="most agent turns."),
        click.option("--permission-mode", help="Claude Code permission mode (e.g. acceptEdits)."),
        click.option("--resume", help="agent session id to resume."),
        click.option("--json-schema", help="JSON Schema the answer must satisfy (its object: structured_output)."),
        click.option("--effort", help="Claude Code effort: low, medium, high, xhigh or max."),
        click.option("--fallback-model", help="model to fall back to when the main one is overloaded."),
        click.option("--max-budget-usd", type=float, help="most dollars the agent may spend on this task."),
        click.option("--system-prompt", help="system prompt replacing the agent's default."),
        click.option("--session-id", help="session id (a UUID) for the agent's new session."),
        click.option("--settings", help="Claude Code settings file or JSON."),
        click.option("--add-dir", "add_dirs", multiple=True, help="another directory the agent may use (repeatable)."),
        click.option("--bare", is_flag=True, default=None, help="Claude Code's minimal mode (no hooks, plugins…)."),
        click.option(
            "--extra-arg", "extra_args", multiple=True, help="one more agent flag we do not model (repeatable)."
        ),
        click.option("--after", help="run only after this task id has ended."),
        click.option("--after-any", is_flag=True, help="with --after: run even if that task failed."),
        click.option(
            "--key", help="idempotency key: while a task with it is queued, running or just ended, return it."
        ),
        click.option("--at", "at", help="run at this time, ISO 8601 (e.g. 2026-12-02T03:00:00Z; UTC if no zone)."),
        click.option("--in", "in_", help="run after this delay: 90, 90s, 10m, 2h or 1d."),
        click.option("--webhook", help="URL that gets a signed JSON POST when the task ends (docs/webhooks.md)."),
        redis_option,
        queue_option,
        json_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _spec_from(options: dict[str, Any]) -> dict[str, Any]:
    task, argv = options.pop("task"), list(options.pop("argv"))
    spec: dict[str, Any] = {"agent": options.pop("agent")}
    if spec["agent"] == "command":
        spec["argv"] = ([task] if task else []) + argv
        spec["task"] = ""
    else:
        spec["task"] = " ".join([task, *argv]).strip()
    tools = [t for group in options.pop("tools") for t in group.split(",") if t]
    disallowed = [t for group in options.pop("disallowed_tools") for t in group.split(",") if t]
    if tools:
        spec["tools"] = tools
    if disallowed:
        spec["disallowed_tools"] = disallowed
    for name in (
        "timeout", "idle_timeout", "cwd", "model", "max_turns", "permission_mode", "resume", "effort",
        "fallback_model", "max_budget_usd", "system_prompt", "session_id", "settings", "bare", "webhook",
    ):  # fmt: skip
        value = options.pop(name)
        if value is not None:
            spec[name] = value
    for name in ("add_dirs", "extra_args"):
        values = list(options.pop(name))
        if values:
            spec[name] = values
    schema = options.pop("json_schema")
    if schema is not None:
        try:
            spec["json_schema"] = orjson.loads(schema)
        except orjson.JSONDecodeError:
            raise SpecError("--json-schema must be a JSON Schema object (valid JSON).") from None
    return spec


def _later(options: dict[str, Any]) -> dict[str, Any]:
    """``--at`` / ``--in`` as Runner.submit's ``at`` / ``in_``."""
    from runner.schedules import parse_delay

    at, delay = options.pop("at"), options.pop("in_")
    return {"at": at, "in_": parse_delay(delay) if delay is not None else None}


def _follow(
    runner: Runner, task_id: str, agent: str, as_json: bool, timeout: float | None = None, raw: bool = False
) -> dict[str, Any]:
    """Print a task's events until its result; return the result dict."""
    renderer = Renderer(
        agent,
        progress=not as_json and sys.stderr.isatty(),
        escape_out=_escapes(sys.stdout, raw),
        escape_err=_escapes(sys.stderr, raw),
    )
    result: dict[str, Any] = {}
    try:
        for event in runner.handle(task_id).events(timeout=timeout):
            if as_json:
                _emit_json(event)
            else:
                renderer.event(event)
            if event.get("type") == events.RESULT:
                result = event["result"]
    finally:
        if renderer.progress is not None:
            renderer.progress.stop()
    if not as_json:
        renderer.finish()
        click.echo(summary(result), err=True)
    return result


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cc-execute", prog_name="ccx")
def main() -> None:
    """cc-execute: run coding-agent tasks one after another, each in a fresh process, output streamed live."""


def needs_embedded_stack(settings: Settings) -> bool:
    """Whether ``ccx run`` brings up its own stack: exactly when no Redis is configured. Never a Redis at a default
    address instead: any local user could listen there, without a password, and receive the task."""
    return not settings.redis_url


@main.command(context_settings={"ignore_unknown_options": True})
@task_options
@raw_option
@friendly_errors
def run(raw: bool, **options: Any) -> None:
    """Submit a task and follow it to the end (exit 0 only if it succeeded).

    \b
    ccx run "Create a FastAPI app with a health endpoint" --tools Write,Edit
    ccx run --agent command -- echo hello

    With no Redis configured (no --redis-url, CCX_REDIS_URL or REDIS_URL, no
    running `ccx up`), an embedded stack (Redis with a password of its own, the
    handler, a worker) runs for the duration of the command.
    """
    redis_url, queue, as_json = options.pop("redis_url"), options.pop("queue"), options.pop("as_json")
    after, after_any, key = options.pop("after"), options.pop("after_any"), options.pop("key")
    later = _later(options)
    spec = _spec_from(options)
    settings = _settings(redis_url, queue)
    stack = LocalStack(queue=settings.queue) if needs_embedded_stack(settings) else None
    try:
        if stack is not None:
            settings = settings.replace(redis_url=stack.start().redis_url)
        runner = Runner(settings=settings)
        handle = runner.submit(spec, after=after, after_any=after_any, key=key, **later)
        if not as_json:
            click.echo(f"task {handle.id} submitted", err=True)
        try:
            result = _follow(runner, handle.id, spec["agent"], as_json, raw=raw)
        except KeyboardInterrupt:
            if stack is None:
                raise
            # The embedded stack dies with this command, so the task must too.
            runner.cancel(handle.id)
            stack.stop()
            stack = None
            _fail(f"interrupted; task {handle.id} was cancelled and the embedded stack stopped.", 130)
    finally:
        if stack is not None:
            stack.stop()
    sys.exit(0 if result.get("success") else EXIT_TASK_FAILED)


@main.command(context_settings={"ignore_unknown_options": True})
@task_options
@click.option("--follow", "follow_it", is_flag=True, help="follow the task's output until it ends.")
@raw_option
@friendly_errors
def submit(follow_it: bool, raw: bool, **options: Any) -> None:
    """Submit a task and print its id."""
    redis_url, queue, as_json = options.pop("redis_url"), options.pop("queue"), options.pop("as_json")
    after, after_any, key = options.pop("after"), options.pop("after_any"), options.pop("key")
    later = _later(options)
    spec = _spec_from(options)
    runner = _runner(redis_url, queue)
    handle = runner.submit(spec, after=after, after_any=after_any, key=key, **later)
    if as_json and not follow_it:
        _emit_json({"id": handle.id})
    else:
        click.echo(handle.id)
    record = runner.get(handle.id) if after else None
    if record is not None and record.result is not None and record.result.cancelled and not follow_it:
        # Its predecessor had already failed or been cancelled: it will never run.
        _fail(f"Task {handle.id} was cancelled at once. {record.result.error}", EXIT_TASK_FAILED)
    if follow_it:
        result = _follow(runner, handle.id, spec["agent"], as_json, raw=raw)
        sys.exit(0 if result.get("success") else EXIT_TASK_FAILED)


def _record(runner: Runner, task_id: str) -> Any:
    record = runner.get(task_id)
    if record is None:
        raise UnknownTask(task_id)
    return record


@main.command()
@click.argument("task_id")
@click.option("--timeout", type=float, help="give up after this many seconds.")
@raw_option
@redis_option
@queue_option
@json_option
@friendly_errors
def follow(
    task_id: str, timeout: float | None, raw: bool, redis_url: str | None, queue: str | None, as_json: bool
) -> None:
    """Print a task's output from its first byte, then live, until it ends (JSON lines with --json)."""
    runner = _runner(redis_url, queue)
    record = _record(runner, task_id)
    result = _follow(runner, task_id, record.spec.agent, as_json, timeout, raw)
    sys.exit(0 if result.get("success") else EXIT_TASK_FAILED)


@main.command()
@click.argument("task_id")
@click.option("--wait", type=float, default=None, help="wait up to this many seconds for the task to end.")
@raw_option
@redis_option
@queue_option
@json_option
@friendly_errors
def result(
    task_id: str, wait: float | None, raw: bool, redis_url: str | None, queue: str | None, as_json: bool
) -> None:
    """Print a task's result (exit 0 if it succeeded, 1 if not or not yet ended)."""
    runner = _runner(redis_url, queue)
    record = _record(runner, task_id)
    if record.result is None and wait:
        outcome = runner.handle(task_id).result(timeout=wait).to_dict()
    elif record.result is None:
        if as_json:
            _emit_json({"id": task_id, "status": record.status, "result": None})
        else:
            click.echo(f"task {task_id} is {record.status}; no result yet (use --wait SECONDS).", err=True)
        sys.exit(EXIT_TASK_FAILED)
    else:
        outcome = record.result.to_dict()
    if as_json:
        _emit_json(outcome)
    else:
        if outcome.get("output"):
            output = outcome["output"].rstrip("\n")
            click.echo(escape_controls(output) if _escapes(sys.stdout, raw) else output)
        click.echo(summary(outcome), err=True)
    sys.exit(0 if outcome.get("success") else EXIT_TASK_FAILED)


@main.command()
@click.argument("task_id", required=False)
@redis_option
@queue_option
@json_option
@friendly_errors
def status(task_id: str | None, redis_url: str | None, queue: str | None, as_json: bool) -> None:
    """Print a task's status (queued, scheduled, deferred, running, finished, failed or cancelled); without an id,
    the queue's: running or paused (why, until when), with its running and queued tasks."""
    if task_id is None:
        runner = _runner(redis_url, queue)
        state = runner.queue_state()
        running = runner.list(5, status="running")
        waiting = runner.queue.count
        if as_json:
            _emit_json(
                {**state.to_dict(), "running": [r.id for r in running], "queued": waiting, "costs": runner.costs()}
            )
            return
        spent = runner.costs()
        # Escaped always: the reason is whatever `ccx pause --reason` was given.
        click.echo(f"queue '{runner.settings.queue}': {escape_controls(state.describe())}")
        click.echo(f"running: {', '.join(r.id for r in running) or 'nothing'}; queued: {waiting}")
        budget = f" of ${spent['budget_per_day']:.2f} a day" if "budget_per_day" in spent else ""
        click.echo(f"spent: ${spent['today']:.4f} today{budget}, ${spent['total']:.4f} in all")
        return
    record = _record(_runner(redis_url, queue), task_id)
    if as_json:
        data = record.to_dict()
        if data["result"]:
            data["result"].pop("output", None)
        _emit_json(data)
    else:
        click.echo(record.status)


@main.command(name="list")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="at most this many tasks.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    help="only tasks with this status: queued, scheduled, deferred, running, finished, failed, cancelled (repeatable).",
)
@redis_option
@queue_option
@json_option
@friendly_errors
def list_tasks(limit: int, statuses: tuple[str, ...], redis_url: str | None, queue: str | None, as_json: bool) -> None:
    """List the newest tasks of the queue: status, agent, when submitted and ended, what they run."""
    wanted = [s for group in statuses for s in group.split(",") if s]
    records = _runner(redis_url, queue).list(limit, status=wanted or None)
    if as_json:
        _emit_json(
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


@main.command()
@click.option("--reason", default="paused by hand", show_default=True, help="shown with the pause.")
@redis_option
@queue_option
@friendly_errors
def pause(reason: str, redis_url: str | None, queue: str | None) -> None:
    """Hold the queue: the running task goes on, nothing new starts until `ccx resume`."""
    runner = _runner(redis_url, queue)
    click.echo(f"queue '{runner.settings.queue}': {escape_controls(runner.pause(reason).describe())}")


@main.command()
@click.argument("usd", required=False, type=float)
@click.option("--per", type=click.Choice(["day"]), default="day", show_default=True, help="the budget's period.")
@click.option("--off", is_flag=True, help="remove the budget.")
@redis_option
@queue_option
@friendly_errors
def budget(usd: float | None, per: str, off: bool, redis_url: str | None, queue: str | None) -> None:
    """Set the queue's spend budget: `ccx budget 20 --per day`; it pauses before the next task once reached."""
    runner = _runner(redis_url, queue)
    if off:
        runner.set_budget(None)
    elif usd is not None:
        runner.set_budget(usd)  # refuses nan, inf and 0 or less, in one sentence
    spent = runner.costs()
    if "budget_per_day" in spent:
        click.echo(f"budget ${spent['budget_per_day']:.2f} per day; spent ${spent['today']:.4f} today")
    else:
        click.echo(f"no budget; spent ${spent['today']:.4f} today")


@main.group()
def webhook() -> None:
    """The queue's webhook: a signed JSON POST when a task ends (a task's own --webhook wins); docs/webhooks.md."""


@webhook.command("set")
@click.argument("url")
@click.option("--on-pause", is_flag=True, help="also POST when the queue pauses (event queue.paused).")
@redis_option
@queue_option
@friendly_errors
def webhook_set(url: str, on_pause: bool, redis_url: str | None, queue: str | None) -> None:
    """Send every ended task of the queue to URL (signed with the queue's secret: `ccx webhook show --secret`)."""
    from runner import webhooks

    runner = _runner(redis_url, queue)
    webhooks.set_queue_webhook(runner.redis, runner.settings.queue, url, on_pause)
    click.echo(f"queue '{runner.settings.queue}': webhook {url}" + (", also when it pauses" if on_pause else ""))


@webhook.command("show")
@click.option("--secret", "show_secret", is_flag=True, help="print the signing secret (for the receiver's config).")
@redis_option
@queue_option
@json_option
@friendly_errors
def webhook_show(show_secret: bool, redis_url: str | None, queue: str | None, as_json: bool) -> None:
    """Print the queue's webhook URL and where its signing secret is (--secret: the secret itself)."""
    from runner import webhooks

    runner = _runner(redis_url, queue)
    name = runner.settings.queue
    hook = webhooks.get_queue_webhook(runner.redis, name)
    where = f"Redis hash {events.webhook_config_key(name)}, field secret"
    secret = webhooks.queue_secret(runner.redis, name) if show_secret else None
    if as_json:
        _emit_json({**hook.to_dict(), "secret_in": where, **({"secret": secret} if show_secret else {})})
    elif show_secret:
        click.echo(secret)
    else:
        click.echo(f"url       {hook.url or '(none: only tasks with their own webhook send one)'}")
        click.echo(f"on pause  {'yes' if hook.on_pause else 'no'}")
        click.echo(f"secret    in {where} (print it with --secret)")
        if hook.last_delivery:
            click.echo(f"last      {hook.last_delivery.get('event')} {hook.last_delivery.get('status')}")


@webhook.command("clear")
@redis_option
@queue_option
@friendly_errors
def webhook_clear(redis_url: str | None, queue: str | None) -> None:
    """Stop the queue's webhook (tasks with their own still send theirs; the secret stays)."""
    from runner import webhooks

    runner = _runner(redis_url, queue)
    had = webhooks.clear_queue_webhook(runner.redis, runner.settings.queue)
    click.echo(f"queue '{runner.settings.queue}': " + ("no webhook now" if had else "had no webhook"))


@main.command()
@redis_option
@queue_option
@friendly_errors
def resume(redis_url: str | None, queue: str | None) -> None:
    """End the queue's pause (a usage limit, a backoff, rejected credentials or `ccx pause`)."""
    runner = _runner(redis_url, queue)
    if not runner.resume():
        click.echo(f"queue '{runner.settings.queue}' was not paused.", err=True)
        return
    click.echo(f"queue '{runner.settings.queue}': running")


@main.command()
@click.argument("task_id")
@redis_option
@queue_option
@json_option
@friendly_errors
def cancel(task_id: str, redis_url: str | None, queue: str | None, as_json: bool) -> None:
    """Cancel a task: a queued one never runs, a running one is stopped."""
    runner = _runner(redis_url, queue)
    outcome = runner.cancel(task_id)
    if as_json:
        _emit_json({"id": task_id, "outcome": outcome})
    elif outcome != "ended":
        click.echo({"cancelled": "cancelled", "cancelling": "stopping the running task"}[outcome])
    if outcome == "ended":
        record = runner.get(task_id)
        _fail(
            f"Task {task_id} had already ended ({record.status if record else 'ended'}); there was nothing to cancel.",
            EXIT_TASK_FAILED,
        )


@main.command()
@click.option("--standby", is_flag=True, help="if another worker serves the queue, wait and take over when it stops.")
@click.option("--burst", is_flag=True, help="stop when the queue is empty.")
@redis_option
@queue_option
@click.option(
    "--handler-url",  # CCX_HANDLER_URL is read by Settings, which name it in their messages
    help="handler WebSocket URL (CCX_HANDLER_URL; default ws://127.0.0.1:8765/ws).",
)
@click.option(
    "--metrics-port", metavar="PORT", help="serve Prometheus metrics on this port (0: any free one; default: none)."
)
@click.option(
    "--metrics-host", metavar="HOST", default="127.0.0.1", show_default=True, help="address the metrics are served on."
)
@friendly_errors
def worker(
    standby: bool,
    burst: bool,
    redis_url: str | None,
    queue: str | None,
    handler_url: str | None,
    metrics_port: str | None,
    metrics_host: str,
) -> None:
    """Run the one worker of a queue (refuses to start if another serves it)."""
    import logging

    import redis as redis_lib

    from runner.worker import WorkerLocked, run_worker

    level = os.environ.get("CCX_LOG_LEVEL", "INFO").upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ConfigError(f"CCX_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, not {level!r}.")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = _settings(
        redis_url, queue, handler_url=check_handler_url(handler_url, "--handler-url") if handler_url else None
    )
    port = parse_port(metrics_port, "--metrics-port") if metrics_port is not None else None
    try:
        sys.exit(
            run_worker(
                settings,
                standby=standby,
                burst=burst,
                logging_level=level,
                metrics_port=port,
                metrics_host=metrics_host,
            )
        )
    except WorkerLocked as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    except redis_lib.RedisError as exc:
        _fail(
            f"Redis is unreachable at {redact_url(settings.redis_url)} ({exc}): start it (e.g. `ccx up`) or set REDIS_URL.",
            EXIT_UNAVAILABLE,
        )


@main.group()
def schedule() -> None:
    """Recurring tasks by cron expression (UTC), submitted by the queue's worker when their time comes.

    \b
    ccx schedule add "0 3 * * *" "Run the nightly dependency update" --tools Edit,Bash
    ccx schedule list
    ccx schedule remove ID
    """


@schedule.command(name="add", context_settings={"ignore_unknown_options": True})
@click.argument("cron")
@task_options
@friendly_errors
def schedule_add(cron: str, **options: Any) -> None:
    """Submit TASK at every time CRON names (five fields, UTC); takes the options of `ccx submit`."""
    from runner import schedules

    redis_url, queue, as_json = options.pop("redis_url"), options.pop("queue"), options.pop("as_json")
    for name, flag in (
        ("after", "--after"),
        ("after_any", "--after-any"),
        ("key", "--key"),
        ("at", "--at"),
        ("in_", "--in"),
    ):
        if options.pop(name):
            raise SpecError(f"{flag} does not apply to a schedule: each firing is a new task, submitted at its time.")
    spec = _spec_from(options)
    schedules.check_cron(cron)  # a bad expression is said before Redis is even asked
    runner = _runner(redis_url, queue)
    entry = schedules.add(runner.redis, runner.settings.queue, cron, spec)
    if as_json:
        _emit_json(entry.to_dict())
        return
    click.echo(entry.id)
    click.echo(f"next: {events.iso(entry.next_at)} (the queue's worker submits it then)", err=True)


@schedule.command(name="list")
@redis_option
@queue_option
@json_option
@friendly_errors
def schedule_list(redis_url: str | None, queue: str | None, as_json: bool) -> None:
    """The queue's recurring tasks, soonest first."""
    from runner import schedules

    runner = _runner(redis_url, queue)
    entries = schedules.all_of(runner.redis, runner.settings.queue)
    if as_json:
        _emit_json([entry.to_dict() for entry in entries])
        return
    if not entries:
        click.echo(f"no schedules on queue '{runner.settings.queue}'")
        return
    width = shutil.get_terminal_size((120, 20)).columns
    click.echo(f"{'ID':<12}  {'CRON':<15}  {'NEXT (UTC)':<19}  {'LAST TASK':<36}  TASK")
    for entry in entries:
        when = events.iso(entry.next_at)[:19].replace("T", " ")
        line = f"{entry.id:<12}  {entry.cron:<15}  {when:<19}  {entry.last_task or '-':<36}  {escape_controls(entry.title())}"
        click.echo(line[:width])


@schedule.command(name="remove")
@click.argument("schedule_id")
@redis_option
@queue_option
@friendly_errors
def schedule_remove(schedule_id: str, redis_url: str | None, queue: str | None) -> None:
    """Stop a recurring task (tasks it already submitted are not touched)."""
    from runner import schedules

    runner = _runner(redis_url, queue)
    if not schedules.remove(runner.redis, runner.settings.queue, schedule_id):
        raise SpecError(f"No schedule {schedule_id} on queue '{runner.settings.queue}': see `ccx schedule list`.")
    click.echo(f"schedule {schedule_id} removed")


@main.command()
@click.option("--http", "http_mode", is_flag=True, help="serve streamable HTTP instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="with --http: address to bind.")
@click.option("--port", default="8767", show_default=True, help="with --http: port (0: any free one).")
@click.option(
    "--token", envvar="CCX_MCP_TOKEN", help="with --http: bearer token (CCX_MCP_TOKEN; default: the file mcp.token)."
)
@click.option("--tls-cert", help="with --http: certificate file (PEM), to serve https.")
@click.option("--tls-key", help="with --http: private key file (PEM).")
@redis_option
@queue_option
@friendly_errors
def mcp(
    http_mode: bool,
    host: str,
    port: str,
    token: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    redis_url: str | None,
    queue: str | None,
) -> None:
    """Serve the cc-execute tools over MCP, for a Claude Code session to drive: `claude mcp add ccx -- ccx mcp`.

    Tools: submit_task, task_status, wait_for_result, read_output, cancel_task, list_tasks, queue_status
    (docs/mcp.md)."""
    from handler.secretfile import MCP_TOKEN_FILE, config_dir, load_or_create
    from runner.mcp import server

    # Redis is checked per call (the server outlives outages); with none configured, Runner says so at once.
    runner = Runner(settings=_settings(redis_url, queue))
    if not http_mode:
        server.main_stdio_banner()
        sys.exit(server.run_stdio(runner))
    config = server.HttpConfig(
        host=host,
        port=parse_port(port, "--port"),
        token=token or load_or_create(config_dir() / MCP_TOKEN_FILE),
        token_hint="the token ccx mcp was given" if token else f"the token is in {config_dir() / MCP_TOKEN_FILE}",
        tls_cert=tls_cert,
        tls_key=tls_key,
        allow_insecure=runner.settings.allow_insecure,
    )
    sys.exit(server.run_http(runner, config))


@main.command(context_settings={"ignore_unknown_options": True, "help_option_names": []}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def handler(args: tuple[str, ...]) -> None:
    """Run the handler (WebSocket server that runs each task as a fresh process); see `ccx handler --help`."""
    from handler.__main__ import main as handler_main

    sys.exit(handler_main(list(args), prog="ccx handler"))


@main.command(context_settings={"ignore_unknown_options": True, "help_option_names": []}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def dashboard(args: tuple[str, ...]) -> None:
    """Serve the live dashboard of a queue (default http://127.0.0.1:8766/); see `ccx dashboard --help`."""
    from runner.dashboard import main as dashboard_main

    sys.exit(dashboard_main(list(args), prog="ccx dashboard"))


PORT = click.IntRange(0, 65535)


def _stop_on_signals() -> threading.Event:
    """An event SIGINT and SIGTERM set (saying so once), for ``ccx up`` to stop in order."""
    stopping = threading.Event()

    def stop_requested(*_: object) -> None:
        if not stopping.is_set():
            click.echo("stopping: a running task is interrupted and runs again when the stack is back…", err=True)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_requested)
    return stopping


def _watch(stack: LocalStack, stopping: threading.Event) -> None:
    """Until ``stopping`` is set; a part of the stack that exits raises :class:`StackError` naming it."""
    while not stopping.wait(0.5):
        for name, proc in (("handler", stack.handler), ("worker", stack.worker), ("dashboard", stack.dashboard)):
            if proc is not None and proc.poll() is not None:
                raise StackError(f"The {name} exited unexpectedly (code {proc.returncode}); stopping the stack.")


def _print_banner(stack: LocalStack, data_dir: Path, stack_path: Path) -> None:
    """What ``ccx up`` runs and where (stdout, aligned), and where its secrets are (stderr)."""
    from handler.secretfile import DASHBOARD_TOKEN_FILE, config_dir

    secrets_dir = config_dir()
    rows = [
        ("redis", redact_url(stack.redis_url or ""), f"embedded, data in {data_dir}" if stack.redis else ""),
        ("handler", stack.handler_url, f"allow: {stack.allow}"),
        ("worker", f"queue '{stack.queue}'", ""),
    ]
    if stack.dashboard_url:
        login = stack.dashboard_login_url if sys.stdout.isatty() else stack.dashboard_url
        rows.append(
            ("dashboard", login, "" if sys.stdout.isatty() else f"token in {secrets_dir / DASHBOARD_TOKEN_FILE}")
        )
    width = max(len(name) for name, _, _ in rows)
    for name, where, note in rows:
        click.echo(f"{name:<{width}}  {where}" + (f"  ({note})" if note else ""))
    click.echo(
        f"secrets in {secrets_dir} (mode 600); clients on this machine find the stack through {stack_path}",
        err=True,
    )
    if stack.allow == "*":
        click.echo(
            "note: the handler may run any executable ('--allow *'): fine for a one-user machine, since only "
            "holders of its token can reach it; use --allow to narrow it.",
            err=True,
        )


@main.command()
@click.option("--redis-url", envvar=["CCX_REDIS_URL", "REDIS_URL"], help="use this Redis instead of an embedded one.")
@insecure_redis_option
@click.option("--redis-port", type=PORT, default=6379, show_default=True, help="port of the embedded Redis.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="where the embedded Redis keeps its data (default ~/.local/share/cc-execute).",
)
@click.option("--handler-port", type=PORT, default=8765, show_default=True)
@click.option(
    "--token", envvar="CCX_HANDLER_TOKEN", help="handler token (CCX_HANDLER_TOKEN; default: the handler's token file)."
)
@click.option(
    "--allow",
    default="*",
    show_default=True,
    help="executables the handler may run ('*' = any; the stack binds loopback only).",
)
@click.option(
    "--dashboard-port",
    type=click.IntRange(-1, 65535),
    default=8766,
    show_default=True,
    help="port of the live dashboard (-1: none).",
)
@queue_option
@friendly_errors
def up(
    redis_url: str | None,
    redis_port: int,
    data_dir: Path | None,
    handler_port: int,
    token: str | None,
    allow: str,
    dashboard_port: int,
    queue: str | None,
) -> None:
    """Run the local stack in the foreground: Redis, the handler, one worker and the dashboard. Ctrl-C stops it all.

    Every part needs a secret, kept in private files (mode 600) under
    ~/.config/cc-execute and made on first use: the embedded Redis's password,
    the handler's token, the dashboard's token. Clients on this machine find
    them there; nothing needs to be copied by hand.
    """
    from handler.__main__ import default_token_file
    from handler.secretfile import DASHBOARD_TOKEN_FILE, REDIS_PASSWORD_FILE, config_dir, load_or_create
    from runner.stack import RedisServer, remove_stack_file, write_stack_file

    data_dir = data_dir or default_data_dir()
    secrets_dir = config_dir()
    if redis_url:  # the stack's worker (and every client finding it through the stack file) would refuse a bad one
        redis_url = _settings(redis_url, queue).redis_url
    stack = LocalStack(
        redis_url=redis_url,
        handler_port=handler_port,
        handler_token=token or load_or_create(default_token_file()),
        allow=allow,
        queue=queue or "ccx",
        worker_output=None,
        dashboard_port=None if dashboard_port < 0 else dashboard_port,
        dashboard_token=load_or_create(secrets_dir / DASHBOARD_TOKEN_FILE) if dashboard_port >= 0 else None,
    )
    if redis_url is None:
        password = load_or_create(secrets_dir / REDIS_PASSWORD_FILE, "Redis password")
        stack.redis = RedisServer(data_dir / "redis", port=redis_port, password=password)
    stopping = _stop_on_signals()
    started = False
    try:
        if stack.redis is not None:
            stack.redis.start()
            stack.redis_url = stack.redis.url
        stack.start()
        started = True
        stack_path = write_stack_file(stack)
        _print_banner(stack, data_dir, stack_path)
        click.echo("ready — submit with `ccx run ...`; Ctrl-C stops everything.", err=True)
        _watch(stack, stopping)
    finally:
        remove_stack_file()
        stack.stop()
        if started:
            click.echo("stopped.", err=True)


if __name__ == "__main__":
    main()
