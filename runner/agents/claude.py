"""Claude Code: ``claude -p <task> --output-format stream-json --verbose``.

Its stdout is one JSON object per line: ``system/init`` (session id, model,
tools), ``assistant`` and ``user`` turns, and a final ``result`` with the
answer, cost and usage. A line may be several MB and split across frames, so
lines are reassembled before parsing; non-JSON lines are kept as output. The
same events read as a transcript (:class:`ClaudeTranscript`): the lines ``ccx run``
prints, the dashboard shows and MCP pages hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from handler.protocol import ExecuteResult
from runner.agents.base import (
    MAX_LINE_CHARS,
    MAX_PLAIN_CHARS,
    OPTIONAL_FIELDS,
    Agent,
    JsonEventParser,
    Outcome,
    OutputParser,
    Transcript,
    exit_error,
    parse_json_line,
)

if TYPE_CHECKING:
    from runner.spec import TaskSpec

__all__ = ["ClaudeAgent", "ClaudeParser", "ClaudeTranscript", "describe_claude_event"]

RESULT_FIELDS = (
    "subtype",
    "is_error",
    "result",
    "num_turns",
    "total_cost_usd",
    "duration_ms",
    "duration_api_ms",
    "usage",
    "permission_denials",
    "errors",
    "session_id",
    "structured_output",
    "api_error_status",
)


class ClaudeParser(JsonEventParser):
    def __init__(self, output_limit: int) -> None:
        super().__init__(output_limit)
        self.init: dict[str, Any] = {}
        self.result: dict[str, Any] | None = None
        self.rate_limit: dict[str, Any] | None = None
        self.tool_calls = 0
        self.api_retries = 0

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "system" and event.get("subtype") == "init":
            self.init = {key: event.get(key) for key in ("session_id", "model", "tools", "cwd", "permissionMode")}
        elif kind == "result":
            self.result = event
        elif kind == "rate_limit_event" and isinstance(event.get("rate_limit_info"), dict):
            self.rate_limit = event["rate_limit_info"]
        elif kind == "system" and event.get("subtype") == "api_retry":
            self.api_retries += 1
        elif kind == "assistant":
            content = (event.get("message") or {}).get("content")
            if isinstance(content, list):
                self.tool_calls += sum(
                    1 for block in content if isinstance(block, dict) and block.get("type") == "tool_use"
                )

    def finish(self, result: ExecuteResult) -> Outcome:
        self.flush_lines()
        info: dict[str, Any] = {"name": "claude", **{k: v for k, v in self.init.items() if v is not None}}
        info["tool_calls"] = self.tool_calls
        if self.api_retries:
            info["api_retries"] = self.api_retries
        if self.rate_limit is not None:
            info["rate_limit"] = self.rate_limit
        if self.result is None:
            if result.timed_out or result.cancelled:
                return Outcome(False, self.stdout.text(), None, info)
            return Outcome(
                False,
                self.stdout.text(),
                "Claude Code ended without a result event ("
                + exit_error(result, self.stderr.text(), "it").rstrip(".")
                + "); see the task log.",
                info,
            )
        info.update({key: self.result.get(key) for key in RESULT_FIELDS if key in self.result})
        text = self.result.get("result")
        is_error = bool(self.result.get("is_error")) or self.result.get("subtype") not in (None, "success")
        # The answer, or nothing for an error without one: the raw stream stays in the task's log.
        output = text if isinstance(text, str) else ("" if is_error else self.stdout.text())
        if is_error:
            return Outcome(False, output, f"Claude Code reported an error: {self._error_detail()}", info)
        if result.exit_code != 0:
            return Outcome(False, output, exit_error(result, self.stderr.text(), "Claude Code"), info)
        return Outcome(True, output, None, info)

    def _error_detail(self) -> str:
        """The result text, else the subtype with the messages of ``errors`` (e.g. error_max_turns)."""
        assert self.result is not None
        text = self.result.get("result")
        if isinstance(text, str) and text:
            return text
        detail = str(self.result.get("subtype") or "error")
        errors = self.result.get("errors")
        if isinstance(errors, list) and errors:
            detail += ": " + "; ".join(str(error) for error in errors)
        return detail


TOOL_KEYS = ("file_path", "path", "command", "pattern", "url", "query", "description", "prompt")
"""The tool input shown in a tool call's line: the first of these it has."""


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe_system(event: dict[str, Any]) -> list[str] | None:
    """Lines for the session, retry, fallback and rate-limit events; None for any other kind."""
    kind, subtype = event.get("type"), event.get("subtype")
    if kind == "system" and subtype == "init":
        return [f"● session {event.get('session_id', '?')} · model {event.get('model', '?')}"]
    if kind == "system" and subtype == "api_retry":
        status = event.get("error_status")
        cause = f"after {status}" if status else "after a network error"
        delay = event.get("retry_delay_ms")
        wait = f", in {delay / 1000:.1f} s" if isinstance(delay, (int, float)) else ""
        return [
            f"↻ retrying {event.get('attempt', '?')}/{event.get('max_retries', '?')} {cause} ({event.get('error', '?')}{wait})"
        ]
    if kind == "system" and subtype == "model_fallback":
        return [f"↘ falling back to {event.get('fallback_model', '?')} ({event.get('trigger', '?')})"]
    if kind == "rate_limit_event" and isinstance(event.get("rate_limit_info"), dict):
        info = event["rate_limit_info"]
        if info.get("status") == "rejected":
            return [f"■ usage limit reached ({info.get('rateLimitType', '?')}); the queue pauses until it resets"]
        if info.get("status") == "allowed_warning" and isinstance(info.get("utilization"), (int, float)):
            return [f"⚠ {info['utilization']:.0%} of the {info.get('rateLimitType', 'usage')} limit used"]
        return []
    return None


