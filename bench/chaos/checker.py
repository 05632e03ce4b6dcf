"""The history checker: a pure function from a :class:`~bench.chaos.history.History` to its violations.

It knows nothing of processes or Redis; every rule is a claim of the README's *Guarantees* made checkable
from what the children, the orchestrators and the driver wrote down:

* every task submitted ends (nothing lost), and runs to its end at most once (nothing twice);
* a cancelled task never starts again; a cancel is the only reason a task is cancelled, besides its
  predecessor failing or being cancelled (a cancel stops the line);
* a task never fails for an infrastructure reason before it ran, and a run that ended normally is never
  recorded as failed (the real result is kept);
* two runs of one queue never overlap; tasks start in submission order, chains in chain order;
* a keyed resubmit never makes a second task; nothing new starts while the queue is paused.

The documented outcomes of a fault are not violations: a task whose work-horse was killed fails (row 1b
of docs/reliability.md), and its dependents are cancelled. Nor is the one documented at-least-once window, a
run stopped in the moment between its child's own end and its exit (:func:`windows` lists those apart).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field

from bench.chaos import plan
from bench.chaos.history import History, Outcome, Run, Submit

LOST = "lost"
ENDED_TWICE = "ended twice"
RUN_AFTER_CANCEL = "ran after cancel"
INFRA_FAILURE = "failed without a run"
OVERLAP = "overlapping runs"
ORDER = "order broken"
UNEXPLAINED_CANCEL = "cancelled by nobody"
RESULT_REFUSED = "real result refused"
PHANTOM = "finished without a run"
DUPLICATE_KEY = "duplicate by key"
STARTED_WHILE_PAUSED = "started while paused"
EXIT_WINDOW = "ended twice, stopped as it exited"
"""Not a violation: see :data:`EXIT_WINDOW_SECONDS`."""

KINDS = (
    LOST, ENDED_TWICE, RUN_AFTER_CANCEL, INFRA_FAILURE, OVERLAP, ORDER, UNEXPLAINED_CANCEL, RESULT_REFUSED,
    PHANTOM, DUPLICATE_KEY, STARTED_WHILE_PAUSED,
)  # fmt: skip

ENDED = frozenset({"finished", "failed", "cancelled"})
HORSE_DIED = "work-horse) died"
"""In the error of a task whose work-horse died (runner/worker.py), copied so the checker stays plain data."""
CANCEL_GRACE = 1.0
"""Seconds after a cancel of a running task during which the attempt in flight may still mark itself started."""
EXIT_WINDOW_SECONDS = 0.5
"""A child that has done its work and written its end, then is stopped before its exit reaches the handler (the
handler or the worker killed within this many seconds after), leaves no outcome: the run was stopped, not
ended, and the task runs again. That window is the child's own exit, and it cannot be closed for an arbitrary
command (docs/reliability.md, "At least once, in one window")."""
STOPPING_FAULTS = (plan.KILL_HANDLER, plan.TERM_HANDLER, plan.KILL_WORKER)
PAUSE_GRACE = 1.0
"""Seconds after ``pause()`` returned during which a start is still allowed: the worker checks the pause
before it forks the work-horse, which then marks the task running; a pause landing in between is too late
for that task, by design. A start later than this means the pause was not honoured."""


@dataclass(frozen=True)
class Violation:
    kind: str
    task_id: str | None
    sentence: str
    others: tuple[str, ...] = ()
    """Other tasks involved (the other run of an overlap, the predecessor of an order violation)."""
    at: float | None = None
    """The moment that shows it (epoch seconds): the report names the faults around it."""


@dataclass
class _Index:
    """The history looked up by task: built once, read by every rule."""

    history: History
    submits: dict[str, Submit] = field(default_factory=dict)
    by_label: dict[str, str] = field(default_factory=dict)
    runs: dict[str, list[Run]] = field(default_factory=lambda: defaultdict(list))
    cancelled_by_user: set[str] = field(default_factory=set)
    horse_killed: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, history: History) -> _Index:
        index = cls(history)
        for submit in history.submits:
            index.submits.setdefault(submit.task_id, submit)
            index.by_label.setdefault(submit.label, submit.task_id)
        for run in history.runs:
            index.runs[index.by_label.get(run.label, run.label)].append(run)
        index.cancelled_by_user = {c.task_id for c in history.cancels if c.outcome in ("cancelled", "cancelling")}
        index.horse_killed = {task_id for task_id in index.submits if index._hit_by_horse_kill(task_id)}
        return index

    def _hit_by_horse_kill(self, task_id: str) -> bool:
        """Failed because its work-horse died, and a work-horse was killed while it waited or ran (one task
        runs at a time, so that was its own): the documented outcome of the fault, not a violation."""
        outcome, submit = self.outcome(task_id), self.submits[task_id]
        if outcome.status != "failed" or HORSE_DIED not in (outcome.error or ""):
            return False
        ended = outcome.ended if outcome.ended is not None else float("inf")
        # A kill fault looks for a work-horse for up to 5 s before it kills one: the kill is within its span.
        kills = [f for f in self.history.faults if f.kind == "kill-horse" and f.note.startswith("killed")]
        return any(f.began <= ended + 1 and submit.at - 1 <= f.ended for f in kills)

    def exempt(self, task_id: str | None) -> bool:
        """Submitted before Redis lost its data: its fate is not the product's to keep."""
        submit = self.submits.get(task_id or "")
        return submit is not None and any(submit.at < wipe for wipe in self.history.wipes)

    def stopped_as_it_exited(self, end: float) -> bool:
        """A handler or worker was stopped within :data:`EXIT_WINDOW_SECONDS` after a child's own end."""
        return any(f.kind in STOPPING_FAULTS and 0 <= f.began - end <= EXIT_WINDOW_SECONDS for f in self.history.faults)

    def outcome(self, task_id: str) -> Outcome:
        return self.history.outcomes.get(task_id) or Outcome(task_id, None)

    def completed(self, task_id: str) -> list[Run]:
        return [run for run in self.runs.get(task_id, []) if run.end is not None]

    def name(self, task_id: str) -> str:
        submit = self.submits.get(task_id)
        return f"{submit.label} ({task_id[:8]})" if submit else task_id

    def at(self, t: float) -> str:
        return f"+{t - self.history.t0:.1f} s"


