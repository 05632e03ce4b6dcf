"""A task's output in pages a model can read: a transcript for Claude tasks, raw text otherwise.

A page never exceeds ``max_bytes`` of text, so a task that printed gigabytes
cannot flood an orchestrator's context. The cursor (``next_seq``) says where
the next page starts: ``"0"`` for the beginning, else ``"<log entry id>/<n>"``,
the first character of that entry not read yet. Claude pages hold whole
stream-json lines only (a line split across log entries waits until its end
has arrived); raw pages may cut a line, and the next page goes on from the
same character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from runner import events
from runner.agents.base import parse_json_line
from runner.render import describe_claude_event

START = "0"
CURSOR = re.compile(r"^(?:0|\d{1,20}-\d{1,20}/\d{1,12})$")
ENTRIES_PER_READ = 16
"""Log entries fetched per read: output frames can be large, and a page is small."""
MAX_LINE_CARRY = 256 * 1024
"""A transcript line longer than this is shown cut rather than waited for whole."""
CUT_MARK = " … [cut]\n"
MIN_PAGE_BYTES = 200
MAX_PAGE_BYTES = 64 * 1024
"""The largest page one call returns, whatever it asks for."""


class BadCursor(ValueError):
    """``since_seq`` is not a cursor this module handed out."""


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
    if event.get("type") == events.INTERRUPTED:
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


def _render_line(line: str) -> str:
    parsed = parse_json_line(line)
    if parsed is None:
        return line + "\n" if line.strip() else ""
    return "".join(text + "\n" for text in describe_claude_event(parsed))


def _cut(text: str, budget: int) -> str:
    """``text`` cut to ``budget`` bytes with a mark saying so, for a transcript line too long for a page."""
    if _size(text) <= budget:
        return text
    return _raw(text, max(0, budget - _size(CUT_MARK)))[0] + CUT_MARK


def _transcript(data: str, budget: int, page_empty: bool) -> tuple[str, int]:
    """The complete lines of ``data`` rendered as a transcript, as many as fit in ``budget`` bytes; and how
    many characters of ``data`` they were. On an empty page the first line always goes in (cut if it must),
    so every call moves on."""
    out: list[str] = []
    used = 0
    consumed = 0
    while (newline := data.find("\n", consumed)) >= 0:
        rendered = _render_line(data[consumed:newline])
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
    """The text of one page and its size."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.parts: list[str] = []
        self.used = 0

    @property
    def empty(self) -> bool:
        return self.used == 0

    @property
    def left(self) -> int:
        return self.budget - self.used

    def fits(self, text: str) -> bool:
        return self.used + _size(text) <= self.budget

    def add(self, text: str) -> None:
        if text:
            self.parts.append(text)
            self.used += _size(text)

    def page(self, cursor: str, more: bool) -> Page:
        return Page("".join(self.parts), cursor, more)


def read_page(client: redis.Redis, task_id: str, cursor: str, max_bytes: int, transcript: bool, ended: bool) -> Page:
    """The output after ``cursor``: at most ``max_bytes`` (UTF-8) of text, and where to go on from.

    ``ended``: the task has ended, so a last line without a newline is complete and shown.

    In a transcript, stderr that arrives while a stdout line is still incomplete is shown after that
    line, so that everything before a returned cursor has been shown exactly once.
    """
    page = _Builder(max(MIN_PAGE_BYTES, min(int(max_bytes), MAX_PAGE_BYTES)))
    entry, offset = parse_cursor(cursor)
    key = events.log_key(task_id)
    resume = cursor
    carry = ""  # the start of a transcript line whose end is in a later entry
    carry_at = ""  # where that line starts
    held: list[str] = []  # stderr that came while carrying

    def flush_carry(line: str) -> bool:
        """Show the carried line and the stderr held behind it; False (nothing shown) if they do not fit."""
        text = "".join([line, *held])
        if not page.fits(text):
            if not page.empty:
                return False
            text = _cut(text, page.left)
        page.add(text)
        held.clear()
        return True

    start = "-" if cursor == START else entry
    while True:
        batch = client.xrange(key, min=start, max="+", count=ENTRIES_PER_READ)
        for raw_id, fields in batch:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            skip = offset if entry_id == entry else 0
            event = orjson.loads(fields[b"e"])
            if event.get("type") != events.OUTPUT:
                text = "" if skip else _notice(event)
                if carry:  # the attempt ended inside a line: that line will never be completed
                    if not flush_carry(_render_line(carry)):
                        return page.page(carry_at, True)
                    carry, carry_at = "", ""
                if text and not page.fits(text):
                    if not page.empty:
                        return page.page(f"{entry_id}/0", True)
                    text = _cut(text, page.left)
                page.add(text)
                resume = f"{entry_id}/1"
                continue
            data = str(event.get("data", ""))[skip:]
            if not transcript or (event.get("stream") == "stderr" and not carry):
                text, taken = _raw(data, page.left)
                page.add(text)
                if taken < len(data):
                    return page.page(f"{entry_id}/{skip + taken}", True)
                resume = f"{entry_id}/{skip + taken}"
                continue
            if event.get("stream") == "stderr":
                held.append(data)
                resume = f"{entry_id}/{skip + len(data)}"
                continue
            if carry:
                newline = data.find("\n")
                if newline < 0 and len(carry) + len(data) <= MAX_LINE_CARRY:
                    carry += data
                    resume = f"{entry_id}/{skip + len(data)}"
                    continue
                # The carried line ends here (or is too long to keep: it is shown cut, and its tail
                # later reads as text of its own).
                end = newline + 1 if newline >= 0 else len(data)
                line = carry + data[: end - 1 if newline >= 0 else end]
                if not flush_carry(_render_line(line)):
                    return page.page(carry_at, True)
                carry, carry_at = "", ""
                skip, data = skip + end, data[end:]
            text, taken = _transcript(data, page.left, page_empty=page.empty)
            page.add(text)
            rest = data[taken:]
            if "\n" in rest:  # the page filled up within this entry
                return page.page(f"{entry_id}/{skip + taken}", True)
            if rest:
                carry, carry_at = rest, f"{entry_id}/{skip + taken}"
            resume = f"{entry_id}/{skip + len(data)}"
        if len(batch) < ENTRIES_PER_READ:
            break
        last = batch[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else last)
    if carry:
        if not ended:
            return page.page(carry_at, False)  # the line is shown once it is whole
        if not flush_carry(_render_line(carry)):
            return page.page(carry_at, True)
    return page.page(resume, False)