def _describe_turn(kind: str, message: Any) -> list[str]:
    """Lines for an ``assistant`` or ``user`` turn: the assistant's text, tool calls and their results."""
    lines: list[str] = []
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    for item in content if isinstance(content, list) else []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "text" and kind == "assistant":
            lines.append(str(item.get("text", "")).rstrip())
        elif item.get("type") == "tool_use":
            args = item.get("input")
            args = args if isinstance(args, dict) else {}
            key = next((str(args[k]) for k in TOOL_KEYS if k in args), "")
            lines.append(f"→ {item.get('name', 'tool')}({_short(key, 120)})")
        elif item.get("type") == "tool_result":
            body = item.get("content")
            if isinstance(body, list):
                body = " ".join(str(part.get("text", "")) for part in body if isinstance(part, dict))
            mark = "✗" if item.get("is_error") else "←"
            lines.append(f"  {mark} {_short(str(body or ''), 160)}")
    return lines


def _describe_result(event: dict[str, Any]) -> str:
    cost = event.get("total_cost_usd")
    tail = f" · ${cost:.4f}" if isinstance(cost, (int, float)) else ""
    turns = event.get("num_turns")
    tail += f" · {turns} turn{'s' if turns != 1 else ''}" if isinstance(turns, int) else ""
    mark = "✗" if event.get("is_error") else "✓"
    text = event.get("result")
    if not isinstance(text, str) or not text:
        text = str(event.get("subtype") or "")
        errors = event.get("errors")
        if isinstance(errors, list) and errors:
            text += ": " + "; ".join(str(error) for error in errors)
    return f"{mark} {_short(text, 500)}{tail}"


def describe_claude_event(event: dict[str, Any]) -> list[str]:
    """Readable lines for one Claude Code stream-json event (empty for the uninteresting ones)."""
    system = _describe_system(event)
    if system is not None:
        return system
    kind = event.get("type")
    if kind in ("assistant", "user"):
        return _describe_turn(str(kind), event.get("message"))
    if kind == "result":
        return [_describe_result(event)]
    return []


class ClaudeTranscript(Transcript):
    """Claude Code's stream-json as people read it: a line or two per event, nothing for the uninteresting."""

    def render(self, line: str) -> list[str] | None:
        event = parse_json_line(line)
        return None if event is None else describe_claude_event(event)

    def step(self, text: str) -> bool:
        return text.startswith(("→", "●"))  # a tool call, or the session starting


ARGV_PROMPT_LIMIT = 64 * 1024
"""Bytes of prompt passed on the command line; a longer prompt goes through stdin."""


class ClaudeAgent(Agent):
    name = "claude"
    display_name = "Claude Code"
    binary = "claude"
    binary_env = "CCX_CLAUDE_BIN"
    install_hint = "install it with `npm install -g @anthropic-ai/claude-code`"
    options = frozenset(OPTIONAL_FIELDS) - {"argv"}

    def argv(self, spec: TaskSpec) -> list[str]:
        argv = [self.binary, "-p", "--output-format", "stream-json", "--verbose"]
        if spec.tools:
            argv += ["--allowedTools", ",".join(spec.tools)]
        if spec.disallowed_tools:
            argv += ["--disallowedTools", ",".join(spec.disallowed_tools)]
        for flag, value in (
            ("--permission-mode", spec.permission_mode),
            ("--model", spec.model),
            ("--max-turns", str(spec.max_turns) if spec.max_turns else None),
            ("--append-system-prompt", spec.append_system_prompt),
            ("--system-prompt", spec.system_prompt),
            ("--mcp-config", spec.mcp_config),
            ("--fallback-model", spec.fallback_model),
            ("--effort", spec.effort),
            ("--settings", spec.settings),
            ("--session-id", spec.session_id),
            ("--max-budget-usd", f"{spec.max_budget_usd:g}" if spec.max_budget_usd else None),
            ("--json-schema", orjson.dumps(spec.json_schema).decode() if spec.json_schema else None),
        ):
            if value:
                argv += [flag, value]
        if spec.resume:
            argv.append(f"--resume={spec.resume}")  # one element: an id starting with '-' is never a flag
        if spec.bare:
            argv.append("--bare")
        for directory in spec.add_dirs or []:
            argv.append(f"--add-dir={directory}")
        argv += spec.extra_args or []
        if self.stdin(spec) is not None:
            return argv  # `claude -p` reads the prompt from its standard input
        # The prompt goes last, after `--`: options such as --allowedTools take several
        # values, and a prompt starting with `-` must not be read as an option. Being
        # its own argv element, quotes, `$` and newlines reach the CLI unchanged.
        return [*argv, "--", spec.task]

    def stdin(self, spec: TaskSpec) -> str | None:
        # Linux caps one argv string at 128 KiB (MAX_ARG_STRLEN): a longer prompt would fail to exec
        # with "Argument list too long". Those go through standard input instead.
        return spec.task if len(spec.task.encode()) > ARGV_PROMPT_LIMIT else None

    def env(self, spec: TaskSpec) -> dict[str, str | None]:
        # The CLI refuses to start inside another Claude Code session when CLAUDECODE is set.
        return {"CLAUDECODE": None, **(spec.env or {})}

    def parser(self, output_limit: int) -> OutputParser:
        return ClaudeParser(output_limit)

    def transcript(
        self,
        carry: str | None = "",
        *,
        max_line_chars: int | None = MAX_LINE_CHARS,
        max_plain_chars: int | None = MAX_PLAIN_CHARS,
    ) -> Transcript | None:
        return ClaudeTranscript(carry, max_line_chars=max_line_chars, max_plain_chars=max_plain_chars)
