"""What a campaign recorded, as plain data: the checker's only input.

Four kinds of writers, each to its own append-only JSON-lines file in the campaign's directory:

* each task's child process (``children.jsonl``): its start and its end, with ``time.time()`` and its pid,
  and whether another child of the queue held the run lock when it started;
* each orchestrator (``orch-<n>.jsonl``): its submits, cancels, pauses, resumes and keyed resubmits, and at
  the end what Redis says of every task it submitted (the result, and the log's ``started``/``result`` events);
* the driver (``faults.jsonl``): every fault as it was injected;
* :func:`load` reads them all into a :class:`History`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson


@dataclass(frozen=True)
class Submit:
    label: str
    task_id: str
    submitter: int
    at: float
    """When the submit returned (epoch seconds)."""
    chain: str | None = None
    order: int = 0
    key: str | None = None
    after: str | None = None
    """The id of the task it was submitted after."""


@dataclass(frozen=True)
class Run:
    """One child process of a task, as it recorded itself."""

    label: str
    pid: int
    start: float
    end: float | None = None
    """None: it never reached its end (stopped, killed)."""
    busy_with: str | None = None
    """The label of another run of the queue that held the run lock when this one started."""


@dataclass(frozen=True)
class Outcome:
    """What Redis said of a task once the campaign and its drain were over."""

    task_id: str
    status: str | None
    """queued, deferred, running, finished, failed, cancelled; None: Redis has no record of it."""
    error: str | None = None
    interrupted: bool = False
    attempts: int = 0
    """Earlier attempts recorded in the result."""
    result_events: int = 0
    starts: tuple[float, ...] = ()
    """The ``started`` events of its log (one per attempt), epoch seconds."""
    ended: float | None = None
    """When its result says it ended, epoch seconds."""


@dataclass(frozen=True)
class Cancel:
    task_id: str
    began: float
    returned: float
    outcome: str
    """cancelled (it was waiting), cancelling (it was running) or ended."""


@dataclass(frozen=True)
class Pause:
    paused: float
    """When ``pause()`` returned."""
    resumed: float
    """When ``resume()`` was called."""


@dataclass(frozen=True)
class Resubmit:
    key: str
    expected: str
    got: str
    at: float


@dataclass(frozen=True)
class FaultRecord:
    kind: str
    target: str
    began: float
    ended: float
    task_id: str | None = None
    """KILL_HORSE, STOP_WITH_HORSE: the task the work-horse was running."""
    note: str = ""


@dataclass
class History:
    t0: float
    """The campaign's start: times in sentences are counted from it."""
    submits: list[Submit] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    cancels: list[Cancel] = field(default_factory=list)
    pauses: list[Pause] = field(default_factory=list)
    resubmits: list[Resubmit] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    wipes: list[float] = field(default_factory=list)
    """When Redis lost its data (--lossy-redis): tasks submitted before are not expected to run."""


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a torn last line (its writer was killed mid-write) is skipped."""
    if not path.exists():
        return
    for line in path.read_bytes().splitlines():
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError:
            continue


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def runs_of(records: list[dict[str, Any]]) -> list[Run]:
    """Each child's start paired with its end, by pid and label."""
    open_runs: dict[tuple[int, str], dict[str, Any]] = {}
    runs: list[Run] = []
    for record in sorted(records, key=lambda r: r["t"]):
        key = (record["pid"], record["label"])
        if record["ev"] == "start":
            open_runs[key] = record
        elif record["ev"] == "end" and key in open_runs:
            start = open_runs.pop(key)
            runs.append(Run(record["label"], record["pid"], start["t"], record["t"], start.get("busy")))
    runs += [Run(r["label"], r["pid"], r["t"], None, r.get("busy")) for r in open_runs.values()]
    return sorted(runs, key=lambda run: run.start)


def _orchestrator(history: History, records: list[dict[str, Any]], index: int) -> None:
    paused: float | None = None
    for r in records:
        ev = r["ev"]
        if ev == "submit":
            history.submits.append(
                Submit(
                    r["label"], r["id"], index, r["t1"], r.get("chain"), r.get("order", 0), r.get("key"), r.get("after")
                )
            )
        elif ev == "cancel":
            history.cancels.append(Cancel(r["id"], r["t0"], r["t1"], r["outcome"]))
        elif ev == "pause":
            paused = r["t1"]
        elif ev == "resume" and paused is not None:
            history.pauses.append(Pause(paused, r["t0"]))
            paused = None
        elif ev == "resubmit":
            history.resubmits.append(Resubmit(r["key"], r["expected"], r["got"], r["t"]))
        elif ev == "outcome":
            history.outcomes[r["id"]] = Outcome(
                r["id"], r.get("status"), r.get("error"), bool(r.get("interrupted")), r.get("attempts", 0),
                r.get("result_events", 0), tuple(epoch(at) for at in r.get("starts", ())),
                epoch(r["ended_at"]) if r.get("ended_at") else None,
            )  # fmt: skip


def load(directory: Path, t0: float) -> History:
    history = History(t0)
    for path in sorted(directory.glob("orch-*.jsonl")):
        _orchestrator(history, list(read_lines(path)), int(path.stem.split("-")[1]))
    history.runs = runs_of(list(read_lines(directory / "children.jsonl")))
    for r in read_lines(directory / "faults.jsonl"):
        history.faults.append(
            FaultRecord(r["kind"], r["target"], r["began"], r["ended"], r.get("task_id"), r.get("note", ""))
        )
        if r["kind"] == "wipe-redis":
            history.wipes.append(r["began"])
    return history
