"""Tasks for later and recurring tasks: they join the line when due, never jump it; cron entries fire."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from rq.registry import ScheduledJobRegistry

from runner import clock, keys, schedules
from runner.client import Runner
from runner.errors import SpecError
from runner.stack import LocalStack
from runner.vocabulary import Status
from tests.support.processes import wait_until

CCX = [sys.executable, "-m", "runner.cli"]


def test_due_time_reads_at_and_in() -> None:
    now = 1_790_000_000.0  # 2026-09-21
    assert schedules.due_time(None, None, now) is None
    assert schedules.due_time(None, 90, now) == now + 90
    assert schedules.due_time(None, 0, now) is None  # now is now: queued at once
    assert schedules.due_time("2027-01-15T08:00:00Z", None, now) == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    assert schedules.due_time(datetime(2027, 1, 15, 8), None, now) == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    assert schedules.due_time("2020-01-01T00:00:00Z", None, now) is None  # already past: queued at once
    for at, in_, message in (
        ("tomorrow", None, "'at' must be a time in ISO 8601"),
        (None, -5, "'in' must be a number of seconds"),
        ("2027-01-15T08:00:00Z", 5, "Give 'at' or 'in', not both"),
    ):
        with pytest.raises(SpecError, match=message):
            schedules.due_time(at, in_, now)


def test_delays_and_cron_expressions_are_checked_with_a_sentence() -> None:
    assert [schedules.parse_delay(t) for t in ("90", "90s", "10m", "2h", "1d")] == [90, 90, 600, 7200, 86400]
    with pytest.raises(SpecError, match="--in must be a delay such as 90"):
        schedules.parse_delay("soon")
    assert schedules.check_cron("0  3 * * *") == "0 3 * * *"
    for bad in ("every night", "* * *"):
        with pytest.raises(SpecError, match="is not a cron expression: give five fields"):
            schedules.check_cron(bad)
    three_am = datetime(2026, 12, 2, 3, tzinfo=UTC).timestamp()
    assert schedules.next_slot("0 3 * * *", three_am - 1) == three_am
    assert schedules.next_slot("0 3 * * *", three_am) == three_am + 86400


def _order_task(log: Path, name: str, gate: Path | None = None) -> dict:
    wait = f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)\n" if gate else ""
    code = f"import os, time\n{wait}open({str(log)!r}, 'a').write({name!r} + '\\n')"
    return {"agent": "command", "argv": ["python3", "-c", code]}


@pytest.mark.timeout(120)
def test_a_task_for_later_joins_the_end_of_the_line_when_due(runner: Runner, tmp_path: Path) -> None:
    log, gate = tmp_path / "order.log", tmp_path / "go"
    first = runner.submit(_order_task(log, "first", gate))
    wait_until(lambda: first.status() == Status.RUNNING, 30, what="the first task to run")
    queued = runner.submit(_order_task(log, "queued"))
    before = time.time()
    later = runner.submit(_order_task(log, "later"), in_=3)
    after = time.time()
    record = runner.get(later.id)
    assert record is not None and record.scheduled_for is not None
    assert before + 3 - 0.001 <= clock.epoch(record.scheduled_for) <= after + 3  # (kept to the millisecond)
    if time.time() < clock.epoch(record.scheduled_for) - 0.5:  # (a very busy machine may be past it)
        assert record.status == Status.SCHEDULED
        assert later.id in ScheduledJobRegistry(runner.settings.queue, connection=runner.redis).get_job_ids()
    # Due while the first task still runs: it goes to the end of the line, behind the task queued before it.
    wait_until(lambda: later.status() == Status.QUEUED, 30, what="the task for later to join the line")
    assert runner.queue.get_job_ids() == [queued.id, later.id]
    gate.touch()
    for handle in (first, queued, later):
        assert handle.result(timeout=60).success
    assert log.read_text().split() == ["first", "queued", "later"]


@pytest.mark.timeout(60)
def test_cancelling_a_task_for_later_means_it_never_runs(runner: Runner, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    later = runner.submit(agent="command", argv=["touch", str(marker)], in_=3600)
    assert runner.cancel(later.id) == "cancelled"
    assert later.result(timeout=10).cancelled
    assert later.id not in ScheduledJobRegistry(runner.settings.queue, connection=runner.redis).get_job_ids()
    assert runner.redis.zscore(keys.scheduled_key(runner.settings.queue), later.id) is None
    assert not marker.exists()


def test_after_and_a_time_together_are_refused(runner: Runner) -> None:
    first = runner.submit(agent="command", argv=["true"])
    with pytest.raises(SpecError, match="cannot wait both for another task"):
        runner.submit(agent="command", argv=["true"], after=first.id, in_=60)


@pytest.mark.timeout(90)
def test_a_cron_schedule_fires_through_the_worker_and_can_be_removed(stack: LocalStack, runner: Runner) -> None:
    env = {**stack.child_env()}
    added = subprocess.run(
        [*CCX, "schedule", "add", "* * * * * */2", "--agent", "command", "--", "echo", "tick"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    schedule_id = added.stdout.strip()
    fired = wait_until(lambda: runner.list(10), 30, what="the schedule to submit a task")
    first = fired[-1]
    assert runner.handle(first.id).result(timeout=30).output == "tick\n"
    [entry] = schedules.all_of(runner.redis, runner.settings.queue)
    assert entry.id == schedule_id and entry.last_task is not None and entry.next_at > time.time() - 2
    listed = subprocess.run([*CCX, "schedule", "list"], env=env, capture_output=True, text=True, timeout=30)
    assert schedule_id in listed.stdout and "* * * * * */2" in listed.stdout and "echo tick" in listed.stdout
    removed = subprocess.run(
        [*CCX, "schedule", "remove", schedule_id], env=env, capture_output=True, text=True, timeout=30
    )
    assert removed.returncode == 0 and f"schedule {schedule_id} removed" in removed.stdout
    assert schedules.all_of(runner.redis, runner.settings.queue) == []
    again = subprocess.run(
        [*CCX, "schedule", "remove", schedule_id], env=env, capture_output=True, text=True, timeout=30
    )
    assert again.returncode == 2 and f"No schedule {schedule_id}" in again.stderr


def test_each_slot_fires_once_even_when_two_firers_race(runner: Runner) -> None:
    entry = schedules.add(runner.redis, runner.settings.queue, "0 3 * * *", {"agent": "command", "argv": ["true"]})
    late = entry.next_at + 5
    first = schedules.fire_due(runner, now=late)
    # A second firer that read the schedule before the first one moved it on: the slot's key says "done".
    runner.redis.hset(keys.schedules_key(runner.settings.queue), entry.id, orjson.dumps({**entry.__dict__}))
    second = schedules.fire_due(runner, now=late)
    assert len(first) == 1 and second == first
    [moved] = schedules.all_of(runner.redis, runner.settings.queue)
    assert moved.next_at == entry.next_at + 86400 and moved.last_task == first[0]


def test_bad_schedule_input_gets_one_sentence(stack: LocalStack) -> None:
    env = stack.child_env()
    bad_cron = subprocess.run(
        [*CCX, "schedule", "add", "at three", "hello"], env=env, capture_output=True, text=True, timeout=30
    )
    assert (
        bad_cron.returncode == 2
        and "is not a cron expression" in bad_cron.stderr
        and "Traceback" not in bad_cron.stderr
    )
    bad_in = subprocess.run(
        [*CCX, "submit", "--in", "soon", "--agent", "command", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad_in.returncode == 2 and "--in must be a delay" in bad_in.stderr


def test_a_worker_back_after_missed_slots_fires_the_latest_once(runner: Runner) -> None:
    entry = schedules.add(runner.redis, runner.settings.queue, "0 3 * * *", {"agent": "command", "argv": ["true"]})
    three_days_on = entry.next_at + 3 * 86400 + 60  # three more 03:00s have passed since the first one
    fired = schedules.fire_due(runner, now=three_days_on)
    assert len(fired) == 1
    [moved] = schedules.all_of(runner.redis, runner.settings.queue)
    assert moved.last_at == entry.next_at + 3 * 86400 and moved.next_at == entry.next_at + 4 * 86400
    assert runner.get(fired[0]) is not None
    assert schedules.fire_due(runner, now=three_days_on) == []  # nothing more is due


def test_one_unreadable_schedule_stops_no_other(runner: Runner) -> None:
    good = schedules.add(runner.redis, runner.settings.queue, "0 3 * * *", {"agent": "command", "argv": ["true"]})
    runner.redis.hset(keys.schedules_key(runner.settings.queue), "broken", b'{"id": "broken", "cron": 5}')
    assert [entry.id for entry in schedules.all_of(runner.redis, runner.settings.queue)] == [good.id]
    assert len(schedules.fire_due(runner, now=good.next_at + 1)) == 1


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        (
            "61 * * * *",
            "'61 * * * *' is not a cron expression: its minute field '61' is not valid; give a number in 0-59, "
            "a list (1,5), a range (1-5), a step (*/15) or *.",
        ),
        (
            "0 24 * * *",
            "'0 24 * * *' is not a cron expression: its hour field '24' is not valid; give a number in 0-23",
        ),
        ("0 3 0 * *", "its day-of-month field '0' is not valid; give a number in 1-31,"),
        ("0 3 * 13 *", "its month field '13' is not valid; give a number in 1-12 or jan-dec,"),
        ("0 3 * * mon-xyz", "its day-of-week field 'mon-xyz' is not valid"),
        ("*/0 * * * *", "its minute field '*/0' is not valid"),
        ("* * * * * 60", "its second field '60' is not valid; give a number in 0-59"),
        (
            "0 0 31 2 *",
            "'0 0 31 2 *' never fires: no date matches it (such as 31 February, or the 31st of a 30-day month); "
            "change its day-of-month or month field, e.g. '0 0 L 2 *' for the last day of February.",
        ),
        ("0 0 31 4,6 *", "'0 0 31 4,6 *' never fires: no date matches it"),
    ],
)
def test_a_bad_cron_expression_is_told_what_is_wrong_with_it(expression: str, message: str) -> None:
    """Not croniter's "failed to find next date" or "out of range": which field, or that it never fires."""
    with pytest.raises(SpecError) as refused:
        schedules.check_cron(expression)
    assert message in str(refused.value)


