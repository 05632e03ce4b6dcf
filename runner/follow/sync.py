"""The blocking driver of :class:`~runner.follow.cursor.LogCursor`: ``TaskHandle.events()``, the CLI, MCP pages.

:func:`follow` replays a task's log and goes live until the result; :func:`entries` reads the log up to its
end without waiting (what a page is made of); :func:`wait_for_result` waits for the end alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import redis

from runner import keys
from runner.errors import UnknownTask
from runner.follow.cursor import START, Budget, Entry, LogCursor

BLOCK_MS = 1000
"""Longest single wait on Redis: a follow notices a deadline or a vanished log within it."""
FOLLOW_READ = Budget(entries=200)
"""What one read of a follow asks for: a modest count, since entries may be up to a few MB each and a
reply holds them all at once (200 × 512 KiB frames is 100 MB)."""
PAGE_READ = 16
"""Entries per read of :func:`entries`: frames can be large, and a page is small."""


def _wait_ms(deadline: float | None, block_ms: int, task_id: str, timeout: float | None) -> int:
    """How long the next blocking read may wait; ``TimeoutError`` once ``deadline`` has passed."""
    if deadline is None:
        return block_ms
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"Task {task_id} did not finish within {timeout:g} s.")
    return max(1, min(block_ms, int(left * 1000)))


def _stored_result(client: redis.Redis, task_id: str) -> dict[str, Any] | None:
    raw = client.hget(keys.info_key(task_id), "result")
    return None if raw is None else orjson.loads(raw)  # type: ignore[arg-type]


def follow(
    client: redis.Redis,
    task_id: str,
    *,
    timeout: float | None = None,
    block_ms: int = BLOCK_MS,
    after: str = START,
) -> Iterator[dict[str, Any]]:
    """Every event of a task from ``after`` on: the replay first, then live, until the result event.

    One loop serves both: XREAD from the last id seen returns what is already in the log at once and blocks
    for what comes next, so a reader that joins before, during or after the run sees the same sequence, with
    a ``gap`` event where the log was trimmed past what it had. Raises ``TimeoutError`` when ``timeout``
    seconds pass without reaching the result, :class:`~runner.errors.UnknownTask` for no such task.
    """
    cursor = LogCursor(task_id, after)
    key = keys.log_key(task_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    while not cursor.done:
        wait = _wait_ms(deadline, block_ms, task_id, timeout)
        reply = client.xread({key: cursor.next_id}, count=cursor.count(FOLLOW_READ), block=wait)
        if reply:
            for _, event in cursor.feed(reply[0][1]):  # type: ignore[index]
                yield event
            continue
        if not client.exists(key):
            result = _stored_result(client, task_id)
            if result is not None:  # the log expired or was never written: the record still has the result
                yield cursor.expired(result)
                return
            if not client.exists(keys.info_key(task_id)):
                raise UnknownTask(task_id)


def entries(client: redis.Redis, cursor: LogCursor, count: int = PAGE_READ) -> Iterator[Entry]:
    """The log's entries after ``cursor`` (gaps included) up to its present end, read ``count`` at a time as
    they are taken: a caller that stops early reads no further. Nothing waits for new entries."""
    key = keys.log_key(cursor.task_id)
    while not cursor.done:
        reply = client.xrange(key, min=cursor.range_min, max="+", count=count)
        yield from cursor.feed(reply)  # type: ignore[arg-type]
        if len(reply) < count:  # type: ignore[arg-type]
            return


def wait_for_result(
    client: redis.Redis, task_id: str, timeout: float | None = None, block_ms: int = BLOCK_MS
) -> dict[str, Any]:
    """The task's result dict, waiting for it if needed, without reading its output.

    Blocks on the task's done-stream from its start, so an end that happens between
    looking at the record and blocking is still seen at once.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        result = _stored_result(client, task_id)
        if result is not None:
            return result
        if not client.exists(keys.info_key(task_id)):
            raise UnknownTask(task_id)
        wait = _wait_ms(deadline, block_ms, task_id, timeout)
        client.xread({keys.done_key(task_id): START}, count=1, block=wait)
