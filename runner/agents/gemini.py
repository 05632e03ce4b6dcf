"""Google Gemini CLI: ``gemini --output-format stream-json --prompt=<task>``.

Events: ``init`` (session id, model), ``message`` (assistant text, possibly in
deltas), ``tool_use`` / ``tool_result``, ``error``, and a final ``result`` with
``status`` and ``stats``. The answer is the assistant text of the last model
turn (the text after the last tool call), as in the CLI's own ``json`` output.

The ``result`` status decides success. ``error`` events are documented as
"non-fatal warnings and system errors" (a ``severity`` of ``warning`` or
``error``): they are kept in ``info["errors"]``, and one of severity ``error``
fails the run only when no successful ``result`` follows it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runner.agents.base import Agent, OutputParser
from runner.agents.jsonl import JsonlParser

if TYPE_CHECKING:
    from runner.spec import TaskSpec


class GeminiParser(JsonlParser):
    display_name = "Gemini"

    def __init__(self, output_limit: int) -> None:
        super().__init__(output_limit)
        self._text: list[str] = []
        self._tool_called = False
        self._last_error: str | None = None

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "init":
            self.info.update(session_id=event.get("session_id"), model=event.get("model"))
        elif kind == "message" and event.get("role") == "assistant" and isinstance(event.get("content"), str):
            if self._tool_called:  # a new model turn after tool calls: its text is the answer
                self._text = []
                self._tool_called = False
            self._text.append(event["content"])
            self.final_text = "".join(self._text)
        elif kind in ("tool_use", "tool_result"):
            self._tool_called = True
        elif kind == "error":
            message = str(event.get("message") or "error")
            severity = event.get("severity")
            self.info.setdefault("errors", []).append({"severity": severity, "message": message})
            if severity != "warning":
                self._last_error = message
                self.failure = message
        elif kind == "result":
            self.info["stats"] = event.get("stats")
            if event.get("status") not in (None, "success"):
                error = event.get("error")
                message = error.get("message") if isinstance(error, dict) else error
                self.failure = str(message or self._last_error or f"status {event.get('status')}")
            else:
                self.failure = None
                if self.final_text is None:
                    self.final_text = ""


class GeminiAgent(Agent):
    name = "gemini"
    display_name = "Gemini"
    binary = "gemini"
    binary_env = "CCX_GEMINI_BIN"
    install_hint = "install it with `npm install -g @google/gemini-cli`"
    options = frozenset({"model", "tools", "resume"})

    def argv(self, spec: TaskSpec) -> list[str]:
        argv = [self.binary, "--output-format", "stream-json"]
        if spec.model:
            argv += ["--model", spec.model]
        if spec.tools:
            argv += ["--allowed-tools", ",".join(spec.tools)]
        if spec.resume:
            argv += ["--resume", spec.resume]
        # `--prompt=<task>` keeps a prompt that starts with `-` from being read as an option.
        return [*argv, f"--prompt={spec.task}"]

    def parser(self, output_limit: int) -> OutputParser:
        parser = GeminiParser(output_limit)
        parser.info["name"] = self.name
        return parser
