"""Tasks that run later: once at a time (``submit(at=…)`` / ``in_=…``), or again and again by cron.

A task for later is a normal task whose RQ job waits in RQ's
``ScheduledJobRegistry`` (so ``rq info`` and rq-dashboard show it); the
worker runs RQ's scheduler, which moves a job that comes due to the **end** of
the queue: it joins the line, it never jumps it. Its record says
``scheduled`` (with ``scheduled_for``) until then, and ``queued`` after.

A recurring task is a *schedule*: a cron expression (UTC) and a task spec,
kept in Redis per queue. RQ 3's own cron scheduler runs jobs listed in a
Python file loaded when it starts, which fits neither entries added and
removed from the CLI nor our task records, so the worker fires schedules
itself (:class:`Ticker`), parsing cron with ``croniter`` (RQ's own cron
dependency). Each firing submits the task with the idempotency key
``schedule:<id>:<slot>``, so a slot fires once even if two processes race,
and a worker that was down when slots passed fires the latest one once when
it returns, not every missed one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import redis
from croniter import croniter
from rq.job import JobStatus
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from runner import clock, keys, lifecycle
from runner.errors import CcxError, SpecError, Unavailable
from runner.lifecycle import fetch_job
from runner.spec import TaskResult, TaskSpec, as_real, title

if TYPE_CHECKING:
    from runner.client import Runner

log = logging.getLogger("ccx.schedules")

TICK_SECONDS = 1.0
"""How often the worker looks for due schedules and for scheduled tasks RQ has put in line."""


MAX_AHEAD_SECONDS = 366 * 86400
"""How far ahead a task may be scheduled (``at``/``in_``): a year and a day. Further is a typo (``1e20``,
year 9999), and a task waiting that long would outlive its RQ job and everything it was meant to act on."""


def due_time(at: datetime | str | float | None, in_: float | None, now: float | None = None) -> float | None:
    """When a task submitted with ``at`` or ``in_`` is due (epoch seconds), or None to queue it now.

    ``at`` is a datetime (a naive one is UTC), an ISO 8601 string, or epoch seconds; ``in_`` is seconds from now.
    Either may be at most :data:`MAX_AHEAD_SECONDS` ahead; a time already past means now.
    """
    now = time.time() if now is None else now
    if at is not None and in_ is not None:
        raise SpecError("Give 'at' or 'in', not both.")
    if in_ is not None:
        delay = as_real(in_)
        if delay is None or not math.isfinite(delay) or delay < 0:
            raise SpecError("'in' must be a number of seconds from now (0 or more).")
        if delay > MAX_AHEAD_SECONDS:
            raise SpecError(
                f"'in' is {delay:g} seconds, further ahead than the {MAX_AHEAD_SECONDS} (366 days) a task may wait: "
                "give a shorter delay, or add a cron schedule for work that far off."
            )
        due = now + delay
        return due if due > now else None  # (a delay too small to move the clock is now)
    if at is None:
        return None
    due = _epoch(at)
    if due - now > MAX_AHEAD_SECONDS:
        shown = at.isoformat() if isinstance(at, datetime) else at
        raise SpecError(
            f"'at' is {shown}, further ahead than the 366 days a task may wait: give a time within a year, "
            "or add a cron schedule for work that far off."
        )
    return due if due > now else None


def _epoch(at: datetime | str | float) -> float:
    """``at`` (a datetime, naive meaning UTC; an ISO 8601 string; epoch seconds) as epoch seconds."""
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at.strip().replace("Z", "+00:00"))
        except ValueError:
            raise SpecError(f"'at' must be a time in ISO 8601, e.g. 2026-12-02T03:00:00Z, not {at!r}.") from None
    if isinstance(at, datetime):
        try:
            return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
        except (OverflowError, ValueError, OSError):  # e.g. year 1 in a zone east of UTC: before the epoch's range
            raise SpecError(f"'at' must be a time the calendar can hold, not {at.isoformat()}.") from None
    epoch = as_real(at)
    if epoch is not None and math.isfinite(epoch):
        return epoch
    raise SpecError("'at' must be a datetime, an ISO 8601 time or epoch seconds.")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_delay(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h`` or ``1d`` as seconds (for ``ccx submit --in``)."""
    raw = str(text).strip().lower()
    unit = _UNITS.get(raw[-1:], 0) if raw else 0
    number = raw[:-1] if unit else raw
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise SpecError(f"--in must be a delay such as 90, 90s, 10m, 2h or 1d, not {text!r}.")
    return value


