"""The task spec an orchestrator submits and the result it gets back.

Both are plain dataclasses that round-trip through JSON: Redis never holds
anything but JSON, so any language can submit tasks and read results.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson

from handler.config import HandlerConfig
from runner import clock, keys
from runner.agents import AGENTS, DEFAULT_AGENT, get_agent
from runner.config import check_http_url
from runner.errors import ConfigError, SpecError

DEFAULT_TIMEOUT = 3600.0
"""Seconds a task may run when the submitter gives no timeout: long enough for an agent, never forever."""
MAX_TIMEOUT = 7 * 24 * 3600.0
"""The most seconds ``timeout`` and ``idle_timeout`` may be (7 days). Beyond it a number is a mistake, not a
plan: RQ's job timeout and the work-horse's alarm cannot hold 1e18 s (the work-horse dies with a traceback),
and a queue that runs one task at a time should not be held by one task for longer than a week."""
MAX_ARG_BYTES = 131072
"""Linux's MAX_ARG_STRLEN: the bytes of one command-line argument, its closing NUL included. A longer one
makes exec fail with "Argument list too long", so it is refused at submit instead of failing at run time."""
MAX_COMMAND_LINE_BYTES = 1024 * 1024
"""The most bytes a task's command line and ``env`` may take together (each string with its NUL): half of
the usual 2 MiB ARG_MAX, so the handler's own environment still fits beside it."""
MAX_REQUEST_BYTES = HandlerConfig.max_message_bytes - 64 * 1024
"""The most bytes, as JSON, of what a task sends the handler to run it (its prompt on stdin, command line, cwd
and env): the handler reads messages of at most 16 MiB and closes the connection on a longer one (code 1009,
docs/protocol.md), so a longer task is refused at submit. 64 KiB are left for what the worker adds (the
JSON-RPC envelope, the fencing token, earlier runs' ids)."""


EFFORTS = ("low", "medium", "high", "xhigh", "max")
RESERVED_ARGS = ("-p", "--print", "--output-format", "--input-format", "--verbose", "--")
"""Flags the runner sets itself (its parser depends on them): never in ``extra_args``."""