def check(history: History) -> list[Violation]:
    """Every violation in ``history``, each with a sentence saying what happened."""
    index = _Index.of(history)
    rules = (
        _lost, _twice, _after_cancel, _infra_failures, _refused, _phantoms, _unexplained_cancels, _overlaps,
        _chain_order, _submitter_order, _keys, _pauses,
    )  # fmt: skip
    return [violation for rule in rules for violation in rule(index) if violation.kind != EXIT_WINDOW]


def _tasks(index: _Index) -> list[str]:
    return [task_id for task_id in index.submits if not index.exempt(task_id)]


def _lost(index: _Index) -> list[Violation]:
    found = []
    for task_id in _tasks(index):
        status = index.outcome(task_id).status
        if status not in ENDED:
            what = f"still {status}" if status else "unknown to Redis"
            submitted = index.at(index.submits[task_id].at)
            found.append(
                Violation(
                    LOST,
                    task_id,
                    f"{index.name(task_id)}, submitted at {submitted}, never ended ({what} once the queue had made "
                    "no progress for the drain's window).",
                )
            )
    return found


def windows(history: History) -> list[Violation]:
    """The tasks that ran to their end again only because an earlier run was stopped as it exited: the
    documented at-least-once window (:data:`EXIT_WINDOW_SECONDS`), reported apart from the violations."""
    return [v for v in _twice(_Index.of(history)) if v.kind == EXIT_WINDOW]


def _twice(index: _Index) -> list[Violation]:
    found = []
    for task_id in _tasks(index):
        ends = sorted(run.end for run in index.completed(task_id) if run.end is not None)
        outcome = index.outcome(task_id)
        if len(ends) > 1:
            at = ", ".join(index.at(end) for end in ends)
            why = f"; its result lists {outcome.attempts} interrupted attempt(s)" if outcome.attempts else ""
            sentence = f"{index.name(task_id)} ran to its end {len(ends)} times (at {at}){why}."
            stopped = all(index.stopped_as_it_exited(end) for end in ends[:-1])
            found.append(Violation(EXIT_WINDOW if stopped else ENDED_TWICE, task_id, sentence, at=ends[0]))
        if outcome.result_events > 1:
            sentence = f"{index.name(task_id)} has {outcome.result_events} result events in its log."
            found.append(Violation(ENDED_TWICE, task_id, sentence, at=outcome.ended))
    return found


