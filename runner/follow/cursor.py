"""Where a follower of one task's log is, with no I/O: fed Redis replies as plain data, it gives back events.

A task's log is a Redis Stream whose entries each hold one event as JSON (field ``e``; docs/events.md). A
:class:`LogCursor` is fed XRANGE / XREVRANGE / XREAD replies (``[(id, {b"e": b"{…}"}), …]``, bytes or str)
and gives back the decoded entries in order, with a ``gap`` entry wherever output frames were trimmed away
(CCX_LOG_MAXLEN), ending at the ``result`` event. It says where the next read starts (:attr:`next_id`,
:attr:`range_min`) and, with a :class:`Budget`, how many entries it should ask for. It never reads Redis,
waits or looks at a clock: the drivers (runner/follow/sync.py, runner/follow/aio.py) do, which is what lets
the CLI, MCP and the dashboard share it, and what lets its tests be plain data.

Entries are decoded one at a time as the caller takes them (:meth:`LogCursor.feed` is lazy): a reply can
hold a hundred MB of output, and decoding it all before the first event is used would double that.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from runner.vocabulary import EventType

START = "0-0"
"""The id before any entry: a cursor after it replays the whole log."""
UNREADABLE = "unreadable"
"""The type given to an entry whose event is not a JSON object (never written by the runner; shown, not fatal)."""
NON_OUTPUT_CHARS = 64
"""What an entry that is not output counts for in a page's size (a started or result event is a line or two)."""
_MAX_SEQ = 2**64 - 1
"""The largest sequence part of a stream id (Redis ids are two unsigned 64-bit numbers)."""

Entry = tuple[str, dict[str, Any]]
"""A log entry: its stream id and its decoded event. A gap entry has the id of the entry that follows it."""


def decode_entry(raw_id: bytes | str, fields: Mapping[Any, Any]) -> Entry:
    """One entry of a reply as (id, event); an event that is not a JSON object reads as :data:`UNREADABLE`."""
    entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
    payload = fields.get(b"e")
    if payload is None:
        payload = fields.get("e")  # a client made with decode_responses=True
    try:
        event = orjson.loads(payload) if payload is not None else {}
    except orjson.JSONDecodeError:
        event = None
    return entry_id, event if isinstance(event, dict) else {"type": UNREADABLE}


def decode_entries(reply: Iterable[tuple[bytes | str, Mapping[Any, Any]]]) -> list[Entry]:
    """Every entry of an XRANGE / XREVRANGE reply (or one stream of an XREAD reply), decoded, in reply order."""
    return [decode_entry(raw_id, fields) for raw_id, fields in reply]


def entry_chars(event: dict[str, Any]) -> int:
    """What an entry counts for in a page: its output's characters, else :data:`NON_OUTPUT_CHARS`."""
    data = event.get("data")
    return len(data) if isinstance(data, str) else NON_OUTPUT_CHARS


def id_before(entry_id: str) -> str:
    """The greatest stream id below ``entry_id`` (:data:`START` for the first ones): reading after it reads
    ``entry_id`` itself, which is how a read starts *at* an entry with XREAD as with XRANGE."""
    ms, _, seq = entry_id.partition("-")
    milliseconds, number = int(ms), int(seq or 0)
    if number > 0:
        return f"{milliseconds}-{number - 1}"
    if milliseconds > 0:
        return f"{milliseconds - 1}-{_MAX_SEQ}"
    return START


def gap_event(task_id: str, missing: int, from_seq: int) -> dict[str, Any]:
    """``missing`` output frames from ``from_seq`` on are no longer in the log (never stored; docs/events.md)."""
    return {"type": EventType.GAP, "task_id": task_id, "missing": missing, "from_seq": from_seq}


