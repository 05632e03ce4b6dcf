"""Task events in Redis: their names and how they are written in batches.

Every event is one JSON object. Each goes to the task's log, a Redis Stream
(durable, replayable), and to its pub/sub channel (live); lifecycle changes of
all tasks also go to :data:`keys.LIFECYCLE_CHANNEL`. docs/events.md is the reference;
runner/follow/ reads the log.

The writer batches: output frames that arrive while a write is in flight go
out together in one Lua call, so a chatty task costs one round trip per batch,
not per line, while a quiet task's frame is written at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import redis
import redis.asyncio

from runner import clock, keys
from runner.vocabulary import EventType

DEFAULT_LOG_MAXLEN = 100_000
"""Entries kept in a task's log (approximate trimming). At up to 512 KiB per frame this bounds a log."""
DEFAULT_LOG_TTL = 7 * 24 * 3600
"""Seconds a task's log and record are kept after it ends."""


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


# ARGV[1] = maxlen, ARGV[2..] = events. One call appends a whole batch to the log and the channel.
APPEND_SCRIPT = """
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[i])
  redis.call('PUBLISH', KEYS[2], ARGV[i])
end
return #ARGV - 1
"""


class EventWriter:
    """Appends a task's events to its log and channel, batching whatever queues up meanwhile.

    ``add`` waits when more than ``max_pending`` bytes are waiting, which is how a
    slow Redis slows the handler (and the child) down instead of growing memory.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        task_id: str,
        maxlen: int = DEFAULT_LOG_MAXLEN,
        max_pending: int = 2 * 1024 * 1024,
        job_key: str | None = None,
    ) -> None:
        self.client = client
        self.task_id = task_id
        self.maxlen = maxlen
        self.max_pending = max_pending
        self.job_key = job_key
        self._keys = [keys.log_key(task_id), keys.task_channel(task_id)]
        self._script = client.register_script(APPEND_SCRIPT)
        self._batch: list[bytes] = []
        self._pending = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.progress = {"bytes": 0, "lines": 0, "frames": 0, "last_activity": None}
        self._progress_written = 0.0
        self._progress_frames = 0
        self.error: BaseException | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def add(self, event: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._batch.append(event)
        self._pending += len(event)
        self._wake.set()
        if self._pending >= self.max_pending:
            self._room.clear()
            await self._room.wait()

    async def output(self, stream: str, seq: int, data: str) -> None:
        progress = self.progress
        progress["bytes"] += len(data)
        progress["lines"] += data.count("\n")
        progress["frames"] += 1
        # The totals so far ride along, so a reader's progress is exactly what it has shown (the dashboard).
        await self.add(
            encode(
                {
                    "type": EventType.OUTPUT,
                    "task_id": self.task_id,
                    "seq": seq,
                    "stream": stream,
                    "data": data,
                    "bytes": progress["bytes"],
                    "lines": progress["lines"],
                }
            )
        )

    async def _run(self) -> None:
        try:
            while True:
                if not self._batch:
                    if self._closing:
                        return
                    self._wake.clear()
                    if self._progress_stale():
                        # Going quiet: write the progress skipped by the twice-a-second limit,
                        # so RQ tools do not show stale numbers while the task waits.
                        woken = asyncio.ensure_future(self._wake.wait())
                        await asyncio.wait({woken}, timeout=0.5)
                        woken.cancel()
                        if not self._batch and not self._closing and self._progress_stale():
                            await self._write_progress()
                        continue
                    await self._wake.wait()
                    continue
                batch, self._batch, self._pending = self._batch, [], 0
                self._room.set()
                await self._append(batch)
        except BaseException as exc:  # surfaced to the relay on its next add() or at close()
            self.error = exc
            self._room.set()
            raise

    async def _append(self, batch: list[bytes]) -> None:
        """One round trip for the batch (and the progress, when due)."""
        for attempt in range(2):
            async with self.client.pipeline(transaction=False) as pipe:
                await self._script(keys=self._keys, args=[self.maxlen, *batch], client=pipe)
                self._add_progress(pipe)
                try:
                    await pipe.execute()
                    return
                except redis.exceptions.NoScriptError:
                    # Redis restarted meanwhile and forgot the script: a retried pipeline does not load it
                    # again by itself (the batch did not run); load it and send the batch once more.
                    if attempt:
                        raise
                    await self.client.script_load(APPEND_SCRIPT)

    def _progress_stale(self) -> bool:
        return self.job_key is not None and self.progress["frames"] != self._progress_frames

    async def _write_progress(self) -> None:
        self._progress_frames = self.progress["frames"]
        self.progress["last_activity"] = clock.now_iso()
        await self.client.hset(self.job_key, "meta", orjson.dumps({"ccx_progress": self.progress}))  # type: ignore[arg-type]

    def _add_progress(self, pipe: Any) -> None:
        """Keep RQ's job meta current (for rq-dashboard and `rq info`), at most twice a second."""
        if self.job_key is None or self.progress["frames"] == 0:
            return
        now = time.monotonic()
        if now - self._progress_written < 0.5:
            return
        self._progress_written = now
        self._progress_frames = self.progress["frames"]
        self.progress["last_activity"] = clock.now_iso()
        pipe.hset(self.job_key, "meta", orjson.dumps({"ccx_progress": self.progress}))

    async def close(self) -> None:
        """Write everything still queued, then stop; re-raise a write failure."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await self._task
        if self.error is not None:
            raise self.error
        if self._progress_stale():
            await self._write_progress()
