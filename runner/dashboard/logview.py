"""A task's log as the page shows it: bounded pages of entries, grouped into chunks, with a transcript.

The page never holds a whole log (it can be hundreds of MB): it starts from the
tail, streams what comes next, and asks for older pages by entry id. A chunk is
a run of consecutive log entries, small enough to add to or drop from the page
at once; it carries the raw text and, for Claude's stream-json, the readable
transcript (runner.render.describe_claude_event, the same lines ``ccx run`` prints).

Transcript lines can span entries, so a page starting mid-log is rendered with
the end of the line that was cut (the *carry*), read back from the entries before it.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio

from handler.protocol import STDERR
from runner import events
from runner.agents.claude import parse_json_line
from runner.render import describe_claude_event, summary

PAGE_CHARS = 256 * 1024
"""About how much output one page (the first view, a skip to the newest, or "load older") holds."""
CHUNK_CHARS = 64 * 1024
"""About how much output one chunk holds (at most this plus one piece)."""
PIECE_CHARS = 64 * 1024
"""Longer entries are split into pieces this long (a frame can hold a megabyte)."""
MAX_LINE_CHARS = 1024 * 1024
"""A transcript line longer than this (a huge tool result) is summarised instead of parsed."""
NON_JSON_LINE_CHARS = 4000
"""Characters shown of a line of Claude's stdout that is not JSON."""
_XRANGE_COUNT = 16

Entry = tuple[str, dict[str, Any]]
"""A log entry: its stream id and its decoded event."""


def decode_entries(raw: list[Any]) -> list[Entry]:
    entries: list[Entry] = []
    for entry_id, fields in raw:
        entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        payload = fields.get(b"e") or fields.get("e")
        try:
            event = orjson.loads(payload) if payload is not None else {}
        except orjson.JSONDecodeError:
            event = {"type": "unreadable"}
        entries.append((entry_id, event if isinstance(event, dict) else {"type": "unreadable"}))
    return entries


def entry_chars(event: dict[str, Any]) -> int:
    data = event.get("data")
    return len(data) if isinstance(data, str) else 64


class Transcript:
    """Turns Claude's stream-json stdout into readable lines; fed in order, it keeps the partial last line.

    ``carry`` is the start of the first line when the text fed begins mid-line;
    ``None`` means that start is unknown (too far back), so the first line is shown as cut.
    """

    def __init__(self, carry: str | None = "") -> None:
        self._partial: list[str] = [carry] if carry else []
        self._size = len(carry or "")
        self._cut = carry is None
        self._too_long = False

    def feed(self, text: str) -> list[str]:
        lines: list[str] = []
        start = 0
        while (end := text.find("\n", start)) != -1:
            lines += self._line(text[start:end])
            start = end + 1
        rest = text[start:]
        if rest:
            if self._size + len(rest) > MAX_LINE_CHARS:
                self._too_long = True
                self._partial = []
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
        cut, too_long = self._cut, self._too_long or size > MAX_LINE_CHARS
        self._partial, self._size, self._cut, self._too_long = [], 0, False, False
        if too_long:
            return [f"[a line of {size:,} characters, too long to show here; switch to raw or read the log]"]
        parsed = None if cut else parse_json_line(whole)
        if parsed is not None:
            return describe_claude_event(parsed)
        if not whole.strip():
            return []
        text = ("…" if cut else "") + whole
        return [text if len(text) <= NON_JSON_LINE_CHARS else text[:NON_JSON_LINE_CHARS] + "…"]


def _event_text(event: dict[str, Any]) -> tuple[str, str] | None:
    """The (kind, text) an entry adds to the page; kind is ``out``, ``err`` or ``meta``."""
    kind = event.get("type")
    if kind == events.OUTPUT:
        data = event.get("data")
        if not isinstance(data, str) or not data:
            return None
        return ("err" if event.get("stream") == STDERR else "out", data)
    if kind == events.STARTED:
        return ("meta", f"▶ started {event.get('at', '')}\n")
    if kind == events.INTERRUPTED:
        return ("meta", f"\n⟲ attempt {event.get('attempt')} interrupted: {event.get('error')} It runs again.\n")
    if kind == events.RESULT and isinstance(event.get("result"), dict):
        return ("meta", "\n" + summary(event["result"]) + "\n")
    return None


def latest_progress(entries: list[tuple[str, dict[str, Any]]]) -> dict[str, int] | None:
    """The output totals carried by the newest output event among ``entries`` (see EventWriter.output)."""
    for _, event in reversed(entries):
        if event.get("type") == events.OUTPUT and isinstance(event.get("lines"), int):
            return {"bytes": event.get("bytes", 0), "lines": event["lines"]}
    return None


