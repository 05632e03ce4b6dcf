"""Google Gemini CLI: ``gemini --output-format stream-json --prompt=<task>``.

Events: ``init`` (session id, model), ``message`` (assistant text, possibly in
deltas), ``tool_use`` / ``tool_result``, ``error``, and a final ``result`` with
``status`` and ``stats``. The answer is the assistant text of the run.
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
        self._finished = False

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "init":
            self.info.update(session_id=event.get("session_id"), model=event.get("model"))
        elif kind == "message" and event.get("role") == "assistant" and isinstance(event.get("content"), str):
            self._text.append(event["content"])
            self.final_text = "".join(self._text)
        elif kind == "error":
            self.failure = str(event.get("message") or "error")
        elif kind == "result":
            self.info["stats"] = event.get("stats")
            if event.get("status") not in (None, "success"):
                self.failure = str((event.get("error") or {}).get("message") or event.get("status"))
            elif self.final_text is None:
                self.final_text = ""


class GeminiAgent(Agent):
    name = "gemini"
    display_name = "Gemini"
    binary = "gemini"
    binary_env = "CCX_GEMINI_BIN"
    install_hint = "install it with `npm install -g @google/gemini-cli`"

    def argv(self, spec: TaskSpec) -> list[str]:
        argv = [self.executable(), "--output-format", "stream-json"]
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