def test_a_cron_expression_that_fires_rarely_is_fine() -> None:
    assert schedules.check_cron("0 0 29 2 *") == "0 0 29 2 *"  # leap days only
    assert schedules.check_cron("0 0 L 2 *") == "0 0 L 2 *"


def test_times_for_later_must_be_finite_and_within_366_days() -> None:
    """`--in 1e20` was an OverflowError traceback: a sentence now, for 'in' and 'at' alike."""
    now = 1_790_000_000.0
    year = schedules.MAX_AHEAD_SECONDS
    assert year == 366 * 86400
    assert schedules.due_time(None, year, now) == now + year
    assert schedules.due_time(now + year, None, now) == now + year
    for at, in_, message in (
        (
            None,
            1e20,
            "'in' is 1e+20 seconds, further ahead than the 31622400 (366 days) a task may wait: give a shorter "
            "delay, or add a cron schedule for work that far off.",
        ),
        (None, year + 1, "'in' is 3.16224e+07 seconds, further ahead than the 31622400 (366 days)"),
        (
            1e20,
            None,
            "'at' is 1e+20, further ahead than the 366 days a task may wait: give a time within a year, "
            "or add a cron schedule for work that far off.",
        ),
        ("9999-12-31T00:00:00Z", None, "'at' is 9999-12-31T00:00:00Z, further ahead than the 366 days"),
        (datetime(2099, 1, 1), None, "'at' is 2099-01-01T00:00:00, further ahead than the 366 days"),
        (None, float("inf"), "'in' must be a number of seconds from now (0 or more)."),
        (float("nan"), None, "'at' must be a datetime, an ISO 8601 time or epoch seconds."),
    ):
        with pytest.raises(SpecError) as refused:
            schedules.due_time(at, in_, now)
        assert str(refused.value).startswith(message)


def test_a_slot_is_named_by_its_start_not_by_the_second_it_is_seen() -> None:
    three_am = datetime(2026, 12, 2, 3, tzinfo=UTC).timestamp()
    assert schedules.latest_slot("0 3 * * *", three_am) == three_am
    assert schedules.latest_slot("0 3 * * *", three_am + 17.5) == three_am
    assert schedules.latest_slot("0 3 * * *", three_am + 3599) == three_am
    assert schedules.latest_slot("0 3 * * *", three_am - 0.5) == three_am - 86400
    assert schedules.latest_slot("* * * * *", three_am + 59.9) == three_am
    assert schedules.latest_slot("* * * * * */2", three_am + 5.5) == three_am + 4  # seconds: a 2 s slot
    assert schedules.latest_slot("* * * * * */2", three_am + 6) == three_am + 6


def test_two_firers_at_different_seconds_of_one_slot_submit_once(redis_url: str, queue_name: str) -> None:
    """A slot's key was built from the second the firer looked: 03:00:05 and 03:00:40 made two tasks."""
    runner = Runner(redis_url=redis_url, queue=queue_name)
    entry = schedules.add(runner.redis, queue_name, "0 3 * * *", {"agent": "command", "argv": ["true"]})
    first = schedules.fire_due(runner, now=entry.next_at + 5)
    # A second firer (another worker, or this one again) that read the entry before the first moved it on.
    runner.redis.hset(keys.schedules_key(queue_name), entry.id, orjson.dumps({**entry.__dict__}))
    second = schedules.fire_due(runner, now=entry.next_at + 40)
    assert len(first) == 1 and second == first
    assert [record.id for record in runner.list(10)] == first
    [moved] = schedules.all_of(runner.redis, queue_name)
    assert moved.last_at == entry.next_at and moved.next_at == entry.next_at + 86400


def test_a_ticker_whose_process_no_longer_serves_the_queue_fires_nothing(redis_url: str, queue_name: str) -> None:
    """The worker gives its ticker ``serving``; once it says no (the lock was lost), nothing more is submitted."""
    runner = Runner(redis_url=redis_url, queue=queue_name)
    entry = schedules.add(runner.redis, queue_name, "0 3 * * *", {"agent": "command", "argv": ["true"]})
    entry.next_at = time.time() - 60  # due now
    runner.redis.hset(keys.schedules_key(queue_name), entry.id, orjson.dumps({**entry.__dict__}))
    serving = False
    ticker = schedules.Ticker(runner, serving=lambda: serving)
    ticker.tick()
    assert runner.list(10) == []
    ticker.start()  # its thread sees it no longer serves, and ends
    ticker._thread.join(10)
    assert not ticker._thread.is_alive() and ticker.stop.is_set() and runner.list(10) == []
    ticker.close()
    serving = True
    schedules.Ticker(runner, serving=lambda: serving).tick()
    assert len(runner.list(10)) == 1
