"""Outcomes kept for a caller that never got them: run to the end once, collected instead of run twice.

A run can reach its end on the handler while its answer never reaches the worker:
the worker is cut off past its keepalive, or frozen with its work-horse past its
lock's TTL, or its horse is killed right after the child exited. The task is then
tried again, under a new run name, listing the earlier runs in ``collect``. If one of
them ran to its end here, its outcome is given back, its output replayed from the
tail kept here, and the task does not run a second time.

An outcome is kept from the run's end until someone collects it or
:data:`KEEP_FOR` seconds pass. Once its caller has closed the connection cleanly
(close code 1000: it read the answer) it is kept only :data:`READ_GRACE` seconds
more, in memory: read is not recorded (a work-horse thawed after its worker lost
the queue reads its answer, and has it refused, just before its successor asks). Only runs that reached their end are kept: a run
stopped because its connection died, or by a cancel, has no outcome to give.

One still unread :data:`PERSIST_AFTER` seconds after its end (a healthy caller
reads it within milliseconds) is also written to a private directory, so a
handler killed meanwhile (its watchdog stops its runs, nothing can stop an answer
from being lost with it) gives it back once restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from handler.protocol import ExecuteResult
from handler.secretfile import write_private

log = logging.getLogger("ccx.handler")

KEEP_FOR = 900.0
"""Seconds an uncollected outcome is kept: past a worker's lock TTL, its successor's lease wait and its retries."""
KEEP_OUTPUT = 1 << 20
"""Characters of output kept per run (its last ones: an agent's result comes last)."""
KEEP_RUNS = 64
"""Outcomes kept at most; the oldest goes first."""
READ_GRACE = 60.0
"""Seconds an outcome its caller read stays collectable (a successor's attempt follows within seconds)."""
READ_MOST = 16
"""Read outcomes kept at most (their output tails are in memory)."""
PERSIST_AFTER = 1.0
"""Seconds an outcome may stay unread before it is also written to disk."""


@dataclass
class OutputTail:
    """The last frames of a run's output, about ``limit`` characters of them (whole frames, so at least one)."""

    limit: int = KEEP_OUTPUT
    frames: deque[tuple[str, str]] = field(default_factory=deque)
    size: int = 0

    def add(self, stream: str, data: str) -> None:
        self.frames.append((stream, data))
        self.size += len(data)
        while self.size > self.limit and len(self.frames) > 1:
            self.size -= len(self.frames.popleft()[1])


@dataclass
class Kept:
    result: ExecuteResult
    output: OutputTail
    until: float
    """Wall-clock time (a restarted handler reads it back) after which it is dropped."""
    persisting: asyncio.TimerHandle | None = None


class KeptOutcomes:
    """The handler's kept outcomes, by run name; with a ``directory``, those left unread are also on disk."""

    def __init__(self, keep_for: float = KEEP_FOR, most: int = KEEP_RUNS, directory: Path | None = None) -> None:
        self.keep_for = keep_for
        self.most = most
        self.directory = directory
        self._kept: OrderedDict[str, Kept] = OrderedDict()
        self._read: OrderedDict[str, Kept] = OrderedDict()
        """Outcomes their caller read, for :data:`READ_GRACE` seconds (never on disk)."""

    def __len__(self) -> int:
        """Outcomes kept unread."""
        return len(self._kept)

    def keep(self, run: str, result: ExecuteResult, output: OutputTail) -> None:
        self._expire()
        self._drop(run)
        kept = self._kept[run] = Kept(result, output, time.time() + self.keep_for)
        if self.directory is not None:
            kept.persisting = asyncio.get_running_loop().call_later(PERSIST_AFTER, self._persist, run)
        while len(self._kept) > self.most:
            self._drop(next(iter(self._kept)))

    def delivered(self, run: str) -> None:
        """Its caller read the answer: kept a short while more, in memory only (read is not recorded)."""
        kept = self._drop(run)
        if kept is None:
            return
        kept.until = min(kept.until, time.time() + READ_GRACE)
        self._read[run] = kept
        while len(self._read) > READ_MOST:
            self._read.popitem(last=False)

    def collect(self, runs: list[str]) -> tuple[str, Kept] | None:
        """The first of ``runs`` whose outcome is kept, taken out (an outcome is given back once)."""
        self._expire()
        for run in runs:
            kept = self._drop(run) or self._read.pop(run, None)
            if kept is not None:
                return run, kept
        return None

    def load(self) -> int:
        """Take back the outcomes a previous handler left on disk (dropping those past their time); returns
        how many."""
        if self.directory is None or not self.directory.is_dir():
            return 0
        for path in sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                data = orjson.loads(path.read_bytes())
                kept = Kept(ExecuteResult.from_dict(data["result"]), OutputTail(), float(data["until"]))
                kept.output.frames.extend((stream, text) for stream, text in data["frames"])
                run = str(data["run"])
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("dropping %s: not a kept outcome this handler can read", path)
                run, kept = "", None  # type: ignore[assignment]
            if kept is None or kept.until <= time.time():
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            self._kept[run] = kept
        return len(self._kept)

    def _path(self, run: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{hashlib.sha256(run.encode()).hexdigest()[:32]}.json"

    def _persist(self, run: str) -> None:
        kept = self._kept.get(run)
        if kept is None:
            return
        kept.persisting = None
        data = {"run": run, "result": kept.result.to_dict(), "until": kept.until, "frames": list(kept.output.frames)}
        try:
            write_private(self._path(run), orjson.dumps(data).decode())
        except (OSError, ValueError) as exc:  # a full disk, say: the outcome is still kept in memory
            log.warning("could not keep the unread outcome of run %s on disk (%s)", run, exc)

    def _drop(self, run: str) -> Kept | None:
        kept = self._kept.pop(run, None)
        if kept is None:
            return None
        if kept.persisting is not None:
            kept.persisting.cancel()
        elif self.directory is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path(run))
        return kept

    def _expire(self) -> None:
        now = time.time()
        while self._kept and next(iter(self._kept.values())).until <= now:
            self._drop(next(iter(self._kept)))
        while self._read and next(iter(self._read.values())).until <= now:
            self._read.popitem(last=False)
