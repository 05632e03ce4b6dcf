"""OpenAI Codex CLI: ``codex exec --json <task>`` prints JSONL events.

The final answer is the text of the last ``item.completed`` event whose item is
an ``agent_message``. ``turn.failed`` marks a failure. An ``error`` event does
only when no ``turn.completed`` follows it: Codex also reports the retries of a
dropped model stream as ``error`` events ("Reconnecting... 1/5") and then
completes the turn normally; those messages are kept in ``info["errors"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runner.agents.base import Agent, OutputParser
from runner.agents.jsonl import JsonlParser

if TYPE_CHECKING:
    from runner.spec import TaskSpec


class CodexParser(JsonlParser):
    display_name = "Codex"

    def __init__(self, output_limit: int) -> None:
        super().__init__(output_limit)
        self._turn_failed = False

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "thread.started":
            self.info["session_id"] = event.get("thread_id")
        elif kind == "item.completed":
            item = event.get("item") or {}
            if item.get("type") == "agent_message" and isinstance(item.get("text"), str):
                self.final_text = item["text"]
        elif kind == "turn.completed":
            self.info["usage"] = event.get("usage")
            if not self._turn_failed:
                self.failure = None  # the errors before it were retries the turn recovered from
        elif kind == "turn.failed":
            self._turn_failed = True
            self.failure = str((event.get("error") or {}).get("message") or "turn failed")
        elif kind == "error":
            message = str(event.get("message") or "error")
            self.info.setdefault("errors", []).append(message)
            if not self._turn_failed:
                self.failure = message


class CodexAgent(Agent):
    name = "codex"
    display_name = "Codex"
    binary = "codex"
    binary_env = "CCX_CODEX_BIN"
    install_hint = "install it with `npm install -g @openai/codex`"
    options = frozenset({"model", "resume"})

    def argv(self, spec: TaskSpec) -> list[str]:
        argv = [self.binary, "exec", "--json", "--skip-git-repo-check"]
        if spec.model:
            argv += ["--model", spec.model]
        if spec.resume:
            argv += ["resume", spec.resume]
        return [*argv, "--", spec.task]

    def parser(self, output_limit: int) -> OutputParser:
        parser = CodexParser(output_limit)
        parser.info["name"] = self.name
        return parser
