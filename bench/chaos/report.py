"""The campaign's figures and its violations, as printed and as written into docs/reliability.md."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.checker import Violation, windows
from bench.chaos.driver import Campaign
from bench.chaos.history import History, read_lines
from bench.chaos.plan import Plan

NOOP_NOTES = ("nothing killed", "no worker running", "injection failed")


@dataclass
class Figures:
    faults: Counter[str] = field(default_factory=Counter)
    """Injected faults by kind (one that found nothing to hit, e.g. no work-horse, is not counted)."""
    missed: int = 0
    tasks: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    runs: int = 0
    completed_runs: int = 0
    interrupted: int = 0
    """Interrupted attempts recorded in results (each ran again)."""
    cancels: Counter[str] = field(default_factory=Counter)
    resubmits: int = 0
    pauses: int = 0
    worker_exits: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, history: History, directory: Path) -> Figures:
        figures = cls()
        for fault in history.faults:
            if any(note in fault.note for note in NOOP_NOTES):
                figures.missed += 1
            else:
                figures.faults[fault.kind] += 1
        figures.tasks = len({submit.task_id for submit in history.submits})
        figures.statuses = Counter(outcome.status or "gone with Redis's data" for outcome in history.outcomes.values())
        figures.runs = len(history.runs)
        figures.completed_runs = sum(1 for run in history.runs if run.end is not None)
        figures.interrupted = sum(outcome.attempts for outcome in history.outcomes.values())
        figures.cancels = Counter(cancel.outcome for cancel in history.cancels)
        figures.resubmits = len(history.resubmits)
        figures.pauses = len(history.pauses)
        for event in read_lines(directory / "services.jsonl"):
            if event.get("ev") == "exit":
                figures.worker_exits[f"{event['service']} exit {event['code']}"] += 1
        return figures

    def lines(self) -> list[str]:
        faults = ", ".join(f"{kind} {count}" for kind, count in sorted(self.faults.items())) or "none"
        statuses = ", ".join(f"{count} {status}" for status, count in sorted(self.statuses.items()))
        cancels = ", ".join(f"{count} {outcome}" for outcome, count in sorted(self.cancels.items())) or "none"
        exits = ", ".join(f"{what} x{count}" for what, count in sorted(self.worker_exits.items())) or "none"
        return [
            f"faults injected: {sum(self.faults.values())} ({faults}); {self.missed} found nothing to hit",
            f"tasks: {self.tasks} submitted: {statuses}",
            f"runs: {self.runs} started, {self.completed_runs} ran to their end; {self.interrupted} interrupted attempts",
            f"user actions: cancels ({cancels}), {self.resubmits} keyed resubmits, {self.pauses} pauses",
            f"services exiting on their own (restarted by the supervisor): {exits}",
        ]


def log_excerpt(directory: Path, violation: Violation, limit: int = 12) -> list[str]:
    """The service log lines that name the violation's tasks: what the worker and the handler said of them.
    A line said again and again (a stale worker handing a job back in a loop) is shown once, with its count."""
    ids = [task_id for task_id in (violation.task_id, *violation.others) if task_id]
    found: dict[str, list[str]] = {}
    for log in sorted((directory / "logs").glob("*.log")):
        if log.stem.startswith("orch") or log.stem == "redis":
            continue
        for line in log.read_text(errors="replace").splitlines():
            if any(task_id in line for task_id in ids):
                message = f"{log.stem}: {line.strip()[24:]}"  # without its timestamp
                found.setdefault(message, []).append(f"{log.stem}: {line.strip()}")
    shown = [lines[0] + (f"  (x{len(lines)}, until {lines[-1].split()[2]})" if len(lines) > 1 else "")
             for lines in found.values()]  # fmt: skip
    return shown[:limit] + ([f"… {len(shown) - limit} more"] if len(shown) > limit else [])


def faults_around(history: History, violation: Violation, margin: float = 5.0) -> str:
    """The faults that were on (give or take ``margin`` seconds) at the violation's moment."""
    if violation.at is None:
        return ""
    near = [
        f"{f.kind} on {f.target} +{f.began - history.t0:.1f}–{f.ended - history.t0:.1f} s"
        for f in history.faults
        if f.began - margin <= violation.at <= f.ended + margin
    ]
    return "faults then: " + ("; ".join(near) if near else "none")


def schedule(plan: Plan) -> list[str]:
    """The faults as planned: what a seed gives back."""
    return [
        f"  +{fault.at:7.1f} s  {fault.kind:<18} {fault.target:<9} {fault.duration:6.1f} s {fault.variant}".rstrip()
        for fault in plan.faults
    ]


def render(campaign: Campaign) -> str:
    assert campaign.history is not None
    options = campaign.options
    lines = [f"seed {options.seed}: {len(campaign.violations)} violation(s)   (again: {options.command()})"]
    lines += ["  " + line for line in Figures.of(campaign.history, campaign.directory).lines()]
    if campaign.leftovers:
        lines.append(f"  task processes left running after everything stopped: {campaign.leftovers}")
    counted = Counter(violation.kind for violation in campaign.violations)
    if counted:
        lines.append("  violations: " + ", ".join(f"{kind} {count}" for kind, count in sorted(counted.items())))
    for violation in campaign.violations:
        lines.append(f"  - [{violation.kind}] {violation.sentence}")
        around = faults_around(campaign.history, violation)
        lines += [f"      {around}"] if around else []
        lines += [f"      {line}" for line in log_excerpt(campaign.directory, violation)]
    for window in windows(campaign.history):
        lines.append(f"  - [{window.kind}; the documented at-least-once window, not a violation] {window.sentence}")
        around = faults_around(campaign.history, window)
        lines += [f"      {around}"] if around else []
    lines.append(f"  history, logs and plan: {campaign.directory}")
    return "\n".join(lines)