CRON_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or jan-dec"),
    ("day-of-week", "0-7 or sun-sat, 0 and 7 both Sunday"),
    ("second", "0-59"),
)
"""The fields of a cron expression in order, with what each may hold (for the sentence that refuses one)."""


def check_cron(expression: str) -> str:
    """``expression`` if it is a valid five-field cron expression that fires; else a :class:`SpecError` saying
    what is wrong with it (which field, or that no date ever matches) and what to do."""

    text = " ".join(str(expression).split())
    parts = text.split()
    if len(parts) not in (5, 6):
        raise SpecError(
            f"{expression!r} is not a cron expression: give five fields, minute hour day month weekday "
            "(UTC), e.g. '0 3 * * *' for 03:00 every day (a sixth field, seconds, is allowed)."
        )
    if not croniter.is_valid(text):
        raise SpecError(f"{expression!r} is not a cron expression: {_bad_field(parts)}")
    try:
        next_slot(text, time.time())
    except ValueError:  # croniter's CroniterBadDateError: it searched and found no such date
        raise SpecError(
            f"{expression!r} never fires: no date matches it (such as 31 February, or the 31st of a 30-day "
            "month); change its day-of-month or month field, e.g. '0 0 L 2 *' for the last day of February."
        ) from None
    return text


def _bad_field(parts: list[str]) -> str:
    """Which field of a refused expression is wrong, found by trying each one alone among stars."""

    for index, part in enumerate(parts):
        alone = ["*"] * len(parts)
        alone[index] = part
        if not croniter.is_valid(" ".join(alone)):
            name, allowed = CRON_FIELDS[index]
            return (
                f"its {name} field {part!r} is not valid; give a number in {allowed}, a list (1,5), "
                "a range (1-5), a step (*/15) or *."
            )
    return "its fields are each valid but not together; see `man 5 crontab`, e.g. '0 3 * * *' for 03:00 daily."


def latest_slot(expression: str, at: float) -> float:
    """The start of the slot ``at`` falls in: the last time at or before ``at`` that ``expression`` names, in UTC.

    For '0 3 * * *', 03:00:17 is in the slot 03:00:00. A slot is named by its start, never by the second a
    firer looked at it, so two firers (or one firing again) within one slot make one idempotency key.
    """

    # croniter's get_prev is strictly before its start: start one second past ``at``'s whole second.
    start = datetime.fromtimestamp(math.floor(at) + 1, UTC)
    return float(croniter(expression, start).get_prev(float))


def next_slot(expression: str, after: float) -> float:
    """The first time strictly after ``after`` (epoch seconds) that ``expression`` names, in UTC."""

    return float(croniter(expression, datetime.fromtimestamp(after, UTC)).get_next(float))


@dataclass
class Schedule:
    """A recurring task: ``spec`` submitted at every time ``cron`` names."""

    id: str
    queue: str
    cron: str
    spec: dict[str, Any]
    created_at: str
    next_at: float
    last_at: float | None = None
    last_task: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["next_at"] = clock.iso(self.next_at)
        data["last_at"] = clock.iso(self.last_at) if self.last_at else None
        return data

    def title(self) -> str:
        return title(self.spec)


_FIELDS = frozenset(Schedule.__dataclass_fields__)

# KEYS: the queue's schedules. ARGV: schedule id, JSON. Writes an entry back only if it is still there,
# so a `ccx schedule remove` while it fired stays removed.
_UPDATE_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def _load(raw: bytes) -> Schedule | None:
    """A stored schedule, or None for an entry that is not one (logged): one bad entry stops no other."""
    try:
        data = orjson.loads(raw)
        return Schedule(**{k: v for k, v in data.items() if k in _FIELDS})
    except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
        log.error("a stored schedule cannot be read (%s); remove it with `ccx schedule remove`.", exc)
        return None


def loaded(raws: list[bytes]) -> list[Schedule]:
    """The readable ones of ``raws``, soonest first."""
    return sorted((s for s in map(_load, raws) if s is not None), key=lambda s: s.next_at)


def _save(client: redis.Redis, schedule: Schedule) -> None:
    client.hset(keys.schedules_key(schedule.queue), schedule.id, orjson.dumps(asdict(schedule)))


def _update(client: redis.Redis, schedule: Schedule) -> bool:
    key = keys.schedules_key(schedule.queue)
    return bool(client.eval(_UPDATE_SCRIPT, 1, key, schedule.id, orjson.dumps(asdict(schedule))))


def add(client: redis.Redis, queue: str, cron: str, spec: TaskSpec | dict[str, Any]) -> Schedule:
    """Register a recurring task; the spec is checked now, so a bad one never fails at 3 a.m."""
    expression = check_cron(cron)
    checked = spec if isinstance(spec, TaskSpec) else TaskSpec.from_dict(spec)
    schedule = Schedule(
        id=uuid.uuid4().hex[:12],
        queue=queue,
        cron=expression,
        spec=checked.to_dict(),
        created_at=clock.now_iso(),
        next_at=next_slot(expression, time.time()),
    )
    _save(client, schedule)
    return schedule


def all_of(client: redis.Redis, queue: str) -> list[Schedule]:
    """The queue's schedules, soonest first."""
    return loaded(client.hvals(keys.schedules_key(queue)))


def remove(client: redis.Redis, queue: str, schedule_id: str) -> bool:
    return bool(client.hdel(keys.schedules_key(queue), schedule_id))


def fire_due(runner: Runner, now: float | None = None, entries: list[Schedule] | None = None) -> list[str]:
    """Submit the task of every schedule (of ``entries``, else all) whose time has come; the ids submitted."""
    now = time.time() if now is None else now
    client = runner.redis
    submitted = []
    for schedule in entries if entries is not None else all_of(client, runner.settings.queue):
        if schedule.next_at > now:
            break
        # The latest slot that has come (after an outage, the ones before it are not made up for), by its
        # start: every firer of one slot, whatever second it looks, builds the same key and submits once.
        slot = int(max(schedule.next_at, latest_slot(schedule.cron, now)))
        task_id = None
        try:
            task_id = runner.submit(schedule.spec, key=f"schedule:{schedule.id}:{slot}").id
        except Unavailable:
            raise  # Redis is away: this slot fires on the tick after it is back
        except (CcxError, ValueError) as exc:  # e.g. the agent it names is gone: skip this slot, say so once
            log.error(
                "schedule %s (%s) could not submit its task: %s It tries again at its next time.",
                schedule.id,
                schedule.cron,
                exc,
            )
        schedule.last_at, schedule.last_task = float(slot), task_id
        schedule.next_at = next_slot(schedule.cron, max(now, float(slot)))
        _update(client, schedule)
        if task_id is not None:
            log.info("schedule %s (%s) submitted task %s", schedule.id, schedule.cron, task_id)
            submitted.append(task_id)
    return submitted


