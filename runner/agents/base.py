"""What every agent provides: an argv for a spec, and an understanding of its output.

The runner knows agents, not processes: an :class:`Agent` turns a
:class:`~runner.spec.TaskSpec` into an argv list and environment changes, and
its :class:`OutputParser` reads the run's output frames and decides what the
task produced. Parsers see whole frames; the ones that need lines split them
themselves with :class:`LineSplitter`, so plain commands pay no per-line cost.
An agent whose stdout is a stream of events also has a :class:`Transcript`, which
makes that stream readable for people (``ccx run``, the dashboard, MCP pages):
nothing outside this package needs to know which agent prints what.
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from handler.protocol import STDOUT, ExecuteResult
from runner.errors import SpecError

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


MAX_LINE_CHARS = 1024 * 1024
"""By default, a transcript line longer than this (a huge tool result) is summarised instead of rendered."""
MAX_PLAIN_CHARS = 4000
"""By default, the characters shown of a line that is not one of the agent's events."""


class Transcript(abc.ABC):
    """An agent's stdout made readable: fed the output in order, it puts lines together across frames (a
    line may span any number of them) and renders each whole one (:meth:`render`), keeping the partial last.

    ``carry`` is the start of the first line when the text fed begins mid-line; ``None`` means that start is
    unknown (too far back), so the first line is shown as cut. A line longer than ``max_line_chars`` is
    summarised instead of rendered, one that is not an event is cut to ``max_plain_chars``; None is no limit
    (a terminal prints everything, as ``cat`` would; a browser page must stay small).
    """

    def __init__(
        self,
        carry: str | None = "",
        *,
        max_line_chars: int | None = MAX_LINE_CHARS,
        max_plain_chars: int | None = MAX_PLAIN_CHARS,
    ) -> None:
        self.max_line_chars = max_line_chars
        self.max_plain_chars = max_plain_chars
        self._partial: list[str] = [carry] if carry else []
        self._size = len(carry or "")
        self._cut = carry is None
        self._too_long = False

    @abc.abstractmethod
    def render(self, line: str) -> list[str] | None:
        """Readable lines for one whole line of output (without its newline), none for an uninteresting
        event; None when the line is not one of the agent's events (it is shown as it is)."""

    def step(self, text: str) -> bool:
        """Whether a rendered line says what the agent is doing now (a terminal's spinner shows it)."""
        return False

    def feed(self, text: str) -> list[str]:
        """The readable lines of the lines ``text`` ends; its unended last line is kept for the next feed."""
        *ended, rest = text.split("\n")  # one C-speed split; the per-line work is the rendering itself
        lines: list[str] = []
        for line in ended:
            lines += self._line(line)
        if rest:
            if self.max_line_chars is not None and self._size + len(rest) > self.max_line_chars:
                self._too_long, self._partial = True, []  # only its length is kept, for the summary
            else:
                self._partial.append(rest)
            self._size += len(rest)
        return lines

    def flush(self) -> list[str]:
        """The last line when the output did not end with a newline."""
        return self._line("") if self._partial or self._too_long else []

    def _line(self, tail: str) -> list[str]:
        size = self._size + len(tail)
        whole = "" if self._too_long else "".join(self._partial) + tail
        cut = self._cut
        too_long = self._too_long or (self.max_line_chars is not None and size > self.max_line_chars)
        self._partial, self._size, self._cut, self._too_long = [], 0, False, False
        if too_long:
            return [f"[a line of {size:,} characters, too long to show here; switch to raw or read the log]"]
        rendered = None if cut else self.render(whole)
        if rendered is not None:
            return rendered
        if not whole.strip():
            return []
        text = ("…" if cut else "") + whole
        limit = self.max_plain_chars
        return [text if limit is None or len(text) <= limit else text[:limit] + "…"]


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


OPTIONAL_FIELDS = (
    "tools",
    "disallowed_tools",
    "model",
    "max_turns",
    "permission_mode",
    "append_system_prompt",
    "mcp_config",
    "resume",
    "argv",
    "json_schema",
    "fallback_model",
    "effort",
    "add_dirs",
    "settings",
    "system_prompt",
    "session_id",
    "bare",
    "max_budget_usd",
    "extra_args",
)
"""Fields only some agents use (see each agent's ``options``)."""


class Agent(abc.ABC):
    """An agent CLI (or plain command) the runner can drive. Subclasses set the class attributes."""

    name: str = ""
    binary: str = ""
    """The executable's default name, looked up on the handler's PATH."""
    binary_env: str | None = None
    """The variable that overrides :attr:`binary`, e.g. ``CCX_CLAUDE_BIN`` (read once into the worker's settings,
    ``Settings.agent_binaries``, and applied by :meth:`command`)."""
    install_hint: str = ""
    display_name: str = ""

    options: frozenset[str] = frozenset()
    default_retries: int = 2
    """Times a task runs again after a transient API failure, when its spec does not say."""
    default_idle_timeout: float | None = 600.0
    """Seconds without output before a run counts as hung (an agent CLI waiting on a stalled API
    connection can otherwise hold the queue for hours); None: no such limit."""
    """The optional spec fields this agent turns into its command line; any other one set is an error."""

    def check(self, spec: TaskSpec, others: Iterable[Agent] = ()) -> None:
        """Raise :class:`~runner.errors.SpecError` when the spec cannot run with this agent.

        An option the agent would silently ignore (e.g. ``tools`` for a plain command)
        is refused, so nobody believes a restriction holds that does not.
        """
        unused = [name for name in OPTIONAL_FIELDS if getattr(spec, name) and name not in self.options]
        if unused:
            users = ", ".join(a.name for a in others if all(n in a.options for n in unused)) or "none"
            raise SpecError(
                f"The {self.name} agent does not use {', '.join(repr(n) for n in unused)}; "
                f"remove it, or use an agent that does ({users})."
            )
        self.check_required(spec)

    def check_required(self, spec: TaskSpec) -> None:
        if not spec.task.strip():
            raise SpecError(f"The {self.name} agent needs a non-empty 'task' (the prompt).")

    def command(self, spec: TaskSpec, binary: str | None = None) -> list[str]:
        """What runs for ``spec``: :meth:`argv`, its executable replaced by ``binary`` (the worker's setting for
        this agent) where the agent has one to replace."""
        argv = self.argv(spec)
        return [binary, *argv[1:]] if binary and self.binary_env else argv

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

    def transcript(
        self,
        carry: str | None = "",
        *,
        max_line_chars: int | None = MAX_LINE_CHARS,
        max_plain_chars: int | None = MAX_PLAIN_CHARS,
    ) -> Transcript | None:
        """A :class:`Transcript` of this agent's stdout (see there for the arguments), or None when its output
        is shown as it is: only an agent whose stdout is a stream of events has one."""
        return None

    def not_found_message(self, argv0: str) -> str:
        override = f" or set {self.binary_env} to its path" if self.binary_env else ""
        return f"{self.display_name or self.name} CLI not found ('{argv0}') on the handler's machine: {self.install_hint}{override}."
