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
ENTRIES_PER_READ = 50
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
    kind = event.get("type")
    if kind == events.INTERRUPTED:
        return f"[attempt {event.get('attempt')} interrupted: {event.get('error')} It runs again.]\n"
    if kind == events.GAP:
        return f"[{event.get('missing')} earlier output frame(s) were trimmed from the log]\n"
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


def _transcript(data: str, budget: int, page_empty: bool) -> tuple[str, int]:
    """The complete lines of ``data`` rendered as a transcript, as many as fit in ``budget`` bytes; and how
    many characters of ``data`` they were. On an empty page the first line always goes in (cut if it must)."""
    out: list[str] = []
    used = 0
    consumed = 0
    while (newline := data.find("\n", consumed)) >= 0:
        rendered = _render_line(data[consumed:newline])
        if used + _size(rendered) > budget:
            if out or not page_empty:
                break
            rendered, _ = _raw(rendered, budget)
        out.append(rendered)
        used += _size(rendered)
        consumed = newline + 1
        page_empty = page_empty and not rendered
    return "".join(out), consumed


def read_page(client: redis.Redis, task_id: str, cursor: str, max_bytes: int, transcript: bool, ended: bool) -> Page:
    """The output after ``cursor``: at most ``max_bytes`` (UTF-8) of text, and where to go on from.

    ``ended``: the task has ended, so a last line without a newline is complete and shown.
    """
    budget = max(MIN_PAGE_BYTES, min(int(max_bytes), MAX_PAGE_BYTES))
    entry, offset = parse_cursor(cursor)
    key = events.log_key(task_id)
    parts: list[str] = []
    used = 0
    resume = cursor
    carry = ""  # the start of a transcript line whose end is in a later entry
    carry_at = ""  # where that line starts
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
                    text = _render_line(carry) + text
                if text and used + _size(text) > budget and parts:
                    return Page("".join(parts), carry_at or f"{entry_id}/0", True)
                parts.append(_raw(text, budget - used)[0])
                used += _size(parts[-1])
                carry, carry_at = "", ""
                resume = f"{entry_id}/1"
                continue
            data = str(event.get("data", ""))[skip:]
            if not transcript or event.get("stream") == "stderr":
                text, taken = _raw(data, budget - used)
                parts.append(text)
                used += _size(text)
                if taken < len(data):
                    return Page("".join(parts), f"{entry_id}/{skip + taken}", True)
                resume = f"{entry_id}/{skip + taken}"
                continue
            combined = carry + data
            text, taken = _transcript(combined, budget - used, page_empty=not parts)
            parts.append(text)
            used += _size(text)
            if taken == 0:
                if "\n" in combined:  # a whole line is there but the page is full
                    return Page("".join(parts), carry_at or f"{entry_id}/{skip}", True)
                carry, carry_at = combined, carry_at or f"{entry_id}/{skip}"
                resume = f"{entry_id}/{skip + len(data)}"
                continue
            at = skip + taken - len(carry)
            rest = data[taken - len(carry) :]
            carry, carry_at = "", ""
            if "\n" in rest:  # the page filled up within this entry
                return Page("".join(parts), f"{entry_id}/{at}", True)
            if rest:
                carry, carry_at = rest, f"{entry_id}/{at}"
            resume = f"{entry_id}/{skip + len(data)}"
        if len(batch) < ENTRIES_PER_READ:
            break
        last = batch[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else last)
    if carry:
        last_line = _render_line(carry)
        if not ended:
            resume = carry_at
        elif used + _size(last_line) > budget and parts:
            return Page("".join(parts), carry_at, True)
        else:
            parts.append(_raw(last_line, budget - used)[0])
    return Page("".join(parts), resume, False)
