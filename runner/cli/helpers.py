"""What the ``ccx`` commands share: their options, the :class:`Runner` they are given, and how their errors end.

Every failure ends in one sentence on stderr and a non-zero exit status (:func:`friendly_errors`, the one place
that decides both): 1 when a task did not succeed, 2 for a usage or input error, 3 when a service (Redis, the
handler) cannot be reached.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click
import orjson
import redis

from handler.config import ConfigError as HandlerConfigError
from runner.agents import DEFAULT_AGENT, agent_names
from runner.client import Runner, TaskHandle
from runner.config import Settings, check_redis_url
from runner.errors import EXIT_TASK_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE, CcxError, SpecError
from runner.schedules import parse_delay

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"ccx: {message}", err=True)
    sys.exit(code)


def friendly_errors(func: F) -> F:
    """Turn the errors a user can meet into one sentence and an exit status, never a traceback.

    Safe to nest (:func:`pass_task` over :func:`pass_runner`): the inner one ends the process first."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CcxError as exc:  # each carries its exit status (runner/errors.py)
            fail(str(exc), exc.exit_status)
        except HandlerConfigError as exc:  # from the handler's parsers the CLI calls (parse_port, secret files)
            fail(str(exc), EXIT_USAGE)
        except TimeoutError as exc:
            fail(f"{exc} It is still queued or running; check later with `ccx status`.", EXIT_TASK_FAILED)
        except redis.RedisError as exc:
            fail(f"Lost the connection to Redis ({exc}); check that it is running, then try again.", EXIT_UNAVAILABLE)
        except BrokenPipeError:
            # The reader went away (e.g. `ccx follow ID | head`): nothing is wrong with the task.
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter from complaining at exit
            sys.exit(0)
        except KeyboardInterrupt:
            fail("interrupted; a submitted task keeps running (see `ccx list`, stop it with `ccx cancel ID`).", 130)

    return wrapper  # type: ignore[return-value]


def emit_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def escapes(stream: Any, raw: bool) -> bool:
    """Whether the task's output written to ``stream`` shows its control characters as text (``\\x1b``):
    on a terminal, which would act on them (window title, clipboard, cursor), unless ``--raw``."""
    return not raw and stream.isatty()


def cli_settings(redis_url: str | None, queue: str | None, **flags: Any) -> Settings:
    """The environment's settings with the command's flags over it (the Redis URL checked as Settings do)."""
    url = check_redis_url(redis_url, "--redis-url") if redis_url else None
    return Settings.from_env(redis_url=url, queue=queue, **flags)


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


def redis_option(func: F) -> F:
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


def pass_runner(func: F | None = None, *, ping: bool = True) -> Any:
    """Give the command ``--redis-url``, ``--insecure-redis`` and ``--queue``, and call it with ``runner=``: a
    :class:`Runner` built once from those flags over the environment over the defaults, its errors made friendly.

    ``ping=False`` skips asking Redis up front (``ccx mcp``, which outlives outages, asks per call)."""

    def decorate(command: F) -> F:
        @friendly_errors
        @functools.wraps(command)
        def wrapper(*args: Any, redis_url: str | None, queue: str | None, **kwargs: Any) -> Any:
            runner = Runner(settings=cli_settings(redis_url, queue))
            if ping:
                runner.ping()
            return command(*args, runner=runner, **kwargs)

        return redis_option(queue_option(wrapper))  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate


@dataclass(frozen=True)
class TaskRequest:
    """A task as the command line gives it: its spec, and when (or after what) it may run."""

    spec: dict[str, Any]
    after: str | None = None
    after_any: bool = False
    key: str | None = None
    at: str | None = None
    delay: float | None = None

    @property
    def agent(self) -> str:
        return str(self.spec["agent"])

    def submit(self, runner: Runner) -> TaskHandle:
        return runner.submit(
            self.spec, after=self.after, after_any=self.after_any, key=self.key, at=self.at, in_=self.delay
        )


_TIMING_FLAGS = (("after", "--after"), ("after_any", "--after-any"), ("key", "--key"), ("at", "--at"), ("in_", "--in"))


def _request_from(options: dict[str, Any], recurring: bool) -> TaskRequest:
    """Pops the task options; a recurring task (a schedule) refuses the flags that say when one task runs."""
    if recurring:
        for name, flag in _TIMING_FLAGS:
            if options.pop(name):
                raise SpecError(
                    f"{flag} does not apply to a schedule: each firing is a new task, submitted at its time."
                )
        return TaskRequest(spec=_spec_from(options))
    after, after_any, key, at, delay = (options.pop(name) for name, _ in _TIMING_FLAGS)
    seconds = parse_delay(delay) if delay is not None else None
    return TaskRequest(_spec_from(options), after=after, after_any=after_any, key=key, at=at, delay=seconds)


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


_TASK_OPTIONS = (
    click.argument("task", required=False, default=""),
    click.argument("argv", nargs=-1, type=click.UNPROCESSED),
    click.option("--agent", default=DEFAULT_AGENT, show_default=True, help=f"{agent_names()}."),
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
    click.option("--extra-arg", "extra_args", multiple=True, help="one more agent flag we do not model (repeatable)."),
    click.option("--after", help="run only after this task id has ended."),
    click.option("--after-any", is_flag=True, help="with --after: run even if that task failed."),
    click.option("--key", help="idempotency key: while a task with it is queued, running or just ended, return it."),
    click.option("--at", "at", help="run at this time, ISO 8601 (e.g. 2026-12-02T03:00:00Z; UTC if no zone)."),
    click.option("--in", "in_", help="run after this delay: 90, 90s, 10m, 2h or 1d."),
    click.option("--webhook", help="URL that gets a signed JSON POST when the task ends (docs/webhooks.md)."),
)


def pass_task(func: F | None = None, *, recurring: bool = False) -> Any:
    """Give the command the task options of ``ccx submit`` and call it with ``request=``, a :class:`TaskRequest`.

    The options are checked here, before the command (or a :func:`pass_runner` under this) asks Redis anything:
    bad input is said as such, whether or not Redis is up. ``recurring``: for a schedule, which refuses
    ``--after``, ``--after-any``, ``--key``, ``--at`` and ``--in``."""

    def decorate(command: F) -> F:
        @friendly_errors
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            request = _request_from(kwargs, recurring)  # pops the task options; the command's own stay
            return command(*args, request=request, **kwargs)

        for option in reversed(_TASK_OPTIONS):
            wrapper = option(wrapper)
        return wrapper  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate
