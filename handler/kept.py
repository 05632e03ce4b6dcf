"""Outcomes kept for a caller that never got them: run to the end once, collected instead of run twice.

A run can reach its end on the handler while its answer never reaches the worker:
the worker is cut off past its keepalive, or frozen with its work-horse past its
lock's TTL, or its horse is killed right after the child exited. The task is then
tried again, under a new run name, listing the earlier runs in ``collect``. If one of
them ran to its end here, its outcome is given back, its output replayed from the
tail kept here, and the task does not run a second time.

An outcome is kept from the run's end until its caller closes the connection
cleanly (close code 1000: it read the answer), someone collects it, or
:data:`KEEP_FOR` seconds pass. Only runs that reached their end are kept: a run
stopped because its connection died, or by a cancel, has no outcome to give.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from handler.protocol import ExecuteResult

KEEP_FOR = 900.0
"""Seconds an uncollected outcome is kept: past a worker's lock TTL, its successor's lease wait and its retries."""
KEEP_OUTPUT = 1 << 20
"""Characters of output kept per run (its last ones: an agent's result comes last)."""
KEEP_RUNS = 64
"""Outcomes kept at most; the oldest goes first."""


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


class KeptOutcomes:
    """The handler's kept outcomes, by run name."""

    def __init__(self, keep_for: float = KEEP_FOR, most: int = KEEP_RUNS) -> None:
        self.keep_for = keep_for
        self.most = most
        self._kept: OrderedDict[str, Kept] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, run: str, result: ExecuteResult, output: OutputTail) -> None:
        self._expire()
        self._kept[run] = Kept(result, output, time.monotonic() + self.keep_for)
        while len(self._kept) > self.most:
            self._kept.popitem(last=False)

    def delivered(self, run: str) -> None:
        """Its caller read the answer: nothing to keep."""
        self._kept.pop(run, None)

    def collect(self, runs: list[str]) -> tuple[str, Kept] | None:
        """The first of ``runs`` whose outcome is kept, taken out (an outcome is given back once)."""
        self._expire()
        for run in runs:
            kept = self._kept.pop(run, None)
            if kept is not None:
                return run, kept
        return None

    def _expire(self) -> None:
        now = time.monotonic()
        while self._kept and next(iter(self._kept.values())).until <= now:
            self._kept.popitem(last=False)
