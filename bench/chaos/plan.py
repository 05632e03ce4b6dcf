"""The campaign's schedule, made from its seed alone: the faults, each orchestrator's work and user actions.

Everything here is a pure function of ``(seed, minutes, faults, …)``, so a failing seed gives back the very
same schedule; only what the faults meet (which task a killed work-horse was running, say) depends on timing.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

# Fault kinds.
PARTITION = "partition"  # a worker machine's cable unplugged
STOP_WORKER = "stop-worker"  # SIGSTOP on the worker process only (its work-horse goes on)
STOP_WITH_HORSE = "stop-worker+horse"  # SIGSTOP on the worker and its work-horse
KILL_WORKER = "kill-worker"  # SIGKILL on the worker; its supervisor starts it again (as --standby)
KILL_HORSE = "kill-horse"  # SIGKILL on the work-horse alone (what the OOM killer does)
KILL_HANDLER = "kill-handler"  # SIGKILL on the handler, restarted on the same port
TERM_HANDLER = "term-handler"  # SIGTERM (docker stop), restarted on the same port
RESTART_REDIS = "restart-redis"  # Redis stopped (SIGTERM or SIGKILL) and started again on its append-only file
WIPE_REDIS = "wipe-redis"  # Redis restarted with its data deleted (only with --lossy-redis)

WORKER_FAULTS = (PARTITION, STOP_WORKER, STOP_WITH_HORSE, KILL_WORKER, KILL_HORSE)
KINDS = (*WORKER_FAULTS, KILL_HANDLER, TERM_HANDLER, RESTART_REDIS, WIPE_REDIS)

# How often each kind is drawn: the faults that test the lock and the lease (partitions, pauses) most.
WEIGHTS = {
    PARTITION: 4,
    STOP_WORKER: 2,
    STOP_WITH_HORSE: 2,
    KILL_WORKER: 2,
    KILL_HORSE: 2,
    KILL_HANDLER: 2,
    TERM_HANDLER: 1,
    RESTART_REDIS: 2,
    WIPE_REDIS: 1,
}

# Seconds a fault lasts (partition, SIGSTOP) or the service stays down before its restart.
DURATIONS = {
    PARTITION: (5.0, 120.0),
    STOP_WORKER: (5.0, 90.0),
    STOP_WITH_HORSE: (5.0, 90.0),
    KILL_WORKER: (1.0, 10.0),
    KILL_HORSE: (0.0, 0.0),
    KILL_HANDLER: (0.5, 5.0),
    TERM_HANDLER: (0.5, 5.0),
    RESTART_REDIS: (0.5, 10.0),
    WIPE_REDIS: (0.5, 5.0),
}

WORKERS = ("worker-1", "worker-2")
WARM_UP = 5.0
"""Seconds of clean running before the first fault: the stack serves a few tasks first."""

# User actions.
CANCEL = "cancel"
PAUSE = "pause"
RESUME = "resume"
RESUBMIT = "resubmit"


@dataclass(frozen=True)
class Fault:
    at: float
    """Seconds after the campaign's start."""
    kind: str
    target: str
    """The machine it hits: worker-1, worker-2, handler or redis."""
    duration: float
    variant: str = ""
    """RESTART_REDIS: the signal that stops it (SIGTERM or SIGKILL)."""


@dataclass(frozen=True)
class TaskPlan:
    label: str
    seconds: float
    lines: int
    chain: str | None = None
    order: int = 0
    """Its place in its chain (0: the head, or an independent task)."""
    after: str | None = None
    """The label of the task it is submitted ``after``."""


@dataclass(frozen=True)
class Step:
    """One thing an orchestrator does at ``at`` seconds: submit ``task``, or a user action."""

    at: float
    action: str
    task: TaskPlan | None = None


@dataclass
class Plan:
    seed: int
    minutes: float
    faults: list[Fault]
    orchestrators: list[list[Step]] = field(default_factory=list)
    requested: int = 0
    """The faults asked for (a few may not fit: see :func:`_faults`); with the seed, what gives back the plan."""
    lossy_redis: bool = False

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        steps = [
            [Step(s["at"], s["action"], TaskPlan(**s["task"]) if s["task"] else None) for s in steps]
            for steps in data["orchestrators"]
        ]
        faults = [Fault(**f) for f in data["faults"]]
        return cls(data["seed"], data["minutes"], faults, steps, data["requested"], data["lossy_redis"])


