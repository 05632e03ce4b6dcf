"""Reading /proc: resident memory, CPU time and descendants of the stack's processes."""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field

_TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` in bytes, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size (shared pages split between sharers), 0 once gone or unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from every thread's ``children`` file)."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{tid}/children") as f:
            found.extend(int(p) for p in f.read().split())
    return found


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    stack = children(pid)
    while stack:
        child = stack.pop()
        out.append(child)
        stack.extend(children(child))
    return out


@dataclass(frozen=True)
class ProcStat:
    """CPU seconds (user, system) and minor page faults of a process and of the children it has reaped.

    A work-horse's counts reach its worker's ``children_*`` fields once the
    worker has waited for it, which is why these are read after a task ends.
    """

    user: float = 0.0
    system: float = 0.0
    faults: int = 0
    children_user: float = 0.0
    children_system: float = 0.0
    children_faults: int = 0

    @property
    def cpu(self) -> float:
        return self.user + self.system

    @property
    def children_cpu(self) -> float:
        return self.children_user + self.children_system

    def __sub__(self, other: ProcStat) -> ProcStat:
        return ProcStat(
            self.user - other.user,
            self.system - other.system,
            self.faults - other.faults,
            self.children_user - other.children_user,
            self.children_system - other.children_system,
            self.children_faults - other.children_faults,
        )


def proc_stat(pid: int) -> ProcStat:
    """``/proc/<pid>/stat``'s CPU times and minor faults (all zero once the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return ProcStat()
    # fields[0] is stat(5)'s field 3 (state): minflt, cminflt are fields 10-11, utime..cstime 14-17.
    minflt, cminflt = int(fields[7]), int(fields[8])
    utime, stime, cutime, cstime = (int(x) / _TICKS for x in fields[11:15])
    return ProcStat(utime, stime, minflt, cutime, cstime, cminflt)


@dataclass
class Peak:
    """Peak memory seen for one process (or one process plus its descendants)."""

    rss: int = 0
    pss: int = 0
    child_rss: int = 0
    """The largest single descendant (the work-horse), for trees."""
    samples: int = 0
    pids: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Target:
    """A process to sample: with its descendants summed (``tree``), with PSS too (``pss``, slower)."""

    pid: int
    tree: bool = False
    pss: bool = True


class RssSampler:
    """Samples VmRSS (and PSS) of named processes every ``interval`` seconds from a thread.

    A ``tree`` target sums a process and all its descendants (the worker and its
    work-horse); the peak of that sum is what is reported.
    """

    def __init__(self, targets: dict[str, Target], interval: float = 0.05) -> None:
        self.targets = targets
        self.interval = interval
        self.peaks = {name: Peak() for name in targets}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        for name, target in self.targets.items():
            pids = [target.pid, *descendants(target.pid)] if target.tree else [target.pid]
            rss = sum(rss_bytes(p) for p in pids)
            pss = sum(pss_bytes(p) for p in pids) if target.pss else 0
            peak = self.peaks[name]
            peak.samples += 1
            peak.pids.update(pids)
            peak.rss = max(peak.rss, rss)
            peak.pss = max(peak.pss, pss)
            for child in pids[1:]:
                peak.child_rss = max(peak.child_rss, rss_bytes(child))
