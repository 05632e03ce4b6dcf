"""Human output of ``ccx``: raw output for commands, a readable transcript for agent runs.

Kept apart from the CLI's logic so the same rendering serves ``run``, ``follow``
and tests. Rendering happens in the reader, never in the worker's hot path.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import Any, TextIO

from handler.protocol import STDERR
from runner import clock
from runner.agents import get_agent
from runner.agents.base import Transcript
from runner.vocabulary import AttemptKind, EventType

_ASCII_CONTROLS = tuple(chr(code) for code in (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F))
"""The C0 controls but tab and newline (ESC, BEL, CR…), and DEL: what a terminal acts on instead of showing."""
_CONTROLS = _ASCII_CONTROLS + tuple(chr(code) for code in range(0x80, 0xA0))
"""With the C1 controls (U+0080–U+009F): some terminals take U+009B as ESC [ and U+009D as ESC ]."""
_SHOWN = {char: f"\\x{ord(char):02x}" for char in _CONTROLS}


def escape_controls(text: str) -> str:
    """``text`` with every control character a terminal would act on shown instead, as ``\\x1b``, ``\\x07``…:
    a task's output or title cannot set the window title (OSC 0), write the clipboard (OSC 52), move the
    cursor or wipe the screen (CSI) or overwrite a line (CR). Newline and tab stay; a CR just before a
    newline goes (a CRLF line end looks the same without it).

    One C-speed scan of the whole text per control character, and a replace only for those present:
    ``str.translate`` looks each character up in a dict once the text is not ASCII (8 MB/s against
    100–1000 MB/s here), and this runs on every chunk of output followed on a terminal."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    for char in _ASCII_CONTROLS if text.isascii() else _CONTROLS:
        if char in text:
            text = text.replace(char, _SHOWN[char])
    return text


class Progress:
    """A one-line spinner on a terminal: elapsed time, bytes so far, the current step.

    Redrawn by a thread ten times a second; the renderer wipes it (holding
    :attr:`lock`) before writing other output, so it never interleaves with the
    task's own lines.
    """

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bytes = 0
        self.step = "waiting for the worker"
        self.lock = threading.Lock()
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._shown = False
        self._thread = threading.Thread(target=self._run, name="ccx-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        frame = 0
        while not self._stop.wait(0.1):
            elapsed = time.monotonic() - self._started
            size = f"{self.bytes / 1e6:.1f} MB" if self.bytes >= 100_000 else f"{self.bytes} B"
            line = f"{self.FRAMES[frame % len(self.FRAMES)]} {elapsed:6.1f} s · {size} · {self.step}"
            width = shutil.get_terminal_size((80, 20)).columns - 1
            with self.lock:
                self.stream.write("\r\x1b[2K" + line[:width])
                self.stream.flush()
                self._shown = True
            frame += 1

    def clear(self) -> None:
        """Wipe the spinner line; call with :attr:`lock` held."""
        if self._shown:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._shown = False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)
        with self.lock:
            self.clear()


class Renderer:
    """Writes a task's events for a person: raw output, or a transcript for stream-json agents.

    With ``progress`` (on a terminal), a spinner line shows elapsed time, bytes and the current step.
    ``escape_out`` / ``escape_err`` (for a stream that is a terminal) show the control characters of the
    task's output on it as text (:func:`escape_controls`); the notices about the task always do.
    """

    def __init__(
        self,
        agent: str,
        out: TextIO | None = None,
        err: TextIO | None = None,
        transcript: bool = True,
        progress: bool = False,
        escape_out: bool = False,
        escape_err: bool = False,
    ) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.escape_out = escape_out
        self.escape_err = escape_err
        # A terminal shows every line whole, as `cat` would: no limits (those keep a browser page small).
        self.transcript = get_agent(agent).transcript(max_line_chars=None, max_plain_chars=None) if transcript else None
        self.progress = Progress(self.err) if progress else None

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if self.progress is not None and kind == EventType.STARTED:
            self.progress.step = "running"
        if kind == EventType.GAP:
            self._notice(
                f"[{event['missing']:,} earlier output frame(s) are no longer in the task's log: it keeps only "
                "the newest CCX_LOG_MAXLEN entries]"
            )
            return
        if kind == AttemptKind.INTERRUPTED:
            self._notice(f"[attempt {event.get('attempt')} interrupted: {event.get('error')} It runs again.]")
            return
        if kind != EventType.OUTPUT:
            return
        if self.progress is None:
            self._write(event)
            return
        self.progress.bytes += len(event.get("data", ""))
        with self.progress.lock:
            self.progress.clear()
            self._write(event)

    def _notice(self, text: str) -> None:
        """A line about the task (not its output), on stderr, clear of the progress line."""
        text = escape_controls(text)  # (its error may quote the task)
        if self.progress is None:
            self.err.write(text + "\n")
            self.err.flush()
            return
        with self.progress.lock:
            self.progress.clear()
            self.err.write(text + "\n")
            self.err.flush()

    def _write(self, event: dict[str, Any]) -> None:
        data = event.get("data", "")
        if event.get("stream") == STDERR:
            self.err.write(escape_controls(data) if self.escape_err else data)
            self.err.flush()
            return
        if self.transcript is None:
            self.out.write(escape_controls(data) if self.escape_out else data)
            self.out.flush()
            return
        self._show(self.transcript, self.transcript.feed(data))

    def _show(self, transcript: Transcript, lines: list[str]) -> None:
        for text in lines:
            self._put_line(text)
            if self.progress is not None and transcript.step(text):
                self.progress.step = escape_controls(text)  # (the spinner's line: escaped even with --raw)
        self.out.flush()

    def _put_line(self, text: str) -> None:
        line = text + "\n"
        self.out.write(escape_controls(line) if self.escape_out else line)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.transcript is not None:
            self._show(self.transcript, self.transcript.flush())


def ago(iso: str | None, now: float | None = None) -> str:
    """``12 s ago``, ``3 min ago``, ``2 h ago``, ``4 days ago`` for an ISO 8601 time; ``-`` for none."""
    if not iso:
        return "-"
    then = clock.epoch(iso)
    seconds = max(0.0, (time.time() if now is None else now) - then)
    for size, unit in ((86400, "day"), (3600, "h"), (60, "min")):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''} ago"
    return f"{int(seconds)} s ago"


def format_duration(ms: float) -> str:
    """``3 ms``, ``1.25 s``, ``4 min 05 s``, ``2 h 03 min``: as precise as a person wants it."""
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 1 else f"{ms:.1f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def summary(result: dict[str, Any]) -> str:
    """The one line that ends a run: status, duration, cost, and the error if any."""
    cost = (result.get("agent") or {}).get("total_cost_usd")
    parts = [format_duration(result.get("duration_ms") or 0)]
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
        line += f"\n  {escape_controls(str(result['error']))}"  # (it may quote the task's output)
    return line
