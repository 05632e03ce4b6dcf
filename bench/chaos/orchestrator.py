"""One orchestrator of the campaign, run on its own machine: ``python -m bench.chaos.orchestrator CONFIG INDEX``.

It carries out its part of the plan at the planned times (submits, chains, cancels, pauses, keyed
resubmits) through :class:`runner.client.Runner`, as any orchestrator would, retrying through Redis
outages. Every submit carries a key, so a retry after an outage never makes a second task. Once the
campaign is over it waits for its tasks to end (while the queue makes progress) and writes what Redis says of
each. Everything it does is appended to ``orch-<INDEX>.jsonl``, one JSON object a line.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson
import redis

from bench.chaos.plan import CANCEL, PAUSE, RESUBMIT, RESUME, Plan, Step, TaskPlan
from runner import keys
from runner.client import Runner
from runner.errors import Unavailable

T = TypeVar("T")

# The task itself: records its start and end in the shared history, with whether another run of the queue
# held the run lock (an flock, released by the kernel however that run died) when it started.
CHILD = r"""
import fcntl, json, os, sys, time
label, history, lock_path, seconds, lines = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
def record(event, **extra):
    line = json.dumps({"ev": event, "label": label, "t": time.time(), "pid": os.getpid(), **extra}) + "\n"
    fd = os.open(history, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    with open(lock_path + ".holder") as holder:
        busy = holder.read()
else:
    busy = None
    with open(lock_path + ".holder", "w") as holder:
        holder.write(label)
record("start", busy=busy)
for i in range(lines):
    print(f"{label} line {i} of {lines}", flush=True)
    time.sleep(seconds / lines)
record("end")
"""

RETRY_FOR = 90.0
"""Seconds an orchestrator call is retried through a Redis outage (a restart is down for at most 10 s)."""


@dataclass
class Config:
    plan: Plan
    redis_url: str
    queue: str
    directory: str
    python: str
    marker: str
    """In every child's argv, so leftovers can be found by it."""
    t0: float
    submit_until: float
    drain_until: float
    drain_stall: float = 240.0

    @classmethod
    def read(cls, path: Path) -> Config:
        data = orjson.loads(path.read_bytes())
        return cls(**{**data, "plan": Plan.from_dict(data["plan"])})


@dataclass
class Orchestrator:
    config: Config
    index: int
    runner: Runner
    out: IO[bytes]
    rng: random.Random
    ids: dict[str, str] = field(default_factory=dict)
    """label → task id, in submit order."""
    specs: dict[str, tuple[list[str], str | None]] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)
    paused: bool = False

    def write(self, record: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(record) + b"\n")
        self.out.flush()

    def retrying(self, what: str, call: Callable[[], T]) -> T | None:
        """``call()``, tried again through Redis errors for :data:`RETRY_FOR` seconds; None if it never got through."""
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                return call()
            except (redis.RedisError, Unavailable) as exc:
                if time.monotonic() > deadline:
                    self.write({"ev": "error", "what": what, "error": str(exc), "t": time.time()})
                    return None
                time.sleep(0.5)
            except Exception as exc:  # a refused submit (its predecessor vanished), an unknown task: say so
                self.write({"ev": "error", "what": what, "error": f"{type(exc).__name__}: {exc}", "t": time.time()})
                return None

    def argv(self, task: TaskPlan) -> list[str]:
        d = self.config.directory
        return [self.config.python, "-c", CHILD, task.label, f"{d}/children.jsonl", f"{d}/run.lock",
                str(task.seconds), str(task.lines), self.config.marker]  # fmt: skip

    def submit(self, task: TaskPlan) -> None:
        after = self.ids.get(task.after) if task.after else None
        if task.after and after is None:
            self.write({"ev": "skipped", "label": task.label, "why": "its predecessor was never submitted"})
            return
        argv = self.argv(task)
        began = time.time()
        handle = self.retrying(
            f"submit {task.label}",
            lambda: self.runner.submit(agent="command", argv=argv, key=task.label, after=after, timeout=120),
        )
        if handle is None:
            return
        self.ids[task.label] = handle.id
        self.specs[task.label] = (argv, after)
        self.write({"ev": "submit", "label": task.label, "id": handle.id, "chain": task.chain, "order": task.order,
                    "key": task.label, "after": after, "t0": began, "t1": time.time()})  # fmt: skip

    def status(self, task_id: str) -> str | None:
        record = self.retrying("status", lambda: self.runner.get(task_id))
        return record.status if record else None

    def cancel(self) -> None:
        """Cancel one of its tasks that has not ended, a waiting one if it finds one among a few tried."""
        candidates = [task_id for task_id in self.ids.values() if task_id not in self.ended]
        self.rng.shuffle(candidates)
        chosen = None
        for task_id in candidates[:8]:
            status = self.status(task_id)
            if status in ("queued", "deferred"):
                chosen = task_id
                break
            if status in ("running", "queued", "deferred") and chosen is None:
                chosen = task_id
        if chosen is None:
            return
        began = time.time()
        outcome = self.retrying("cancel", lambda: self.runner.cancel(chosen, "cancelled by the chaos campaign"))
        if outcome is not None:
            self.write({"ev": "cancel", "id": chosen, "outcome": outcome, "t0": began, "t1": time.time()})

    def resubmit(self) -> None:
        """A retried submit with the key of an earlier one: it must return the same task."""
        if not self.ids:
            return
        label = self.rng.choice(list(self.ids))
        argv, after = self.specs[label]
        handle = self.retrying(
            f"resubmit {label}",
            lambda: self.runner.submit(agent="command", argv=argv, key=label, after=after, timeout=120),
        )
        if handle is not None:
            self.write(
                {"ev": "resubmit", "key": label, "expected": self.ids[label], "got": handle.id, "t": time.time()}
            )

    def pause(self) -> None:
        began = time.time()
        if self.retrying("pause", lambda: self.runner.pause("paused by the chaos campaign")) is not None:
            self.paused = True
            self.write({"ev": "pause", "t0": began, "t1": time.time()})

    def resume(self) -> None:
        if not self.paused:
            return
        began = time.time()
        if self.retrying("resume", self.runner.resume) is not None:
            self.paused = False
            self.write({"ev": "resume", "t0": began, "t1": time.time()})

    def do(self, step: Step) -> None:
        if step.action == "submit" and step.task is not None:
            self.submit(step.task)
        elif step.action == CANCEL:
            self.cancel()
        elif step.action == RESUBMIT:
            self.resubmit()
        elif step.action == PAUSE:
            self.pause()
        elif step.action == RESUME:
            self.resume()

    def work(self, steps: list[Step]) -> None:
        for step in steps:
            due = self.config.t0 + step.at
            if due > self.config.submit_until:
                break
            time.sleep(max(0.0, due - time.time()))
            self.do(step)
        self.resume()  # never leave the queue held: the drain needs it

    def drain(self) -> None:
        """Wait for every task to end while the queue makes progress (a task of ours ends, or the queue's length
        moves) within ``drain_stall`` seconds, up to the drain's deadline; then write what Redis says of each."""
        pending = [task_id for task_id in self.ids.values()]
        progress, length = time.time(), None
        while pending and time.time() < self.config.drain_until and time.time() - progress < self.config.drain_stall:
            still = [
                task_id for task_id in pending if self.status(task_id) not in ("finished", "failed", "cancelled", None)
            ]
            now_length = self.retrying("queue length", lambda: self.runner.redis.llen(self.runner.queue.key))
            if len(still) < len(pending) or now_length != length:
                progress = time.time()
            pending, length = still, now_length
            time.sleep(1.0)
        for task_id in self.ids.values():
            self.retrying("outcome", lambda task_id=task_id: self.write(self.outcome(task_id)))

    def outcome(self, task_id: str) -> dict[str, Any]:
        record = self.runner.get(task_id)
        logged = [orjson.loads(fields[b"e"]) for _, fields in self.runner.redis.xrange(keys.log_key(task_id))]
        result = record.result if record else None
        return {
            "ev": "outcome",
            "id": task_id,
            "status": record.status if record else None,
            "error": result.error if result else None,
            "interrupted": bool(result and result.interrupted),
            "attempts": len(result.attempts) if result else 0,
            "result_events": sum(1 for event in logged if event.get("type") == "result"),
            "starts": [event["at"] for event in logged if event.get("type") == "started"],
            "ended_at": result.ended_at if result else None,
        }


def main(argv: list[str]) -> int:
    config = Config.read(Path(argv[0]))
    index = int(argv[1])
    with open(Path(config.directory) / f"orch-{index}.jsonl", "ab") as out:
        orchestrator = Orchestrator(
            config, index, Runner(redis_url=config.redis_url, queue=config.queue), out,
            random.Random(f"{config.plan.seed}/{index}"),
        )  # fmt: skip
        orchestrator.work(config.plan.orchestrators[index])
        orchestrator.drain()
        orchestrator.write({"ev": "done", "t": time.time()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