def result_event(task_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """The result event as the log has it, made from the result the task's record keeps."""
    return {"type": EventType.RESULT, "task_id": task_id, "result": result}


@dataclass
class Budget:
    """What a page may still take: ``entries`` and ``size`` (characters of output, or whatever unit its
    owner counts in: MCP counts UTF-8 bytes); None is no limit."""

    entries: int | None = None
    size: int | None = None

    @property
    def full(self) -> bool:
        return (self.entries is not None and self.entries <= 0) or (self.size is not None and self.size <= 0)

    def take(self, size: int, entries: int = 1) -> None:
        if self.entries is not None:
            self.entries -= entries
        if self.size is not None:
            self.size -= size

    def count(self, entry_size: int | None) -> int:
        """Entries a read for this page should ask for: at most the entries left and, once an entry's size is
        known (``entry_size``), about as many as the size left holds; always at least one."""
        count = self.entries if self.entries is not None else 1 << 30
        if self.size is not None and entry_size:
            count = min(count, self.size // entry_size)
        return max(1, count)


class LogCursor:
    """A follower's place in one task's log: the last entry taken, the frame expected next, whether it ended.

    Feed it replies in log order (:meth:`feed`, or :meth:`take` for entries already decoded); it gives back
    each entry, a gap entry before an output frame whose ``seq`` skips some (the log was trimmed past them),
    and nothing after the ``result`` event (:attr:`done`). Frames are numbered from 0 within each attempt, so
    a ``started`` event starts the count again; a cursor that does not start at the log's beginning (after an
    id, at an entry, at the tail) knows the next frame only once it has seen one.
    """

    def __init__(self, task_id: str, after: str = START) -> None:
        self.task_id = task_id
        self.last = after
        """The id of the last entry taken (:data:`START`: none yet); the next read starts after it."""
        self.expected: int | None = 0 if after == START else None
        """The ``seq`` of the output frame that should come next; None: not known yet."""
        self.done = False
        """The result event was taken: the task has ended and the log has nothing after it."""
        self.entry_size: int | None = None
        """The mean size (:func:`entry_chars`) of the entries of the last reply taken; None before any."""

    @classmethod
    def at(cls, task_id: str, entry_id: str) -> LogCursor:
        """A cursor whose next entry is ``entry_id`` itself (a position handed out earlier)."""
        return cls(task_id, id_before(entry_id))

    @classmethod
    def tail(cls, task_id: str) -> LogCursor:
        """A cursor for a follow that starts with the log's newest page: which frame comes first is unknown."""
        cursor = cls(task_id)
        cursor.expected = None
        return cursor

    @property
    def next_id(self) -> str:
        """Where an XREAD goes on from (exclusive)."""
        return self.last

    @property
    def range_min(self) -> str:
        """Where an XRANGE goes on from: ``-`` for the whole log, else just after the last entry taken."""
        return "-" if self.last == START else f"({self.last}"

    def count(self, budget: Budget, first: int | None = None) -> int:
        """Entries the next read should ask for to fit ``budget``, judged by the size of the entries seen so
        far; ``first`` (if given) while none has been (a first read of unknown entries stays small)."""
        if self.entry_size is None and first is not None:
            return first
        return budget.count(self.entry_size)

    def feed(self, reply: Iterable[tuple[bytes | str, Mapping[Any, Any]]]) -> Iterator[Entry]:
        """The entries of a reply (in log order, after :attr:`last`) decoded as they are taken, with gaps;
        it stops after the result. The cursor moves with each entry the caller takes."""
        return self.take(decode_entry(raw_id, fields) for raw_id, fields in reply)

    def take(self, entries: Iterable[Entry]) -> Iterator[Entry]:
        """As :meth:`feed`, for entries already decoded (e.g. a page read backwards, then put in order)."""
        chars = 0
        for taken, entry in enumerate(entries, 1):
            if self.done:
                return
            chars += entry_chars(entry[1])
            self.entry_size = chars // taken
            yield from self._take(entry)

    def expired(self, result: dict[str, Any]) -> dict[str, Any]:
        """The log is gone (expired, or never written) and the task's record holds its ``result``: the follow
        ends with the result event made from it."""
        self.done = True
        return result_event(self.task_id, result)

    def _take(self, entry: Entry) -> tuple[Entry, ...]:
        entry_id, event = entry
        self.last = entry_id
        kind = event.get("type")
        if kind == EventType.OUTPUT:
            seq = event.get("seq", 0)
            if isinstance(seq, int):
                expected, self.expected = self.expected, seq + 1
                if expected is not None and seq > expected:
                    return (entry_id, gap_event(self.task_id, seq - expected, expected)), entry
        elif kind == EventType.STARTED:
            self.expected = 0
        elif kind == EventType.RESULT:
            self.done = True
        return (entry,)
