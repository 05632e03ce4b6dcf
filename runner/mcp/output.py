"""A task's output in pages a model can read: its agent's transcript (Claude's), raw text otherwise.

A page never exceeds ``max_bytes`` of text, so a task that printed gigabytes
cannot flood an orchestrator's context. The cursor (``next_seq``) says where
the next page starts: ``"0"`` for the beginning, else ``"<log entry id>/<n>"``,
the first character of that entry not read yet. Transcript pages hold whole
lines only (a line split across log entries waits until its end has arrived),
which is why this module finds the lines itself rather than feeding a
:class:`~runner.agents.base.Transcript` (it must know where each one ends); raw
pages may cut a line, and the next page goes on from the same character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import redis

from runner.agents.base import Transcript
from runner.errors import BadCursor
from runner.follow.cursor import Budget, LogCursor
from runner.follow.sync import entries
from runner.vocabulary import AttemptKind, EventType

START = "0"
CURSOR = re.compile(r"^(?:0|\d{1,20}-\d{1,20}/\d{1,12})$")
MAX_LINE_CARRY = 256 * 1024
"""A transcript line longer than this is shown cut rather than waited for whole."""
CUT_MARK = " … [cut]\n"
MIN_PAGE_BYTES = 200
MAX_PAGE_BYTES = 64 * 1024
"""The largest page one call returns, whatever it asks for."""


@dataclass
class Page:
    text: str
    next_seq: str
    more: bool
    """More output is in the log already (read again from ``next_seq``); False: everything so far was read."""

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "next_seq": self.next_seq, "more": self.more}


def parse_cursor(cursor: str) -> tuple[str, int]:
    if not isinstance(cursor, str) or not CURSOR.match(cursor):
        raise BadCursor(
            f"since_seq {cursor!r} is not a position in the task's output: pass '0' for the start, "
            "or the next_seq of the previous read_output call."
        )
    if cursor == START:
        return "0-0", 0
    entry, offset = cursor.split("/")
    return entry, int(offset)


def _notice(event: dict[str, Any]) -> str:
    if event.get("type") == AttemptKind.INTERRUPTED:
        return f"[attempt {event.get('attempt')} interrupted: {event.get('error')} It runs again.]\n"
    return ""


def _size(text: str) -> int:
    return len(text.encode())


def _raw(data: str, budget: int) -> tuple[str, int]:
    """As much of ``data`` as fits in ``budget`` bytes, cut between characters; and how many characters that is."""
    if _size(data) <= budget:
        return data, len(data)
    cut = data.encode()[: max(0, budget)].decode(errors="ignore")
    return cut, len(cut)


def _render_line(transcript: Transcript, line: str) -> str:
    rendered = transcript.render(line)
    if rendered is None:
        return line + "\n" if line.strip() else ""
    return "".join(text + "\n" for text in rendered)


def _cut(text: str, budget: int) -> str:
    """``text`` cut to ``budget`` bytes with a mark saying so, for a transcript line too long for a page."""
    if _size(text) <= budget:
        return text
    return _raw(text, max(0, budget - _size(CUT_MARK)))[0] + CUT_MARK


def _transcript(transcript: Transcript, data: str, budget: int, page_empty: bool) -> tuple[str, int]:
    """The complete lines of ``data`` rendered as a transcript, as many as fit in ``budget`` bytes; and how
    many characters of ``data`` they were. On an empty page the first line always goes in (cut if it must),
    so every call moves on."""
    out: list[str] = []
    used = 0
    consumed = 0
    while (newline := data.find("\n", consumed)) >= 0:
        rendered = _render_line(transcript, data[consumed:newline])
        if used + _size(rendered) > budget:
            if not page_empty:
                break
            rendered = _cut(rendered, budget - used)
        out.append(rendered)
        used += _size(rendered)
        consumed = newline + 1
        page_empty = page_empty and used == 0
    return "".join(out), consumed


class _Builder:
    """The text of one page, within its budget of UTF-8 bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = Budget(size=budget)
        self.parts: list[str] = []

    @property
    def empty(self) -> bool:
        return not self.parts

    @property
    def left(self) -> int:
        return self.budget.size or 0

    def fits(self, text: str) -> bool:
        return _size(text) <= self.left

    def add(self, text: str) -> None:
        if text:
            self.parts.append(text)
            self.budget.take(_size(text))

    def page(self, cursor: str, more: bool) -> Page:
        return Page("".join(self.parts), cursor, more)