def _add(parts: list[list[str]], kind: str, text: str) -> None:
    if parts and parts[-1][0] == kind:
        parts[-1][1] += text
    else:
        parts.append([kind, text])


def _pieces(event: dict[str, Any]) -> list[tuple[int, tuple[str, str] | None]]:
    """What an entry adds to the page, cut into pieces of at most PIECE_CHARS: (offset, (kind, text))."""
    piece = _event_text(event)
    if piece is None or len(piece[1]) <= PIECE_CHARS:
        return [(0, piece)]
    kind, text = piece
    return [(offset, (kind, text[offset : offset + PIECE_CHARS])) for offset in range(0, len(text), PIECE_CHARS)]


def make_chunks(entries: list[Entry], transcript: Transcript | None) -> list[dict[str, Any]]:
    """Group ``entries`` (in order) into chunks for the page.

    A chunk: ``first``/``offset`` (the entry and character it starts at: a long entry is
    split across chunks), ``last`` entry id, ``parts`` (``[kind, text]`` pairs, raw),
    ``lines`` (the same with stdout as transcript lines, only with a transcript),
    ``chars`` (raw size) and ``seq`` (first and last output seq, or null).
    """
    chunks: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for entry_id, event in entries:
        seq = event.get("seq")
        for offset, piece in _pieces(event):
            if current is None or current["chars"] >= CHUNK_CHARS:
                current = {"first": entry_id, "offset": offset, "last": entry_id, "parts": [], "chars": 0, "seq": None}
                if transcript is not None:
                    current["lines"] = []
                chunks.append(current)
            current["last"] = entry_id
            if piece is None:
                continue
            kind, text = piece
            _add(current["parts"], kind, text)
            current["chars"] += len(text)
            if isinstance(seq, int):
                current["seq"] = [current["seq"][0] if current["seq"] else seq, seq]
            if transcript is not None:
                if kind == "out" or event.get("type") == events.RESULT:
                    rendered = transcript.feed(text) if kind == "out" else transcript.flush()
                    if rendered:
                        _add(current["lines"], "out", "\n".join(rendered) + "\n")
                if kind != "out":
                    _add(current["lines"], kind, text)
    return chunks


async def read_page(
    client: redis.asyncio.Redis, task_id: str, before: str | None, offset: int = 0
) -> tuple[list[Entry], bool]:
    """About :data:`PAGE_CHARS` of the log just before entry ``before`` (the newest without it), in order.

    With ``offset``, the first ``offset`` characters of entry ``before`` itself come last
    (the page then ends where a chunk starting mid-entry begins). Returns the entries
    and whether older ones exist.
    """
    key = events.log_key(task_id)
    newest_first: list[Entry] = []
    chars = 0
    upper = "+" if before is None else f"({before}"
    if before is not None and offset > 0:
        for entry_id, event in decode_entries(await client.xrange(key, min=before, max=before, count=1)):
            data = event.get("data")
            if isinstance(data, str):
                newest_first.append((entry_id, {**event, "data": data[:offset]}))
                chars += min(offset, len(data))
    while chars < PAGE_CHARS:
        batch = decode_entries(await client.xrevrange(key, max=upper, min="-", count=_XRANGE_COUNT))
        if not batch:
            return newest_first[::-1], False
        for entry in batch:
            newest_first.append(entry)
            chars += entry_chars(entry[1])
            if chars >= PAGE_CHARS:
                break
        upper = f"({newest_first[-1][0]}"
    older = await client.xrevrange(key, max=upper, min="-", count=1)
    return newest_first[::-1], bool(older)


async def carry_before(client: redis.asyncio.Redis, task_id: str, entry_id: str) -> str | None:
    """The stdout text between the last newline before entry ``entry_id`` and that entry.

    ``""`` when the entry starts a line, ``None`` when the line began too far back to fetch.
    """
    key = events.log_key(task_id)
    pieces: list[str] = []
    size = 0
    upper = f"({entry_id}"
    while size <= MAX_LINE_CHARS:
        batch = decode_entries(await client.xrevrange(key, max=upper, min="-", count=_XRANGE_COUNT))
        if not batch:
            return "".join(reversed(pieces))  # the log's start is a line's start
        for found_id, event in batch:
            upper = f"({found_id}"
            if event.get("type") != events.OUTPUT or event.get("stream") == STDERR:
                continue
            data = event.get("data") or ""
            newline = data.rfind("\n")
            if newline != -1:
                pieces.append(data[newline + 1 :])
                return "".join(reversed(pieces))
            pieces.append(data)
            size += len(data)
    return None


async def transcript_for(client: redis.asyncio.Redis, task_id: str, first: Entry | None) -> Transcript:
    """A transcript ready to render entries starting at ``first``."""
    if first is None:
        return Transcript()
    return Transcript(await carry_before(client, task_id, first[0]))
