"""Human output of ``ccx``: raw output for commands, a readable transcript for agent runs.

Kept apart from the CLI's logic so the same rendering serves ``run``, ``follow``
and tests. Rendering happens in the reader, never in the worker's hot path.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from handler.protocol import STDERR
from runner import events
from runner.agents.base import LineSplitter
from runner.agents.claude import parse_json_line

TOOL_KEYS = ("file_path", "path", "command", "pattern", "url", "query", "description", "prompt")


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_claude_event(event: dict[str, Any]) -> list[str]:
    """Readable lines for one Claude Code stream-json event (empty for the uninteresting ones)."""
    kind = event.get("type")
    if kind == "system" and event.get("subtype") == "init":
        return [f"● session {event.get('session_id', '?')} · model {event.get('model', '?')}"]
    lines: list[str] = []
    if kind in ("assistant", "user"):
        content = (event.get("message") or {}).get("content") or []
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        for item in content:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "text" and kind == "assistant":
                lines.append(str(item.get("text", "")).rstrip())
            elif item.get("type") == "tool_use":
                args = item.get("input") or {}
                key = next((str(args[k]) for k in TOOL_KEYS if k in args), "")
                lines.append(f"→ {item.get('name', 'tool')}({_short(key, 120)})")
            elif item.get("type") == "tool_result":
                body = item.get("content")
                if isinstance(body, list):
                    body = " ".join(str(part.get("text", "")) for part in body if isinstance(part, dict))
                mark = "✗" if item.get("is_error") else "←"
                lines.append(f"  {mark} {_short(str(body or ''), 160)}")
    elif kind == "result":
        cost = event.get("total_cost_usd")
        tail = f" · ${cost:.4f}" if isinstance(cost, (int, float)) else ""
        turns = event.get("num_turns")
        tail += f" · {turns} turn{'s' if turns != 1 else ''}" if isinstance(turns, int) else ""
        mark = "✗" if event.get("is_error") else "✓"
        lines.append(f"{mark} {_short(str(event.get('result', event.get('subtype', ''))), 500)}{tail}")
    return lines


class Renderer:
    """Writes a task's events for a person: raw output, or a transcript for stream-json agents."""

    def __init__(
        self, agent: str, out: TextIO | None = None, err: TextIO | None = None, transcript: bool = True
    ) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.transcript = transcript and agent == "claude"
        self._lines = LineSplitter()

    def event(self, event: dict[str, Any]) -> None:
        if event.get("type") != events.OUTPUT:
            return
        data = event.get("data", "")
        if event.get("stream") == STDERR:
            self.err.write(data)
            self.err.flush()
            return
        if not self.transcript:
            self.out.write(data)
            self.out.flush()
            return
        for line in self._lines.feed(data):
            self._line(line)

    def _line(self, line: str) -> None:
        parsed = parse_json_line(line)
        if parsed is None:
            if line.strip():
                self.out.write(line + "\n")
        else:
            for text in describe_claude_event(parsed):
                self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        for line in self._lines.flush():
            self._line(line)


def summary(result: dict[str, Any]) -> str:
    """The one line that ends a run: status, duration, cost, and the error if any."""
    seconds = (result.get("duration_ms") or 0) / 1000
    cost = (result.get("agent") or {}).get("total_cost_usd")
    parts = [f"{seconds:.2f} s"]
    if isinstance(cost, (int, float)):
        parts.append(f"${cost:.4f}")
    if result.get("success"):
        head = "✓ finished"
    elif result.get("cancelled"):
        head = "■ cancelled"
    elif result.get("timed_out"):
        head = "✗ timed out"
    else:
        head = "✗ failed"
    line = f"{head} in {' · '.join(parts)} (task {result.get('id')})"
    if result.get("error"):
        line += f"\n  {result['error']}"
    return line