def _after_cancel(index: _Index) -> list[Violation]:
    found = []
    for cancel in index.history.cancels:
        if index.exempt(cancel.task_id):
            continue
        name, outcome = index.name(cancel.task_id), index.outcome(cancel.task_id)
        children = [run.start for run in index.runs.get(cancel.task_id, [])]
        if cancel.outcome == "cancelled":  # it was waiting: it must never start, and end cancelled
            late = [t for t in (*children, *outcome.starts) if t > cancel.returned]
            if late:
                found.append(
                    Violation(
                        RUN_AFTER_CANCEL,
                        cancel.task_id,
                        f"{name} was cancelled while it waited (at {index.at(cancel.returned)}) but started at {index.at(min(late))}.",
                        at=min(late),
                    )
                )
            if outcome.status in ENDED and outcome.status != "cancelled":
                found.append(
                    Violation(
                        RUN_AFTER_CANCEL,
                        cancel.task_id,
                        f"{name} was cancelled while it waited (at {index.at(cancel.returned)}) but ended {outcome.status}.",
                        at=cancel.returned,
                    )
                )
        elif cancel.outcome == "cancelling":  # it was running: that attempt is stopped, and no other starts
            # The attempt in flight may mark itself started a moment after the cancel returned (its work-horse
            # was between RQ's start and ours), and its child may start later still: one of each is allowed.
            again = [t for t in outcome.starts if t > cancel.returned + CANCEL_GRACE]
            if len([t for t in children if t > cancel.began]) > 1 or again:
                found.append(
                    Violation(
                        RUN_AFTER_CANCEL,
                        cancel.task_id,
                        f"{name} was cancelled while it ran (at {index.at(cancel.returned)}) but started again{f' at {index.at(min(again))}' if again else ''}.",
                        at=cancel.returned,
                    )
                )
    return found


def _infra_failures(index: _Index) -> list[Violation]:
    found = []
    for task_id in _tasks(index):
        outcome = index.outcome(task_id)
        if outcome.status == "failed" and not index.runs.get(task_id) and task_id not in index.horse_killed:
            found.append(
                Violation(
                    INFRA_FAILURE,
                    task_id,
                    f"{index.name(task_id)} failed without ever running: {outcome.error}",
                    at=outcome.ended,
                )
            )
    return found


def _refused(index: _Index) -> list[Violation]:
    found = []
    for task_id in _tasks(index):
        outcome, completed = index.outcome(task_id), index.completed(task_id)
        if outcome.status == "failed" and completed and task_id not in index.horse_killed:
            ended = index.at(completed[-1].end or 0.0)
            found.append(
                Violation(
                    RESULT_REFUSED,
                    task_id,
                    f"{index.name(task_id)} ran to its end at {ended} but its result is failed: {outcome.error}",
                    at=completed[-1].end,
                )
            )
    return found


def _phantoms(index: _Index) -> list[Violation]:
    found = []
    for task_id in _tasks(index):
        if index.outcome(task_id).status == "finished" and not index.completed(task_id):
            found.append(
                Violation(
                    PHANTOM, task_id, f"{index.name(task_id)} is recorded as finished but no run of it reached its end."
                )
            )
    return found


def _unexplained_cancels(index: _Index) -> list[Violation]:
    found = []
    for task_id in _tasks(index):
        outcome = index.outcome(task_id)
        if outcome.status != "cancelled" or task_id in index.cancelled_by_user:
            continue
        after = index.submits[task_id].after
        if after is not None and (index.exempt(after) or index.outcome(after).status in ("failed", "cancelled")):
            continue  # its predecessor did not succeed: the line stops there
        why = (
            f"its predecessor {index.name(after)} ended {index.outcome(after).status}"
            if after
            else "it has no predecessor"
        )
        found.append(
            Violation(
                UNEXPLAINED_CANCEL,
                task_id,
                f"{index.name(task_id)} was cancelled ({outcome.error}) though nobody cancelled it and {why}.",
                (after,) if after else (),
                at=outcome.ended,
            )
        )
    return found


