"""The asyncio driver of :class:`~runner.follow.cursor.LogCursor`, with pacing: what the dashboard reads.

A page never holds a whole log (it can be hundreds of MB), so a :class:`Follower` starts from the log's
newest page (a *reset*), then brings each batch of new entries, sending at most :attr:`Pace.max_rate`
characters a second; a follow that stays behind a chatty task for :attr:`Pace.max_lag` seconds skips to the
newest page (another reset), so the page shows the latest output and never drowns. :func:`read_page` reads
a page back from any entry ("load older"); :func:`entries_before` walks the log backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import redis
import redis.asyncio

from runner import keys
from runner.follow.cursor import START, Budget, Entry, LogCursor, decode_entries, entry_chars
from runner.vocabulary import EventType

PAGE_CHARS = 256 * 1024
"""About how much output one page (the first view, a skip to the newest, or "load older") holds."""
BACK_READ = 16
"""Entries per backward read: frames can be large, and a page is small."""


@dataclass(frozen=True)
class Pace:
    """How a live follow reads and how fast it may go (the dashboard's settings by default)."""

    block_ms: int = 5000
    """Longest wait for new entries in one read."""
    read_chars: int = 256 * 1024
    """About how much output one live read fetches (the entry count adapts to the task's frame size)."""
    read_max: int = 64
    """Most entries one live read fetches (for tasks writing small frames)."""
    first_read: int = 4
    """Entries of a live read while their size is unknown: at most 2 MB of 512 KiB frames."""
    max_rate: float = 2 * 1024 * 1024
    """Characters per second at most brought to the reader; a faster task makes it lag, then skip."""
    max_lag: float = 2.0
    """Seconds a follow may stay behind the log's newest entry before it skips to the newest page."""
    page_chars: int = PAGE_CHARS
    """About how much output a reset's page holds."""
    retry_after: float = 1.0
    """Seconds between two tries while Redis fails."""


@dataclass
class Batch:
    """What a follow brings at once: a page of the tail (``reset``: it replaces what was shown) or the
    entries after the last batch (gaps left out: a reset counts them in ``skipped``)."""

    entries: list[Entry] = field(default_factory=list)
    reset: bool = False
    ended: bool = False
    """The batch holds the result event, or the log is gone and the task has ended (``expired``)."""
    more_before: bool = False
    """A reset's page has older entries before it."""
    skipped: int = 0
    """Output frames that were never brought: trimmed from the log, or passed over to keep up."""
    expired: bool = False
    """The task ended and its log is gone (it expired): there are no entries to show."""
    error: redis.RedisError | None = None
    """Redis failed; the follow tries again after :attr:`Pace.retry_after`."""

    @property
    def chars(self) -> int:
        return sum(entry_chars(event) for _, event in self.entries)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def entries_before(
    client: redis.asyncio.Redis, task_id: str, before: str | None = None, count: int = BACK_READ
) -> AsyncIterator[Entry]:
    """The log's entries before entry ``before`` (from the newest without it), newest first, read ``count``
    at a time as they are taken."""
    key = keys.log_key(task_id)
    upper = "+" if before is None else f"({before}"
    while True:
        batch = decode_entries(await client.xrevrange(key, max=upper, min="-", count=count))
        for entry in batch:
            yield entry
        if len(batch) < count:
            return
        upper = f"({batch[-1][0]}"


async def read_page(
    client: redis.asyncio.Redis, task_id: str, before: str | None = None, offset: int = 0, size: int = PAGE_CHARS
) -> tuple[list[Entry], bool]:
    """About ``size`` characters of the log just before entry ``before`` (the newest without it), in order.

    With ``offset``, the first ``offset`` characters of entry ``before`` itself come last
    (the page then ends where a chunk starting mid-entry begins). Returns the entries
    and whether older ones exist.
    """
    key = keys.log_key(task_id)
    budget = Budget(size=size)
    newest_first: list[Entry] = []
    if before is not None and offset > 0:
        for entry_id, event in decode_entries(await client.xrange(key, min=before, max=before, count=1)):
            data = event.get("data")
            if isinstance(data, str):
                newest_first.append((entry_id, {**event, "data": data[:offset]}))
                budget.take(min(offset, len(data)))
    if not budget.full:
        async with contextlib.aclosing(entries_before(client, task_id, before)) as older:
            async for entry in older:
                newest_first.append(entry)
                budget.take(entry_chars(entry[1]))
                if budget.full:
                    break
            else:
                return newest_first[::-1], False
    oldest = newest_first[-1][0] if newest_first else before
    more = oldest is not None and bool(await client.xrevrange(key, max=f"({oldest}", min="-", count=1))
    return newest_first[::-1], more


class Follower:
    """One task's log for a live view: its newest page, then each new batch until the result, paced.

    The caller handles each batch before the next is read: the pause that keeps to :attr:`Pace.max_rate`
    comes after, so a slow reader (a browser on a slow link) slows the follow instead of piling up.
    """

    def __init__(self, client: redis.asyncio.Redis, task_id: str, pace: Pace | None = None) -> None:
        self.client = client
        self.task_id = task_id
        self.pace = pace or Pace()
        self.cursor = LogCursor.tail(task_id)
        self._key = keys.log_key(task_id)
        self._read = Budget(entries=self.pace.read_max, size=self.pace.read_chars)
        self._behind_since: float | None = None

    async def batches(self) -> AsyncIterator[Batch]:
        """The newest page (a reset), then each batch of new entries, until one that ends the task."""
        batch = await self._reset()
        yield batch
        while not batch.ended:
            batch = await self._next()
            yield batch
            if not batch.ended:
                await asyncio.sleep(self.pace.retry_after if batch.error else batch.chars / self.pace.max_rate)

    async def _next(self) -> Batch:
        """The next batch: new entries, a reset (lagging, or a log gone), or a Redis failure."""
        while True:
            count = self.cursor.count(self._read, first=self.pace.first_read)
            try:
                reply = await self.client.xread({self._key: self.cursor.next_id}, count=count, block=self.pace.block_ms)
            except redis.RedisError as exc:
                return Batch(error=exc)
            if not reply:
                if self.cursor.last == START and await self.client.hexists(keys.info_key(self.task_id), "result"):
                    return await self._reset()  # ended without a log (expired): show the result
                continue
            entries = decode_entries(reply[0][1])
            if await self._lagging(len(entries) >= count, entries[-1][0]):
                return await self._reset()
            return self._batch(list(self.cursor.take(entries)))

    async def _lagging(self, full: bool, last_id: str) -> bool:
        """Whether the follow has stayed behind the log's newest entry for longer than :attr:`Pace.max_lag`
        (a read that came back full, with more after it, is behind)."""
        if not (full and await self._more_after(last_id)):
            self._behind_since = None
            return False
        now = time.monotonic()
        if self._behind_since is None:
            self._behind_since = now
            return False
        if now - self._behind_since <= self.pace.max_lag:
            return False
        self._behind_since = None
        return True

    async def _more_after(self, entry_id: str) -> bool:
        newest = await self.client.xrevrange(self._key, count=1)
        return bool(newest) and _text(newest[0][0]) != entry_id

    async def _reset(self) -> Batch:
        """The log's newest page, as the cursor takes it (what it skipped counted); ``expired`` when the log
        is gone and the record has the result."""
        entries, more = await read_page(self.client, self.task_id, None, size=self.pace.page_chars)
        batch = self._batch(list(self.cursor.take(entries)), reset=True, more_before=more)
        if not batch.entries:
            raw = await self.client.hget(keys.info_key(self.task_id), "result")
            if raw is not None:
                self.cursor.expired(orjson.loads(raw))
                batch.expired = batch.ended = True
        return batch

    def _batch(self, taken: list[Entry], reset: bool = False, more_before: bool = False) -> Batch:
        shown = [entry for entry in taken if entry[1].get("type") != EventType.GAP]
        skipped = sum(event["missing"] for _, event in taken if event.get("type") == EventType.GAP)
        return Batch(shown, reset=reset, ended=self.cursor.done, more_before=more_before, skipped=skipped)
