"""The RQ job function: one attempt of a task, in RQ's work-horse (a fork of the worker).

It starts a run (fenced, with its lease), has :mod:`runner.relay` carry it out on
the handler, and hands what came of it to :mod:`runner.lifecycle`, which decides
what the attempt means: the task's end, or another attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import redis
from rq import get_current_job
from rq.job import Job

from handler.memory import pin_malloc_thresholds
from handler.proctree import die_with_parent
from runner import clock, keys, lifecycle
from runner.config import Settings
from runner.errors import HandlerUnreachable, SpecError, TaskFailed, TaskRequeued
from runner.lock import process_identity
from runner.policy import CONTINUE_PROMPT
from runner.reconcile import REQUEUE_REFUSED
from runner.relay import NOTHING_KEPT_RUN, STALE_RUN, relay
from runner.spec import TaskResult, TaskSpec
from runner.store import TaskStore
from runner.vocabulary import AttemptKind, PauseKind

log = logging.getLogger("ccx.runner")


REQUEUE_META = "ccx_requeue"
"""Job meta set by a work-horse whose task must go back to the front of the queue (why, in a word)."""
HORSE = "ccx_horse"
"""The attribute of the in-memory job (never saved) by which a worker hands its work-horse a :class:`Horse`."""


@dataclass(frozen=True)
class Horse:
    """What a worker hands the work-horse it forks for one job (runner/worker.py, ``perform_job``)."""

    settings: Settings
    """The worker's settings, built once from flags over environment over defaults."""
    fence: int | None
    """The fencing token of the worker's queue lock (see runner/lock.py); None under a plain ``rq worker``."""
    run: str
    """The run id, made in the worker before it forks: the horse starts its run under it, and the worker can end
    exactly that run should the horse die."""


def run_id(fence: int | None) -> str:
    """A new run id under ``fence``, carrying the worker's process identity (host, boot, PID namespace, pid): a
    successor on this host can tell at once that the run died with its worker, instead of waiting out the lease."""
    return f"{fence if fence is not None else '-'}:{process_identity()}"


def horse_of(job: Job) -> Horse:
    """The horse its worker handed this job. A plain ``rq worker`` running our jobs hands none: that is an entry
    point of its own, so the settings come from the environment, as for any entry point."""
    horse = getattr(job, HORSE, None)
    if isinstance(horse, Horse):
        return horse
    return Horse(Settings.from_env().with_local_token(), None, run_id(None))


def run_task(spec_data: dict) -> dict:
    """RQ entry point: run the task whose spec is ``spec_data``; return its result as a dict."""
    job = get_current_job()
    assert job is not None, "run_task runs inside an RQ work-horse"
    if job.connection is None:
        raise RuntimeError("the job has no Redis connection")
    # A worker killed (even by SIGKILL) takes its horse along, closing the handler connection: the handler then
    # kills the task's process tree, so a killed worker leaves no agent running.
    if not die_with_parent(signal.SIGKILL):
        os._exit(1)  # the worker died before this took effect
    horse = horse_of(job)
    settings = horse.settings
    store = TaskStore(job.connection, settings.log_maxlen, settings.log_ttl, settings.idempotency_ttl)
    try:
        result = run_job(job, spec_data, horse, store)
    except TaskRequeued:
        raise
    except Exception as exc:
        # Whatever went wrong, the task must end with a result, never stay "running" forever.
        log.exception("task %s: internal error in the worker", job.id)
        result = TaskResult.failed(
            job.id, f"Internal error in the worker ({type(exc).__name__}: {exc}); see the worker's log."
        )
        # Its own run, or, if it failed before starting one, the task as long as no run holds it: never a run
        # another worker started meanwhile.
        if not lifecycle.end(store, result, job.origin, job, horse.run) and not store.client.hexists(
            keys.info_key(job.id), "run"
        ):
            lifecycle.end(store, result, job.origin, job)
    if not result.success:
        raise TaskFailed(result.error or "The task failed.")
    return result.to_dict()


def _requeue(job: Job, why: str) -> TaskRequeued:
    job.meta[REQUEUE_META] = why
    job.save_meta()
    return TaskRequeued(why)


STALE_BACKOFF_CAP = 30.0


def _stale(
    job: Job, store: TaskStore, result: TaskResult, attempts: list[dict[str, Any]], horse: Horse
) -> TaskRequeued:
    """The handler refused this run as stale: give the run back (the task is queued again, the refusal counted
    among its attempts) and hand the job back after a backoff that doubles with each refusal, saying why."""
    refusals = 1 + sum(1 for attempt in attempts if attempt.get("kind") == AttemptKind.STALE)
    this = {
        "started_at": result.started_at,
        "ended_at": result.ended_at,
        "error": result.error,
        "kind": AttemptKind.STALE,
    }
    lifecycle.interrupt(store, job.id, job.origin, horse.run, [*attempts, this])
    wait = min(0.5 * 2 ** (refusals - 1), STALE_BACKOFF_CAP)
    log.warning(
        "task %s: the handler refused this worker's run as stale (fencing token %s, refusal %d): a newer worker "
        "serves queue %s, or Redis lost its data and its clock went back; handing it back in %.1f s",
        job.id, horse.fence, refusals, job.origin, wait,
    )  # fmt: skip
    time.sleep(wait)
    return _requeue(job, AttemptKind.STALE)