def _overlaps(index: _Index) -> list[Violation]:
    """Two runs at once: a run that found the queue's run lock held, or two recorded intervals that intersect."""
    found: list[Violation] = []
    seen: set[tuple[str, str]] = set()

    def report(first: str, second: str, at: float) -> None:
        if (first, second) in seen:
            return
        seen.add((first, second))
        a, b = index.by_label.get(first, first), index.by_label.get(second, second)
        found.append(
            Violation(
                OVERLAP,
                b,
                f"{index.name(b)} started at {index.at(at)} while {index.name(a)} was still running: two runs of one queue at once.",
                (a,),
                at=at,
            )
        )

    latest: Run | None = None
    for run in index.history.runs:  # sorted by start
        if run.busy_with and run.busy_with != run.label:
            report(run.busy_with, run.label, run.start)
        if latest is not None and latest.end is not None and run.start < latest.end and latest.label != run.label:
            report(latest.label, run.label, run.start)
        if run.end is not None and (latest is None or latest.end is None or run.end > latest.end):
            latest = run
    return found


def _before(index: _Index, first: str, second: str, why: str) -> Violation | None:
    """A violation when ``second`` started before ``first`` ended, both having run to their end."""
    ends, starts = index.completed(first), index.runs.get(second, [])
    if not ends or not index.completed(second):
        return None
    first_end, second_start = ends[0].end or 0.0, min(run.start for run in starts)
    if second_start >= first_end:
        return None
    sentence = f"{index.name(second)} started at {index.at(second_start)}, before {index.name(first)} ended at {index.at(first_end)} ({why})."
    return Violation(ORDER, second, sentence, (first,), at=second_start)


def _chain_order(index: _Index) -> list[Violation]:
    found = []
    chains: dict[str, list[Submit]] = defaultdict(list)
    for task_id in _tasks(index):
        submit = index.submits[task_id]
        if submit.chain:
            chains[submit.chain].append(submit)
    for members in chains.values():
        members.sort(key=lambda submit: submit.order)
        for first, second in itertools.pairwise(members):
            if index.runs.get(second.task_id) and index.outcome(first.task_id).status != "finished":
                sentence = f"{index.name(second.task_id)} ran though its predecessor {index.name(first.task_id)} ended {index.outcome(first.task_id).status}."
                starts = [run.start for run in index.runs[second.task_id]]
                found.append(Violation(ORDER, second.task_id, sentence, (first.task_id,), at=min(starts)))
                continue
            violation = _before(index, first.task_id, second.task_id, f"it is next in chain {first.chain}")
            if violation:
                found.append(violation)
    return found


def _submitter_order(index: _Index) -> list[Violation]:
    """Tasks submitted without ``after`` by one orchestrator start in the order it submitted them."""
    found = []
    sequences: dict[int, list[Submit]] = defaultdict(list)
    for task_id in _tasks(index):
        submit = index.submits[task_id]
        if submit.after is None and index.completed(task_id):
            sequences[submit.submitter].append(submit)
    for submitter, sequence in sequences.items():
        sequence.sort(key=lambda submit: submit.at)
        for first, second in itertools.pairwise(sequence):
            violation = _before(index, first.task_id, second.task_id, f"orchestrator {submitter} submitted it first")
            if violation:
                found.append(violation)
    return found


def _keys(index: _Index) -> list[Violation]:
    return [
        Violation(
            DUPLICATE_KEY,
            r.got,
            f"a resubmit with key {r.key!r} at {index.at(r.at)} returned task {r.got[:8]}, not {index.name(r.expected)}, which the key names.",
            (r.expected,),
        )
        for r in index.history.resubmits
        if r.got != r.expected and not index.exempt(r.expected)
    ]


def _pauses(index: _Index) -> list[Violation]:
    found = []
    for pause in index.history.pauses:
        if any(pause.paused <= wipe <= pause.resumed for wipe in index.history.wipes):
            continue  # Redis lost the pause with everything else
        for task_id, outcome in index.history.outcomes.items():
            for start in outcome.starts:
                if pause.paused + PAUSE_GRACE < start < pause.resumed:
                    found.append(
                        Violation(
                            STARTED_WHILE_PAUSED,
                            task_id,
                            f"{index.name(task_id)} started at {index.at(start)} while the queue was paused (from {index.at(pause.paused)} to {index.at(pause.resumed)}).",
                            at=start,
                        )
                    )
    return found
