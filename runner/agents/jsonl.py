"""A parser base for agents whose stdout is one JSON event per line (Codex, Gemini)."""

from __future__ import annotations

from typing import Any

from handler.protocol import STDOUT, ExecuteResult
from runner.agents.base import LineSplitter, Outcome, OutputParser, exit_error
from runner.agents.claude import parse_json_line


class JsonlParser(OutputParser):
    """Feeds each JSON event to :meth:`on_event`; subclasses fill ``final_text``, ``failure`` and ``info``."""

    display_name = "The agent"

    def __init__(self, output_limit: int) -> None:
        super().__init__(output_limit)
        self._lines = LineSplitter()
        self.final_text: str | None = None
        self.failure: str | None = None
        self.info: dict[str, Any] = {}

    def feed(self, stream: str, text: str) -> None:
        super().feed(stream, text)
        if stream == STDOUT:
            for line in self._lines.feed(text):
                self._line(line)

    def _line(self, line: str) -> None:
        event = parse_json_line(line)
        if event is not None:
            self.on_event(event)

    def on_event(self, event: dict[str, Any]) -> None:  # pragma: no cover - overridden
        """Handle one JSON event."""

    def finish(self, result: ExecuteResult) -> Outcome:
        for line in self._lines.flush():
            self._line(line)
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
