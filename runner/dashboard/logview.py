"""A task's log as the page shows it: entries grouped into chunks, with the agent's transcript.

The page never holds a whole log (it can be hundreds of MB): it starts from the
tail, streams what comes next, and asks for older pages by entry id (runner/follow/aio.py
reads them). A chunk is a run of consecutive log entries, small enough to add to or drop
from the page at once; it carries the raw text and, for an agent that has one, the
readable transcript (the agent's :class:`~runner.agents.base.Transcript`, the same lines
``ccx run`` prints).

Transcript lines can span entries, so a page starting mid-log is rendered with
the end of the line that was cut (the *carry*), read back from the entries before it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis.asyncio

from handler.protocol import STDERR
from runner.agents import get_agent
from runner.agents.base import MAX_LINE_CHARS, Transcript
from runner.errors import SpecError
from runner.follow.aio import entries_before
from runner.follow.cursor import Entry
from runner.render import summary
from runner.vocabulary import AttemptKind, EventType

CHUNK_CHARS = 64 * 1024
"""About how much output one chunk holds (at most this plus one piece)."""
PIECE_CHARS = 64 * 1024
"""Longer entries are split into pieces this long (a frame can hold a megabyte)."""


def _event_text(event: dict[str, Any]) -> tuple[str, str] | None:
    """The (kind, text) an entry adds to the page; kind is ``out``, ``err`` or ``meta``."""
    kind = event.get("type")
    if kind == EventType.OUTPUT:
        data = event.get("data")
        if not isinstance(data, str) or not data:
            return None
        return ("err" if event.get("stream") == STDERR else "out", data)
    if kind == EventType.STARTED:
        return ("meta", f"▶ started {event.get('at', '')}\n")
    if kind == AttemptKind.INTERRUPTED:
        return ("meta", f"\n⟲ attempt {event.get('attempt')} interrupted: {event.get('error')} It runs again.\n")
    if kind == EventType.RESULT and isinstance(event.get("result"), dict):
        return ("meta", "\n" + summary(event["result"]) + "\n")
    return None


def latest_progress(entries: list[tuple[str, dict[str, Any]]]) -> dict[str, int] | None:
    """The output totals carried by the newest output event among ``entries`` (see EventWriter.output)."""
    for _, event in reversed(entries):
        if event.get("type") == EventType.OUTPUT and isinstance(event.get("lines"), int):
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
                if kind == "out" or event.get("type") == EventType.RESULT:
                    rendered = transcript.feed(text) if kind == "out" else transcript.flush()
                    if rendered:
                        _add(current["lines"], "out", "\n".join(rendered) + "\n")
                if kind != "out":
                    _add(current["lines"], kind, text)
    return chunks


async def carry_before(client: redis.asyncio.Redis, task_id: str, entry_id: str) -> str | None:
    """The stdout text between the last newline before entry ``entry_id`` and that entry.

    ``""`` when the entry starts a line, ``None`` when the line began too far back to fetch.
    """
    pieces: list[str] = []
    size = 0
    async with contextlib.aclosing(entries_before(client, task_id, entry_id)) as older:
        async for _, event in older:
            if event.get("type") != EventType.OUTPUT or event.get("stream") == STDERR:
                continue
            data = event.get("data") or ""
            newline = data.rfind("\n")
            if newline != -1:
                pieces.append(data[newline + 1 :])
                return "".join(reversed(pieces))
            pieces.append(data)
            size += len(data)
            if size > MAX_LINE_CHARS:
                return None  # a line this long is summarised, whatever its start
    return "".join(reversed(pieces))  # the log's start is a line's start


async def transcript_for(
    client: redis.asyncio.Redis, task_id: str, agent: str | None, first: Entry | None
) -> Transcript | None:
    """The task's agent's transcript, ready to render entries starting at ``first``; None when it has none."""
    try:
        found = get_agent(str(agent))
    except SpecError:  # a record written by another version may name an agent this one lacks: shown raw
        return None
    if found.transcript() is None:
        return None
    return found.transcript("" if first is None else await carry_before(client, task_id, first[0]))
