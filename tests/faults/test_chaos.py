"""The fault campaign (``python -m bench chaos``): its checker on hand-made histories, its plan, and a short
campaign against the real stack in network namespaces, which must find nothing."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest

from bench.chaos import checker, driver
from bench.chaos.checker import check
from bench.chaos.history import Cancel, FaultRecord, History, Outcome, Pause, Resubmit, Run, Submit, load, runs_of
from bench.chaos.plan import make_plan
from bench.chaos.report import Figures, render

T0 = 1000.0


def task(label: str, at: float, submitter: int = 0, chain: str | None = None, order: int = 0,
         after: str | None = None) -> Submit:  # fmt: skip
    return Submit(label, f"id-{label}", submitter, T0 + at, chain, order, label, after and f"id-{after}")


def ran(label: str, start: float, end: float | None, busy_with: str | None = None) -> Run:
    return Run(label, int(start * 100), T0 + start, None if end is None else T0 + end, busy_with)


def ended(label: str, status: str = "finished", starts: tuple[float, ...] = (), error: str | None = None,
          results: int = 1, at: float | None = None) -> Outcome:  # fmt: skip
    return Outcome(f"id-{label}", status, error, False, 0, results, tuple(T0 + s for s in starts),
                   None if at is None else T0 + at)  # fmt: skip


def clean() -> History:
    """Two orchestrators; a chain a0 → a1 → a2 and independent tasks b, c; a keyed resubmit; a pause."""
    history = History(T0)
    history.submits = [
        task("a0", 0, chain="a", order=0), task("b", 1), task("a1", 2, chain="a", order=1, after="a0"),
        task("c", 3, submitter=1), task("a2", 4, chain="a", order=2, after="a1"),
    ]  # fmt: skip
    history.runs = [ran("a0", 1, 2), ran("b", 2.5, 3), ran("c", 3.5, 4), ran("a1", 4.5, 5), ran("a2", 6, 7)]
    history.outcomes = {
        o.task_id: o
        for o in (ended("a0", starts=(0.9,)), ended("b", starts=(2.4,)), ended("c", starts=(3.4,)),
                  ended("a1", starts=(4.4,)), ended("a2", starts=(5.9,)))
    }  # fmt: skip
    history.resubmits = [Resubmit("b", "id-b", "id-b", T0 + 5)]
    history.pauses = [Pause(T0 + 5.05, T0 + 5.8)]
    return history


def kinds(history: History) -> list[str]:
    return [violation.kind for violation in check(history)]


def test_a_clean_history_passes() -> None:
    assert check(clean()) == []


def test_a_task_that_never_ended_is_lost() -> None:
    history = clean()
    history.outcomes["id-b"] = Outcome("id-b", "queued")
    history.outcomes.pop("id-c")
    found = check(history)
    assert [(v.kind, v.task_id) for v in found] == [(checker.LOST, "id-b"), (checker.LOST, "id-c")]
    assert "never ended (still queued once the queue had made no progress" in found[0].sentence


def test_a_task_that_ran_to_its_end_twice_or_has_two_results_ended_twice() -> None:
    history = clean()
    history.runs.append(ran("c", 8, 9))
    history.outcomes["id-a2"] = ended("a2", results=2)
    assert kinds(history) == [checker.ENDED_TWICE, checker.ENDED_TWICE]


def test_a_run_stopped_as_its_child_exited_is_the_documented_window_not_a_violation() -> None:
    """c's child wrote its end at +4.0; the handler was SIGKILLed 0.3 s later, before the exit reached it: the
    run counts as stopped and c runs again. That is the one documented at-least-once window, listed apart;
    0.6 s later it is not (the handler had the exit by then: its outcome must be kept)."""
    history = clean()
    history.runs.append(ran("c", 8, 9))
    history.faults = [FaultRecord("kill-handler", "handler", T0 + 4.3, T0 + 6)]
    assert check(history) == []
    assert [(v.kind, v.task_id) for v in checker.windows(history)] == [(checker.EXIT_WINDOW, "id-c")]
    history.faults = [FaultRecord("kill-handler", "handler", T0 + 4.6, T0 + 6)]
    assert kinds(history) == [checker.ENDED_TWICE] and checker.windows(history) == []


def test_a_run_after_a_cancel_is_reported() -> None:
    history = clean()
    history.cancels = [Cancel("id-c", T0 + 3.0, T0 + 3.1, "cancelled")]  # c said cancelled, then ran
    assert kinds(history) == [checker.RUN_AFTER_CANCEL, checker.RUN_AFTER_CANCEL]  # it started, and finished
    history.cancels = [Cancel("id-b", T0 + 2.6, T0 + 2.7, "cancelling")]
    history.runs.append(ran("b", 8, None))  # stopped, then started again
    history.outcomes["id-b"] = ended("b", "cancelled", starts=(2.4, 7.9))
    assert kinds(history) == [checker.RUN_AFTER_CANCEL]


def test_a_failure_without_a_run_is_reported_unless_a_killed_work_horse_explains_it() -> None:
    history = clean()
    history.submits.append(task("d", 8))
    error = "The process running this task (the worker's work-horse) died before the task finished"
    history.outcomes["id-d"] = ended("d", "failed", error=error, at=9)
    found = check(history)
    assert [v.kind for v in found] == [checker.INFRA_FAILURE] and error in found[0].sentence
    history.faults = [FaultRecord("kill-horse", "worker-1", T0 + 8.5, T0 + 8.5, note="killed work-horse 42")]
    assert check(history) == []
    # The fault began looking for a work-horse before d was submitted, and killed d's.
    history.faults = [FaultRecord("kill-horse", "worker-1", T0 + 7.0, T0 + 8.1, note="killed work-horse 42")]
    assert check(history) == []
    history.faults = [FaultRecord("kill-horse", "worker-1", T0 + 5.0, T0 + 5.1, note="killed work-horse 42")]
    assert kinds(history) == [checker.INFRA_FAILURE]  # that kill was over before d was submitted
    history.outcomes["id-d"] = ended("d", "failed", error="The handler was unreachable for 30 s", at=9)
    assert kinds(history) == [checker.INFRA_FAILURE]


def test_a_run_that_ended_but_a_failed_result_is_a_refused_result() -> None:
    history = clean()
    history.outcomes["id-b"] = ended("b", "failed", error="The worker running this task died")
    assert kinds(history) == [checker.RESULT_REFUSED]


def test_finished_without_any_run_reaching_its_end_is_a_phantom() -> None:
    history = clean()
    history.runs = [run for run in history.runs if run.label != "c"] + [ran("c", 3.5, None)]
    history.runs.sort(key=lambda run: run.start)
    assert kinds(history) == [checker.PHANTOM]


def test_a_cancel_nobody_asked_for_is_reported_a_predecessors_failure_explains_one() -> None:
    history = clean()
    history.runs = [run for run in history.runs if run.label != "a2"]
    history.outcomes["id-a2"] = ended("a2", "cancelled", error="Not run")
    found = check(history)
    assert [v.kind for v in found] == [checker.UNEXPLAINED_CANCEL]
    assert "its predecessor a1 (id-a1) ended finished" in found[0].sentence
    history.runs = [run for run in history.runs if run.label != "a1"]
    history.outcomes["id-a1"] = ended("a1", "cancelled", error="cancelled by a user")
    history.cancels = [Cancel("id-a1", T0 + 3, T0 + 3.1, "cancelled")]
    assert check(history) == []  # a1 was cancelled by a user; a2 follows it: the line stops


def test_two_runs_at_once_are_an_overlap_by_their_intervals_or_by_the_run_lock() -> None:
    history = clean()
    history.runs = sorted([*history.runs, ran("x", 2.8, 3.2)], key=lambda run: run.start)
    found = check(history)
    assert [v.kind for v in found] == [checker.OVERLAP] and "x started at +2.8 s while b" in found[0].sentence
    history = clean()
    history.runs = sorted([*history.runs, ran("y", 9, None, busy_with="a2")], key=lambda run: run.start)
    assert kinds(history) == [checker.OVERLAP]  # a2's interval is closed, but its process held the lock


def test_a_chain_or_a_submitters_order_broken_is_reported() -> None:
    history = clean()
    history.runs = sorted([*history.runs[:-1], ran("a2", 4.7, 7)], key=lambda run: run.start)
    found = {v.kind: v.sentence for v in check(history)}  # a2 started while a1 ran: also an overlap
    assert sorted(found) == [checker.ORDER, checker.OVERLAP] and "next in chain a" in found[checker.ORDER]
    history = clean()
    history.submits.append(task("e", 1.5))  # submitted after b by orchestrator 0, but ran before it
    history.runs = sorted([*history.runs, ran("e", 2.0, 2.4)], key=lambda run: run.start)
    history.outcomes["id-e"] = ended("e", starts=(1.9,))
    assert kinds(history) == [checker.ORDER]


def test_a_dependent_that_ran_though_its_predecessor_failed_breaks_the_chain() -> None:
    history = clean()
    history.outcomes["id-a1"] = ended("a1", "failed", error="exit 1")  # its run "ended" is the child's own
    history.runs = [run for run in history.runs if run.label != "a1"] + [ran("a1", 4.5, None)]
    history.runs.sort(key=lambda run: run.start)
    assert kinds(history) == [checker.ORDER]


def test_a_keyed_resubmit_that_made_a_second_task_is_a_duplicate() -> None:
    history = clean()
    history.resubmits.append(Resubmit("c", "id-c", "id-other", T0 + 6))
    assert kinds(history) == [checker.DUPLICATE_KEY]


def test_a_start_well_inside_a_pause_is_reported() -> None:
    history = clean()
    history.pauses = [Pause(T0 + 3.0, T0 + 8)]  # a1 and a2 started at +4.4 and +5.9 s
    assert kinds(history) == [checker.STARTED_WHILE_PAUSED, checker.STARTED_WHILE_PAUSED]
    history.pauses = [Pause(T0 + 5.3, T0 + 8)]  # a2 started within the grace: it had been handed out before
    assert check(history) == []


def test_tasks_submitted_before_redis_lost_its_data_are_not_expected_to_run() -> None:
    history = clean()
    history.outcomes = {key: value for key, value in history.outcomes.items() if key in ("id-a2",)}
    history.wipes = [T0 + 3.5]  # everything but a2 (submitted at +4) was submitted before
    assert check(history) == []


def test_the_history_is_read_from_its_files(tmp_path: Path) -> None:
    records = [
        {"ev": "start", "label": "a", "t": 1.0, "pid": 7, "busy": None},
        {"ev": "start", "label": "b", "t": 3.0, "pid": 8, "busy": "a"},
        {"ev": "end", "label": "a", "t": 2.0, "pid": 7},
    ]
    (tmp_path / "children.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + b'{"ev": "sta')
    orch = [
        {"ev": "submit", "label": "a", "id": "id-a", "key": "a", "t0": 0.5, "t1": 0.6},
        {"ev": "pause", "t0": 4.0, "t1": 4.1},
        {"ev": "resume", "t0": 5.0, "t1": 5.1},
        {"ev": "outcome", "id": "id-a", "status": "finished", "result_events": 1,
         "starts": ["2026-12-03T10:14:32.769Z"], "ended_at": "2026-12-03T10:14:33.000Z"},
    ]  # fmt: skip
    (tmp_path / "orch-0.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in orch))
    history = load(tmp_path, 0.0)
    assert history.runs == runs_of(records) == [Run("a", 7, 1.0, 2.0), Run("b", 8, 3.0, None, "a")]
    assert history.submits == [Submit("a", "id-a", 0, 0.6, key="a")]
    assert history.pauses == [Pause(4.1, 5.0)]
    assert history.outcomes["id-a"].ended == history.outcomes["id-a"].starts[0] + 0.231


def test_a_seed_gives_back_its_schedule() -> None:
    plan = make_plan(11, 15, 40)
    assert plan.to_dict() == make_plan(11, 15, 40).to_dict()
    assert plan.to_dict() != make_plan(12, 15, 40).to_dict()
    assert 30 <= len(plan.faults) <= 40
    for fault in plan.faults:
        assert fault.at >= 5 and fault.at + fault.duration <= plan.seconds - 1
    by_machine: dict[str, list[tuple[float, float]]] = {}
    for fault in plan.faults:
        by_machine.setdefault(fault.target, []).append((fault.at, fault.at + fault.duration))
    for spans in by_machine.values():  # one fault at a time per machine
        assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans))
    assert "wipe-redis" not in {fault.kind for fault in plan.faults}


# Seeds whose schedules the product gets through today. Their faults: worker and work-horse SIGKILLs, a
# SIGSTOP past the lock's TTL with a standby taking over (row 3d), Redis restarts (SIGTERM and SIGKILL on its
# append-only file), a handler SIGTERM, a short partition. Seeds with a handler SIGKILL, or a partition or a
# frozen work-horse longer than the handler's keepalive, are kept out for now: there a run whose child had
# ended is run again (docs/reliability.md, "Fault campaign").
SHORT_CAMPAIGNS = [
    250
]  # 153 passes too (python -m bench chaos --seed 153 --minutes 1.25 --faults 5); one keeps the suite short


@pytest.mark.timeout(420)
@pytest.mark.parametrize("seed", SHORT_CAMPAIGNS)
def test_a_short_campaign_finds_no_violation(tmp_path: Path, seed: int) -> None:
    """75 s of faults on the real stack in network namespaces, then the drain: the checker finds nothing,
    and nothing is left running."""
    campaign = driver.run(driver.Options(seed, minutes=1.25, faults=5, drain=150, drain_cap=300, directory=tmp_path))
    report = render(campaign)
    print(report)  # shown when the test fails: the seed, the figures, each violation with its log lines
    assert campaign.violations == [], report
    assert campaign.history is not None
    figures = Figures.of(campaign.history, tmp_path)
    assert sum(figures.faults.values()) >= 4, report
    assert figures.statuses["finished"] >= 10, report
    assert campaign.leftovers == 0, report