def _unread_runs(attempts: list[dict[str, Any]]) -> list[str]:
    """The runs since the last attempt that had an answer, whose answer never came (cut off, frozen, killed):
    the handler may have kept their outcome (handler/kept.py)."""
    unread: list[str] = []
    for attempt in reversed(attempts):
        if attempt.get("kind") in (AttemptKind.STALE, PauseKind.HANDLER):  # refused, or never sent: no answer was due
            continue
        if attempt.get("kind") != AttemptKind.INTERRUPTED:
            break
        if attempt.get("run"):
            unread.insert(0, attempt["run"])
    return unread


def run_job(job: Job, spec_data: dict, horse: Horse, store: TaskStore) -> TaskResult:
    task_id, queue, settings = job.id, job.origin, horse.settings
    client: redis.Redis = job.connection
    reason = client.get(keys.cancel_key(task_id))
    if reason is not None:
        result = TaskResult.cancelled_with(task_id, reason.decode())
        lifecycle.end(store, result, queue, job)
        return result
    started_at = clock.now_iso()
    began = time.monotonic()
    try:
        spec = TaskSpec.from_dict(spec_data)
    except SpecError as exc:
        result = TaskResult.failed(task_id, f"Invalid task spec: {exc}", started_at=started_at)
        lifecycle.end(store, result, queue, job)
        return result
    lease_ms = int(settings.lock_ttl * 1000)
    started = lifecycle.start(store, task_id, queue, horse.run, horse.fence, lease_ms)
    if started.code == -1:
        log.warning(
            "task %s: another worker serves queue %s now (this one lost its lock); handing it back", task_id, queue
        )
        raise _requeue(job, AttemptKind.STALE)
    if started.code == 0:
        record = store.get(task_id)
        ended = record.result if record is not None and record.result is not None else TaskResult(id=task_id)
        log.warning(REQUEUE_REFUSED, task_id, ended.status)
        return ended
    attempts = started.attempts
    if started.continue_session:
        # The last attempt made progress before a usage limit: go on in the same session, not afresh.
        spec = TaskSpec.from_dict({**spec.to_dict(), "resume": started.continue_session, "task": CONTINUE_PROMPT})
    pin_malloc_thresholds()  # the work-horse is where output frames pass: see handler/memory.py
    job_key = job.key.decode() if isinstance(job.key, bytes) else job.key
    unread = _unread_runs(attempts)
    final = attempts[-1].get(lifecycle.LAST_LOOK) if attempts else None  # only collect: see lifecycle.last_look
    try:
        result = asyncio.run(
            relay(task_id, spec, settings, job_key, queue=queue, run_id=horse.run, fence_token=horse.fence, collect=unread,
                  collect_only=final is not None)
        )  # fmt: skip
    except HandlerUnreachable as exc:
        lifecycle.hold_for_handler(store, task_id, queue, horse.run, attempts, str(exc), started_at)
        raise _requeue(job, PauseKind.HANDLER) from None
    result.started_at = started_at
    result.ended_at = clock.now_iso()
    if result.duration_ms is None:
        result.duration_ms = round((time.monotonic() - began) * 1000, 3)
    result.metadata = spec.metadata
    return _what_it_means(job, store, spec, result, attempts, horse, final)


def _what_it_means(
    job: Job, store: TaskStore, spec: TaskSpec, result: TaskResult, attempts: list[dict[str, Any]],
    horse: Horse, final: str | None,
) -> TaskResult:  # fmt: skip
    """Hand the attempt's outcome to :func:`runner.lifecycle.conclude`, after the two cases only the horse can
    tell: a run refused as stale, and a collect-only attempt that found nothing kept."""
    task_id = job.id
    if result.interrupted and result.error == STALE_RUN:
        raise _stale(job, store, result, attempts, horse)
    if final is not None and result.error == NOTHING_KEPT_RUN:
        result = TaskResult.failed(task_id, final, interrupted=True, attempts=attempts, started_at=result.started_at)
        lifecycle.end(store, result, job.origin, job, horse.run)
        log.warning("task %s: none of its runs had ended unread; it failed: %s", task_id, final)
        return result
    again = lifecycle.conclude(store, job, spec, result, attempts, horse.settings, horse.run)
    if again is not None:
        raise _requeue(job, again)
    log.info(
        "task %s %s in %.0f ms%s",
        task_id,
        result.status,
        result.duration_ms or 0,
        f": {result.error}" if result.error else "",
    )
    return result