def make_plan(seed: int, minutes: float, faults: int, orchestrators: int = 2, lossy_redis: bool = False) -> Plan:
    """The whole schedule of a campaign of ``minutes`` with about ``faults`` faults, from ``seed`` alone."""
    rng = random.Random(seed)
    plan = Plan(seed, minutes, _faults(rng, minutes * 60, faults, lossy_redis), [], faults, lossy_redis)
    plan.orchestrators = [_work(rng, index, minutes * 60) for index in range(orchestrators)]
    _race_user_actions(rng, plan)
    for steps in plan.orchestrators:
        steps.sort(key=lambda step: step.at)
    return plan


def _target(rng: random.Random, kind: str) -> str:
    if kind in WORKER_FAULTS:
        # The first worker serves at the start and after its own restarts, so it is hit more often.
        return rng.choices(WORKERS, weights=(3, 2))[0]
    return "redis" if kind in (RESTART_REDIS, WIPE_REDIS) else "handler"


def _faults(rng: random.Random, seconds: float, count: int, lossy_redis: bool) -> list[Fault]:
    """``count`` faults over the campaign; one at a time per machine, each over before the campaign ends."""
    kinds = [kind for kind in KINDS if lossy_redis or kind != WIPE_REDIS]
    last = max(WARM_UP + 1, seconds - 3)
    starts = sorted(rng.uniform(WARM_UP, last) for _ in range(count))
    busy_until: dict[str, float] = {}
    planned: list[Fault] = []
    for at in starts:
        kind = rng.choices(kinds, weights=[WEIGHTS[kind] for kind in kinds])[0]
        target = _target(rng, kind)
        low, high = DURATIONS[kind]
        duration = rng.uniform(low, high)
        variant = rng.choice(("SIGTERM", "SIGKILL")) if kind == RESTART_REDIS else ""
        at = max(at, busy_until.get(target, 0.0) + rng.uniform(1.0, 5.0))
        if at + low > seconds - 1:
            continue  # no room left on this machine: the schedule stays what the seed says, one fault fewer
        duration = round(min(duration, seconds - 1 - at), 2)
        planned.append(Fault(round(at, 2), kind, target, duration, variant))
        busy_until[target] = at + duration
    return sorted(planned, key=lambda fault: fault.at)


def _task(
    rng: random.Random, label: str, chain: str | None = None, order: int = 0, after: str | None = None
) -> TaskPlan:
    # Most tasks are short and a few run for seconds (0.1–3 s), so queues build up and drain again.
    seconds = round(0.1 + 2.9 * rng.random() ** 3, 3)
    return TaskPlan(label, seconds, rng.randint(1, 5), chain, order, after)


def _work(rng: random.Random, index: int, seconds: float) -> list[Step]:
    """One orchestrator's submits (independent tasks and chains) and its own user actions."""
    steps: list[Step] = []
    number = 0
    at = rng.uniform(0.5, 2.0)
    while at < seconds:
        if rng.random() < 0.35:
            chain = f"o{index}-c{number}"
            previous: str | None = None
            offset = 0.0
            for order in range(rng.randint(2, 4)):
                label = f"{chain}-{order}"
                steps.append(Step(round(at + offset, 3), "submit", _task(rng, label, chain, order, previous)))
                previous = label
                offset += rng.uniform(0.0, 3.0)  # a dependent may come after its predecessor ended
        else:
            steps.append(Step(round(at, 3), "submit", _task(rng, f"o{index}-t{number}")))
        number += 1
        at += rng.uniform(2.0, 10.0)
    steps += _actions(rng, index, seconds)
    return steps


def _actions(rng: random.Random, index: int, seconds: float) -> list[Step]:
    steps: list[Step] = []
    for action, low, high in ((CANCEL, 8.0, 30.0), (RESUBMIT, 8.0, 30.0)):
        at = rng.uniform(low, high)
        while at < seconds:
            steps.append(Step(round(at, 3), action))
            at += rng.uniform(low, high)
    if index == 0:  # one orchestrator pauses and resumes, so each pause has its own resume
        at = rng.uniform(20.0, 60.0)
        while at < seconds - 20:
            length = rng.uniform(1.0, 15.0)
            steps += [Step(round(at, 3), PAUSE), Step(round(at + length, 3), RESUME)]
            at += length + rng.uniform(30.0, 90.0)
    return steps


def _race_user_actions(rng: random.Random, plan: Plan) -> None:
    """A cancel or a resubmit right at about half the faults' start, to race the fault itself."""
    for fault in plan.faults:
        if rng.random() < 0.5:
            index = rng.randrange(len(plan.orchestrators))
            at = round(max(0.5, fault.at + rng.uniform(-1.0, 3.0)), 3)
            plan.orchestrators[index].append(Step(at, rng.choice((CANCEL, RESUBMIT))))