def _check_str_list(name: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SpecError(f"'{name}' must be a list of strings.")
    return list(value)


def _check_webhook(value: Any) -> str:
    if not isinstance(value, str):
        raise SpecError("'webhook' must be an http:// or https:// URL such as https://example.com/hook.")
    try:
        return check_http_url(value, "'webhook'")
    except ConfigError as exc:
        raise SpecError(str(exc)) from None


def as_real(value: Any) -> float | None:
    """``value`` as a float if it is an int or a float (not a bool), else None. An int too large for a float
    (``10**400``, which Python and JSON allow) is an infinity of its sign: ``math.isfinite`` and ``float()``
    raise OverflowError on it, so every bound checks the float this returns, never the value itself."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _check_seconds(name: str, value: Any, refusal: str, zero_ok: bool = True) -> float:
    """``value`` as seconds if it is a finite number from 0 (above 0 unless ``zero_ok``) to :data:`MAX_TIMEOUT`;
    else a :class:`SpecError`: ``refusal`` for what is no duration at all, a sentence on the maximum for too much."""
    seconds = as_real(value)
    if seconds is None or not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
        raise SpecError(refusal)
    if seconds > MAX_TIMEOUT:
        raise SpecError(
            f"'{name}' is {seconds:g} seconds, more than the {MAX_TIMEOUT:.0f} (7 days) a task may have: "
            "give at most that, or split the work into several tasks."
        )
    return seconds


def _arg_name(agent: str, argv: list[str], index: int, spec: TaskSpec) -> str:
    """Which part of the spec made ``argv[index]``, in the words of the spec."""
    arg = argv[index]
    if agent == "command":
        return f"'argv' element {index}"
    if spec.task and arg.endswith(spec.task):
        return "the task (the prompt)"
    if arg.startswith("-"):
        return f"the value of {arg.split('=', 1)[0]}"
    if index and argv[index - 1].startswith("-"):
        return f"the value of {argv[index - 1]}"
    return f"argument {index} of the {agent} command line"


def _check_command_line(agent: str, argv: list[str], spec: TaskSpec) -> None:
    """Refuse a command line the OS would refuse at exec ("Argument list too long"), naming what is too long."""
    sizes = [len(arg.encode("utf-8", "surrogatepass")) + 1 for arg in argv]  # each string ends with a NUL
    for index, size in enumerate(sizes):
        if size > MAX_ARG_BYTES:
            raise SpecError(
                f"{_arg_name(agent, argv, index, spec)} is {size - 1:,} bytes, more than the {MAX_ARG_BYTES - 1:,} "
                "one command-line argument may have (Linux's MAX_ARG_STRLEN): put that much data in a file and "
                "pass its path instead."
            )
    env = [f"{k}={v}" for k, v in (spec.env or {}).items() if v is not None]
    total = sum(sizes) + sum(len(item.encode("utf-8", "surrogatepass")) + 1 for item in env)
    if total > MAX_COMMAND_LINE_BYTES:
        raise SpecError(
            f"The {agent} command line and 'env' of this task take {total:,} bytes, more than the "
            f'{MAX_COMMAND_LINE_BYTES:,} a task may have (the OS refuses long command lines with "Argument list '
            'too long"): put the large parts in files and pass their paths instead.'
        )


def _not_utf8() -> SpecError:
    return SpecError(
        "The task holds a lone surrogate (such as \\udcff, what decoding bytes that are not UTF-8 leaves), which "
        "cannot be sent to the handler: give its text as UTF-8."
    )


def _check_request_size(agent: str, argv: list[str], stdin: str | None, spec: TaskSpec) -> None:
    """Refuse a task whose request to the handler would be longer than the handler reads (:data:`MAX_REQUEST_BYTES`):
    it would be cut off at run time, not refused when given. Only the prompt on stdin and ``cwd`` are unbounded
    otherwise; the command line and ``env`` are at most :data:`MAX_COMMAND_LINE_BYTES`."""
    try:
        size = len(orjson.dumps([argv, spec.cwd, spec.env, stdin]))
    except orjson.JSONEncodeError:  # a lone surrogate in a field _check_texts does not look at
        raise _not_utf8() from None
    if size <= MAX_REQUEST_BYTES:
        return
    if stdin is not None:
        raise SpecError(
            f"The task (the prompt) is {len(stdin.encode()):,} bytes, which makes a {size:,}-byte request to "
            f"the handler, more than the {MAX_REQUEST_BYTES:,} it reads (16 MiB less room for the rest of the "
            "message): put most of the text in a file and have the agent read it from there."
        )
    raise SpecError(
        f"The {agent} command line, 'cwd' and 'env' of this task make a {size:,}-byte request to the handler, "
        f"more than the {MAX_REQUEST_BYTES:,} it reads (16 MiB less room for the rest of the message): "
        "shorten them, or put the large parts in files."
    )


TITLE_CHARS = 160


def title(spec: dict[str, Any]) -> str:
    """One line saying what a task does: the prompt, or the command line (lists, dashboards, tools)."""
    if spec.get("agent") == "command":
        what = " ".join(str(arg) for arg in spec.get("argv") or [])
    else:
        what = str(spec.get("task") or "")
    what = " ".join(what.split())
    return what if len(what) <= TITLE_CHARS else what[: TITLE_CHARS - 1] + "…"


@dataclass
class TaskSpec:
    """What to run. ``task`` is the prompt; ``argv`` is for the ``command`` agent."""

    task: str = ""
    agent: str = DEFAULT_AGENT
    tools: list[str] | None = None
    disallowed_tools: list[str] | None = None
    timeout: float = DEFAULT_TIMEOUT
    """Seconds of wall-clock time the task may run: more than 0, at most :data:`MAX_TIMEOUT` (7 days)."""
    retries: int | None = None
    """Times the task runs again after a transient failure (API overload, network); None: the agent's
    default (2 for agent CLIs, 0 for commands)."""
    retry_on_exit_codes: list[int] | None = None
    """For commands: the exit codes that count as transient (retried up to ``retries`` times)."""
    idle_timeout: float | None = None
    """Seconds without any output before the run is stopped as hung; None: the agent's default
    (600 for agent CLIs, none for commands); 0: never; at most :data:`MAX_TIMEOUT` (7 days)."""
    cwd: str | None = None
    env: dict[str, str | None] | None = None
    model: str | None = None
    max_turns: int | None = None
    permission_mode: str | None = None
    append_system_prompt: str | None = None
    mcp_config: str | None = None
    resume: str | None = None
    argv: list[str] | None = None
    """The ``command`` agent's command line. Each argument is at most :data:`MAX_ARG_BYTES` bytes with its
    NUL, and the whole command line with ``env`` at most :data:`MAX_COMMAND_LINE_BYTES` (for every agent)."""
    json_schema: dict[str, Any] | None = None
    """A JSON Schema the answer must satisfy; the validated object is the result's ``structured_output``."""
    fallback_model: str | None = None
    effort: str | None = None
    add_dirs: list[str] | None = None
    settings: str | None = None
    system_prompt: str | None = None
    session_id: str | None = None
    bare: bool = False
    max_budget_usd: float | None = None
    extra_args: list[str] | None = None
    """More command-line flags for the agent, for what the spec does not model (checked, never a shell string)."""
    webhook: str | None = None
    """An http(s) URL that gets a signed JSON POST when the task ends, instead of the queue's (docs/webhooks.md)."""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        """Build and validate a spec; unknown fields and wrong types raise :class:`SpecError`."""
        if not isinstance(data, dict):
            raise SpecError("A task spec must be a JSON object.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"Unknown task field(s): {', '.join(unknown)}. Known fields: {', '.join(sorted(known))}.")
        spec = cls(**{k: v for k, v in data.items() if v is not None or k == "timeout"})
        if data.get("timeout") is None:
            spec.timeout = DEFAULT_TIMEOUT
        spec.validate()
        return spec

    def _validate_agent_options(self) -> None:
        if self.json_schema is not None and (not isinstance(self.json_schema, dict) or not self.json_schema):
            raise SpecError('\'json_schema\' must be a JSON Schema object, e.g. {"type": "object", ...}.')
        if self.effort is not None and self.effort not in EFFORTS:
            raise SpecError(f"'effort' must be one of {', '.join(EFFORTS)}.")
        if self.add_dirs is not None and (
            not isinstance(self.add_dirs, list) or not all(isinstance(d, str) and d for d in self.add_dirs)
        ):
            raise SpecError("'add_dirs' must be a list of directory paths.")
        if self.session_id is not None:
            try:
                uuid.UUID(str(self.session_id))
            except ValueError:
                raise SpecError("'session_id' must be a UUID (the agent's session ids are UUIDs).") from None
        if not isinstance(self.bare, bool):
            raise SpecError("'bare' must be true or false.")
        budget = as_real(self.max_budget_usd)
        if self.max_budget_usd is not None and (budget is None or not math.isfinite(budget) or budget <= 0):
            raise SpecError("'max_budget_usd' must be a positive number of dollars.")
        if self.extra_args is not None:
            if not isinstance(self.extra_args, list) or not all(isinstance(a, str) for a in self.extra_args):
                raise SpecError("'extra_args' must be a list of strings, e.g. [\"--strict-mcp-config\"].")
            if self.extra_args and not self.extra_args[0].startswith("-"):
                raise SpecError("'extra_args' must start with a flag (it is not a place for the prompt).")
            for arg in self.extra_args:
                if arg.split("=", 1)[0] in RESERVED_ARGS:
                    raise SpecError(f"'extra_args' may not contain {arg.split('=', 1)[0]}: the runner sets it.")
                if "\0" in arg:
                    raise SpecError("'extra_args' must not contain NUL characters.")

    def _validate_limits(self) -> None:
        """Times and counts: finite, in range, and said in one sentence when not."""
        self.timeout = _check_seconds(
            "timeout", self.timeout, "'timeout' must be a positive number of seconds.", zero_ok=False
        )
        if self.idle_timeout is not None:
            self.idle_timeout = _check_seconds(
                "idle_timeout", self.idle_timeout, "'idle_timeout' must be a number of seconds (0: never)."
            )
        if self.retries is not None and (
            isinstance(self.retries, bool) or not isinstance(self.retries, int) or not 0 <= self.retries <= 20
        ):
            raise SpecError("'retries' must be a whole number from 0 to 20.")
        if self.retry_on_exit_codes is not None and (
            not isinstance(self.retry_on_exit_codes, list)
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 < c < 256 for c in self.retry_on_exit_codes)
        ):
            raise SpecError("'retry_on_exit_codes' must be a list of exit codes from 1 to 255.")

    def validate(self) -> None:
        if not isinstance(self.task, str):
            raise SpecError("'task' must be a string (the prompt).")
        if not isinstance(self.agent, str) or not self.agent:
            raise SpecError("'agent' must name an agent.")
        self.tools = _check_str_list("tools", self.tools)
        self.disallowed_tools = _check_str_list("disallowed_tools", self.disallowed_tools)
        if self.argv is not None and (
            not isinstance(self.argv, list) or not all(isinstance(a, str) for a in self.argv)
        ):
            raise SpecError("'argv' must be a list of strings.")
        self._validate_limits()
        for name in (
            "cwd",
            "model",
            "permission_mode",
            "append_system_prompt",
            "mcp_config",
            "resume",
            "fallback_model",
            "settings",
            "system_prompt",
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise SpecError(f"'{name}' must be a string.")
        if self.max_turns is not None and (
            isinstance(self.max_turns, bool) or not isinstance(self.max_turns, int) or self.max_turns < 1
        ):
            raise SpecError("'max_turns' must be a positive integer.")
        if self.env is not None and (
            not isinstance(self.env, dict)
            or not all(
                isinstance(k, str) and k and "=" not in k and (v is None or isinstance(v, str))
                for k, v in self.env.items()
            )
        ):
            raise SpecError("'env' must map variable names to strings (or null to remove one).")
        if not isinstance(self.metadata, dict):
            raise SpecError("'metadata' must be an object.")
        if self.webhook is not None:
            self.webhook = _check_webhook(self.webhook)
        self._validate_agent_options()
        self._check_texts()
        agent = get_agent(self.agent)
        agent.check(self, AGENTS.values())
        argv = agent.argv(self)
        _check_command_line(agent.name, argv, self)
        _check_request_size(agent.name, argv, agent.stdin(self), self)

    def _check_texts(self) -> None:
        """The texts that reach the OS must be ones it can take: no NUL, and UTF-8 (no lone surrogate)."""
        texts = [self.task, self.cwd or "", *(self.argv or []), *(self.tools or [])]
        texts += [f"{k}={v or ''}" for k, v in (self.env or {}).items()]
        if any("\0" in text for text in texts):
            raise SpecError(
                "The task, argv, cwd, tools and env must not contain NUL characters (an OS command line cannot)."
            )
        for text in texts:
            if not text.isascii():  # (ASCII, the usual case, is valid UTF-8 without encoding it)
                try:
                    text.encode()
                except UnicodeEncodeError:
                    raise _not_utf8() from None


@dataclass
class TaskResult:
    """The outcome of one task, as stored in Redis and returned to orchestrators."""

    id: str
    success: bool = False
    exit_code: int | None = None
    signal: int | None = None
    output: str = ""
    output_truncated: bool = False
    stderr: str = ""
    timed_out: bool = False
    cancelled: bool = False
    error: str | None = None
    duration_ms: float | None = None
    started_at: str | None = None
    ended_at: str | None = None
    agent: dict[str, Any] = field(default_factory=dict)
    log_key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    """The last attempt was ended by the infrastructure (a handler or worker stopping or dying), not the task."""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    """Earlier attempts that were interrupted, oldest first: ``started_at``, ``ended_at``, ``error``."""
    structured_output: Any = None
    """With ``json_schema``: the object the agent returned, validated against the schema."""

    @classmethod
    def failed(cls, task_id: str, error: str, **fields_: Any) -> TaskResult:
        """An end that is not the task's own result (an infrastructure failure, a refused spec), with the
        metadata every result carries: when it ended and where its log is."""
        return cls(
            id=task_id, error=error, **{"ended_at": clock.now_iso(), "log_key": keys.log_key(task_id), **fields_}
        )

    @classmethod
    def cancelled_with(cls, task_id: str, error: str, **fields_: Any) -> TaskResult:
        """A cancelled end (``error`` says who cancelled it, or why), with the same metadata as :meth:`failed`."""
        return cls.failed(task_id, error, cancelled=True, **fields_)

    @property
    def status(self) -> str:
        if self.success:
            return "finished"
        return "cancelled" if self.cancelled else "failed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