def note_due_tasks(runner: Runner, now: float | None = None) -> list[str]:
    """Records of scheduled tasks that RQ's scheduler has put in line now say ``queued``; the ids."""
    now = time.time() if now is None else now
    key = keys.scheduled_key(runner.settings.queue)
    moved = []
    for raw in runner.redis.zrangebyscore(key, "-inf", now):
        task_id = raw.decode()
        job = fetch_job(runner.redis, task_id)
        status = job.get_status(refresh=False) if job is not None else None
        if status == JobStatus.SCHEDULED:
            continue  # due, but RQ's scheduler has not run since: next tick
        if job is None:  # its job is gone (expired, or deleted by hand): it can never run, so say so
            record = runner.store.get(task_id)
            if record is not None and record.result is None:
                lifecycle.end(
                    runner.store,
                    TaskResult.failed(
                        task_id,
                        "Its RQ job was gone when it came due, so it could not run: submit it again.",
                        metadata=record.spec.metadata,
                    ),
                    runner.settings.queue,
                )
        elif status != JobStatus.CANCELED:
            runner.store.released(task_id, runner.settings.queue)
        runner.redis.zrem(key, task_id)
        moved.append(task_id)
    return moved


class Ticker:
    """The worker's thread that runs RQ's scheduler for its queue, fires schedules, and notes scheduled
    tasks joining the line.

    RQ's scheduler is driven from this thread (``enqueue_scheduled_jobs`` each tick) rather than as the
    process ``Worker.work(with_scheduler=True)`` forks: a forked scheduler would outlive a worker killed
    with SIGKILL, and our queue lock already makes this worker the only one serving the queue.

    ``serving`` says whether this process still serves the queue (e.g. ``lambda: not lock.lost.is_set()``):
    once it says no, the ticker fires nothing more and its thread ends, so a worker cut off from its lock
    stops submitting schedules beside the worker that took over.
    """

    LOCK_REFRESH_TICKS = 20
    """RQ's scheduler lock lives 61 s; while tasks come due it is refreshed every this many of those ticks."""

    def __init__(
        self, runner: Runner, interval: float = TICK_SECONDS, serving: Callable[[], bool] | None = None
    ) -> None:

        self.runner = runner
        self.interval = interval
        self.serving: Callable[[], bool] = serving or (lambda: True)
        self.stop = threading.Event()
        self.rq_scheduler = RQScheduler([runner.settings.queue], connection=runner.redis, serializer=JSONSerializer)
        self._thread = threading.Thread(target=self._run, name="ccx-schedules", daemon=True)
        self._complained = False
        self._ticks = 0

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self._thread.join(5)
        with contextlib.suppress(redis.RedisError):  # else it expires by itself
            self.rq_scheduler.release_locks()

    def tick(self) -> None:
        """One look, in one round trip while nothing is due: is a task for later due, is a schedule?

        Nothing at all while this process no longer serves the queue (``serving``)."""
        if not self.serving():
            return
        now = time.time()
        queue = self.runner.settings.queue
        with self.runner.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(keys.scheduled_key(queue), "-inf", now, start=0, num=1)
            pipe.hvals(keys.schedules_key(queue))
            due_tasks, raw_schedules = pipe.execute()
        if due_tasks:
            if self._ticks % self.LOCK_REFRESH_TICKS == 0 or not self.rq_scheduler.acquired_locks:
                self.rq_scheduler.acquire_locks()
            self._ticks += 1
            if self.rq_scheduler.acquired_locks:
                self.rq_scheduler.enqueue_scheduled_jobs()
            note_due_tasks(self.runner)
        entries = loaded(raw_schedules)
        if entries and entries[0].next_at <= now:
            fire_due(self.runner, now, entries)

    def _run(self) -> None:
        first = True  # at once on start (a burst worker must see what is due), then every interval
        while first or not self.stop.wait(self.interval):
            first = False
            if not self.serving():
                log.warning(
                    "this worker no longer serves queue '%s': its schedules stop here.", self.runner.settings.queue
                )
                self.stop.set()
                return
            try:
                self.tick()
                self._complained = False
            except redis.RedisError as exc:
                if not self._complained:  # once per outage, not once a second
                    log.warning("schedules wait for Redis (%s); they fire when it is back.", exc)
                    self._complained = True
            except Exception as exc:  # a bad schedule must not stop the others, or the worker
                log.error("a schedule could not fire: %s", exc)
