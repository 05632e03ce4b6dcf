"""What every agent provides: an argv for a spec, and an understanding of its output.

The runner knows agents, not processes: an :class:`Agent` turns a
:class:`~runner.spec.TaskSpec` into an argv list and environment changes, and
its :class:`OutputParser` reads the run's output frames and decides what the
task produced. Parsers see whole frames; the ones that need lines split them
themselves with :class:`LineSplitter`, so plain commands pay no per-line cost.
"""

from __future__ import annotations

import abc
import os
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from handler.protocol import STDOUT, ExecuteResult

if TYPE_CHECKING:
    from runner.spec import TaskSpec


@dataclass
class Outcome:
    """What an agent concluded from a finished run."""

    success: bool
    output: str
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


class TextTail:
    """The last ``limit`` characters of a stream, kept without copying on every append."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._parts: deque[str] = deque()
        self._kept = 0

    def add(self, text: str) -> None:
        self.total += len(text)
        self._parts.append(text)
        self._kept += len(text)
        while self._parts and self._kept - len(self._parts[0]) >= self.limit:
            self._kept -= len(self._parts.popleft())

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        joined = "".join(self._parts)
        return joined[-self.limit :] if len(joined) > self.limit else joined


class LineSplitter:
    """Splits streamed text into complete lines; a line may span any number of frames."""

    def __init__(self) -> None:
        self._partial: list[str] = []

    def feed(self, text: str) -> list[str]:
        if "\n" not in text:
            self._partial.append(text)
            return []
        lines = text.split("\n")
        if self._partial:
            lines[0] = "".join(self._partial) + lines[0]
            self._partial = []
        last = lines.pop()
        if last:
            self._partial.append(last)
        return lines

    def flush(self) -> list[str]:
        rest = "".join(self._partial)
        self._partial = []
        return [rest] if rest else []


def parse_json_line(line: str) -> dict[str, Any] | None:
    """The JSON object on ``line``, or None for any other text."""
    if not line.startswith("{"):
        return None
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class OutputParser:
    """Default understanding of a run: stdout is the output, exit code 0 is success."""

    def __init__(self, output_limit: int) -> None:
        self.stdout = TextTail(output_limit)
        self.stderr = TextTail(min(output_limit, 64 * 1024))

    def feed(self, stream: str, text: str) -> None:
        (self.stdout if stream == STDOUT else self.stderr).add(text)

    def finish(self, result: ExecuteResult) -> Outcome:
        success = result.exit_code == 0 and not result.timed_out and not result.cancelled
        return Outcome(
            success=success,
            output=self.stdout.text(),
            error=None if success else exit_error(result, self.stderr.text()),
        )


class JsonEventParser(OutputParser):
    """For agents that print one JSON event per line: lines are reassembled across frames
    (a line may be several MB) and each JSON object goes to :meth:`on_event`; other text
    is kept as plain output only."""

    def __init__(self, output_limit: int) -> None:
        super().__init__(output_limit)
        self._lines = LineSplitter()

    def feed(self, stream: str, text: str) -> None:
        super().feed(stream, text)
        if stream == STDOUT:
            self._events(self._lines.feed(text))

    def flush_lines(self) -> None:
        """Handle a last line that had no newline; call at the start of :meth:`finish`."""
        self._events(self._lines.flush())

    def _events(self, lines: list[str]) -> None:
        for line in lines:
            event = parse_json_line(line)
            if event is not None:
                self.on_event(event)

    def on_event(self, event: dict[str, Any]) -> None:
        """Handle one JSON event (subclasses)."""


def exit_error(result: ExecuteResult, stderr: str, what: str = "The command") -> str:
    """One sentence for a run that did not exit 0, ending with its last stderr line when there is one."""
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    detail = f" Last error output: {last[:300]}" if last else ""
    if result.signal is not None:
        return f"{what} was killed by signal {result.signal}.{detail}"
    return f"{what} exited with code {result.exit_code}.{detail}"


class Agent(abc.ABC):
    """An agent CLI (or plain command) the runner can drive. Subclasses set the class attributes."""

    name: str = ""
    binary: str = ""
    """The executable's default name, looked up on the handler's PATH."""
    binary_env: str | None = None
    """The variable that overrides :attr:`binary`, e.g. ``CCX_CLAUDE_BIN``."""
    install_hint: str = ""
    display_name: str = ""

    options: frozenset[str] = frozenset()
    default_retries: int = 2
    """Times a task runs again after a transient API failure, when its spec does not say."""
    default_idle_timeout: float | None = 600.0
    """Seconds without output before a run counts as hung (an agent CLI waiting on a stalled API
    connection can otherwise hold the queue for hours); None: no such limit."""
    """The optional spec fields this agent turns into its command line; any other one set is an error."""

    def check(self, spec: TaskSpec) -> None:
        """Raise :class:`~runner.spec.SpecError` when the spec cannot run with this agent.

        An option the agent would silently ignore (e.g. ``tools`` for a plain command)
        is refused, so nobody believes a restriction holds that does not.
        """
        from runner.spec import OPTIONAL_FIELDS, SpecError

        unused = [name for name in OPTIONAL_FIELDS if getattr(spec, name) and name not in self.options]
        if unused:
            users = ", ".join(a.name for a in _registry() if all(n in a.options for n in unused)) or "none"
            raise SpecError(
                f"The {self.name} agent does not use {', '.join(repr(n) for n in unused)}; "
                f"remove it, or use an agent that does ({users})."
            )
        self.check_required(spec)

    def check_required(self, spec: TaskSpec) -> None:
        from runner.spec import SpecError

        if not spec.task.strip():
            raise SpecError(f"The {self.name} agent needs a non-empty 'task' (the prompt).")

    def executable(self) -> str:
        return (os.environ.get(self.binary_env) if self.binary_env else None) or self.binary

    @abc.abstractmethod
    def argv(self, spec: TaskSpec) -> list[str]:
        """The command line for ``spec``; never a shell string."""

    def stdin(self, spec: TaskSpec) -> str | None:
        """Text for the child's standard input (None: none)."""
        return None

    def env(self, spec: TaskSpec) -> dict[str, str | None]:
        """Environment changes for the child: the spec's own, merged last."""
        return dict(spec.env or {})

    def parser(self, output_limit: int) -> OutputParser:
        return OutputParser(output_limit)

    def not_found_message(self, argv0: str) -> str:
        override = f" or set {self.binary_env} to its path" if self.binary_env else ""
        return f"{self.display_name or self.name} CLI not found ('{argv0}') on the handler's machine: {self.install_hint}{override}."


def _registry() -> list[Agent]:
    from runner.agents import AGENTS

    return list(AGENTS.values())