class _PageReader:
    """Fills one page from the log's entries in order; a method returns the :class:`Page` once it is full.

    ``resume`` is where the next page starts if this one ends after the entries added so far. With a
    transcript, a stdout line not ended yet is carried (``carry``, starting at ``carry_at``) until its end
    arrives, and stderr that comes meanwhile is held behind it.
    """

    def __init__(self, page: _Builder, transcript: Transcript | None, resume: str) -> None:
        self.page = page
        self.transcript = transcript
        self.resume = resume
        self.carry = ""  # the start of a transcript line whose end is in a later entry
        self.carry_at = ""  # where that line starts
        self.held: list[str] = []  # stderr that came while carrying

    def entry(self, entry_id: str, event: dict[str, Any], skip: int) -> Page | None:
        """Add entry ``entry_id`` from its ``skip``-th character on."""
        if event.get("type") != EventType.OUTPUT:
            return self._notice(entry_id, event, skip)
        data = str(event.get("data", ""))[skip:]
        if self.transcript is None or (event.get("stream") == "stderr" and not self.carry):
            text, taken = _raw(data, self.page.left)
            self.page.add(text)
            self.resume = f"{entry_id}/{skip + taken}"
            return self.page.page(self.resume, True) if taken < len(data) else None
        if event.get("stream") == "stderr":
            self.held.append(data)
            self.resume = f"{entry_id}/{skip + len(data)}"
            return None
        return self._stdout(self.transcript, entry_id, data, skip)

    def finish(self, ended: bool) -> Page:
        """The page once the log has no more entries; ``ended``: a carried line will not go on, so show it."""
        if self.carry and self.transcript is not None:
            if not ended:
                return self.page.page(self.carry_at, False)  # the line is shown once it is whole
            if not self._flush_carry(_render_line(self.transcript, self.carry)):
                return self.page.page(self.carry_at, True)
        return self.page.page(self.resume, False)

    def _notice(self, entry_id: str, event: dict[str, Any], skip: int) -> Page | None:
        text = "" if skip else _notice(event)
        if self.carry and self.transcript is not None:  # the attempt ended inside a line: it never ends
            if not self._flush_carry(_render_line(self.transcript, self.carry)):
                return self.page.page(self.carry_at, True)
            self.carry, self.carry_at = "", ""
        if text and not self.page.fits(text):
            if not self.page.empty:
                return self.page.page(f"{entry_id}/0", True)
            text = _cut(text, self.page.left)
        self.page.add(text)
        self.resume = f"{entry_id}/1"
        return None

    def _stdout(self, transcript: Transcript, entry_id: str, data: str, skip: int) -> Page | None:
        if self.carry:
            newline = data.find("\n")
            if newline < 0 and len(self.carry) + len(data) <= MAX_LINE_CARRY:
                self.carry += data
                self.resume = f"{entry_id}/{skip + len(data)}"
                return None
            # The carried line ends here (or is too long to keep: it is shown cut, and its tail
            # later reads as text of its own).
            end = newline + 1 if newline >= 0 else len(data)
            line = self.carry + data[: end - 1 if newline >= 0 else end]
            if not self._flush_carry(_render_line(transcript, line)):
                return self.page.page(self.carry_at, True)
            self.carry, self.carry_at = "", ""
            skip, data = skip + end, data[end:]
        text, taken = _transcript(transcript, data, self.page.left, page_empty=self.page.empty)
        self.page.add(text)
        rest = data[taken:]
        if "\n" in rest:  # the page filled up within this entry
            return self.page.page(f"{entry_id}/{skip + taken}", True)
        if rest:
            self.carry, self.carry_at = rest, f"{entry_id}/{skip + taken}"
        self.resume = f"{entry_id}/{skip + len(data)}"
        return None

    def _flush_carry(self, line: str) -> bool:
        """Show the carried line and the stderr held behind it; False (nothing shown) if they do not fit."""
        text = "".join([line, *self.held])
        if not self.page.fits(text):
            if not self.page.empty:
                return False
            text = _cut(text, self.page.left)
        self.page.add(text)
        self.held.clear()
        return True


def read_page(
    client: redis.Redis, task_id: str, cursor: str, max_bytes: int, transcript: Transcript | None, ended: bool
) -> Page:
    """The output after ``cursor``: at most ``max_bytes`` (UTF-8) of text, and where to go on from.

    ``transcript``: the task's agent's, to show its stdout as readable lines (None: raw text). ``ended``: the
    task has ended, so a last line without a newline is complete and shown.

    In a transcript, stderr that arrives while a stdout line is still incomplete is shown after that
    line, so that everything before a returned cursor has been shown exactly once.
    """
    entry, offset = parse_cursor(cursor)
    page = _Builder(max(MIN_PAGE_BYTES, min(int(max_bytes), MAX_PAGE_BYTES)))
    reader = _PageReader(page, transcript, cursor)
    log = LogCursor(task_id) if cursor == START else LogCursor.at(task_id, entry)
    for entry_id, event in entries(client, log):
        if event.get("type") == EventType.GAP:
            continue  # frames trimmed from the log: a page holds what is there
        full = reader.entry(entry_id, event, offset if entry_id == entry else 0)
        if full is not None:
            return full
    return reader.finish(ended)
