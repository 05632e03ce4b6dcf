"""A parser base for agents whose stdout is one JSON event per line (Codex, Gemini)."""

from __future__ import annotations

from typing import Any

from handler.protocol import ExecuteResult
from runner.agents.base import JsonEventParser, Outcome, exit_error


class JsonlParser(JsonEventParser):
    """Feeds each JSON event to :meth:`on_event`; subclasses fill ``final_text``, ``failure`` and ``info``."""

    display_name = "The agent"

    def __init__(self, output_limit: int) -> None:
        super().__init__(output_limit)
        self.final_text: str | None = None
        self.failure: str | None = None
        self.info: dict[str, Any] = {}

    def finish(self, result: ExecuteResult) -> Outcome:
        self.flush_lines()
        output = self.final_text if self.final_text is not None else self.stdout.text()
        if result.timed_out or result.cancelled:
            return Outcome(False, output, None, self.info)
        if self.failure:
            return Outcome(False, output, f"{self.display_name} reported an error: {self.failure}", self.info)
        if result.exit_code != 0:
            return Outcome(False, output, exit_error(result, self.stderr.text(), self.display_name), self.info)
        if self.final_text is None:
            return Outcome(
                False, output, f"{self.display_name} ended without a final answer; see the task log.", self.info
            )
        return Outcome(True, output, None, self.info)
