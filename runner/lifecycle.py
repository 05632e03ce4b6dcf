"""The life of a task, in one place: queued → running → ended, back to queued after an interrupted attempt,
and what a task's end means for the tasks submitted ``after`` it.

Every move of a task between states goes through a function here, and each is
one atomic Lua call in :mod:`runner.store` (the record, the log, both channels
at once). Who may make a move (the queue lock, the fencing token, the run
lease) is :mod:`runner.lock`. The rules (docs/events.md):

* A task's end is written once (:func:`end`); a result from a run that is no
  longer the task's current one is refused.
* Its dependents are settled by the same call that ended it: after a success
  they run; after a failure the ``after_any`` ones run and the others are
  cancelled; after a cancel all of them are cancelled (a cancel stops the line,
  which is also RQ's rule for a canceled dependency).
* An interrupted attempt (:func:`interrupt`) is not an end: the task goes back
  to the front of its queue and its dependents keep waiting. Nor is an attempt
  that could not reach the handler (:func:`hold_for_handler`): the queue waits.
* What an attempt means (run again, retry or pause by the policy, or the end) is
  decided by :func:`conclude`, and only there; RQ's own hooks in the worker never
  decide a task's fate, they only make RQ's records agree (runner/worker.py).
* :func:`cancel` asks: a queued task ends at once and never runs; a running one
  is stopped by its work-horse, which then ends it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import CanceledJobRegistry
from rq.serializers import JSONSerializer

from runner import clock, hooks, keys, metrics, policy, queue_state
from runner.agents import get_agent
from runner.config import Settings
from runner.errors import UnknownTask
from runner.spec import TaskResult, TaskSpec
from runner.store import Started, TaskStore
from runner.vocabulary import AttemptKind, CancelOutcome, PauseKind

log = logging.getLogger("ccx.runner")

LAST_LOOK = "last_look"
"""Set on an interrupted attempt past the limit whose run may have ended unread: the sentence the task ends with
unless the next attempt, which only collects, finds that run's outcome kept on the handler."""


def fetch_job(client: redis.Redis, task_id: str) -> Job | None:
    try:
        return Job.fetch(task_id, connection=client, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def start(store: TaskStore, task_id: str, queue: str, run: str, fence: int | None, lease_ms: int) -> Started:
    """queued → running as ``run``, if ``fence`` is still the queue's (``code``: 1 started, 0 already ended,
    -1 stale), with the task's earlier attempts and the agent session it is to continue, if any."""
    return store.start(task_id, queue, run, fence, lease_ms)


def interrupt(store: TaskStore, task_id: str, queue: str, run: str, attempts: list[dict[str, Any]]) -> bool:
    """running → queued after an interrupted attempt (the caller puts the job back at the front)."""
    return store.interrupt(task_id, queue, run, attempts)


def end(store: TaskStore, result: TaskResult, queue: str, job: Job | None = None, run: str = "") -> bool:
    """Record ``result`` as the task's end and settle its dependents; False when it had already ended
    (whoever ended it settled them) or ``run`` is no longer its current run."""
    if not store.finalize(result, queue, run):
        return False
    # The end's bookkeeping, in one round trip: its metrics, and what the listeners of runner/hooks.py add
    # (the webhooks' outbox: the end's webhook, queued for the worker's deliverer, never sent here); its cost
    # was counted by the finalize script itself. A plain pipeline, not MULTI: one refused command (a Redis
    # without scripting, say) must not discard the others. The end itself is recorded already, so a
    # failure here is logged, never raised, and the dependents are still settled.
    try:
        with store.client.pipeline(transaction=False) as pipe:
            metrics.count_end(pipe, queue, result)
            counted = len(pipe)
            hooks.task_ended(pipe, queue, result, store.log_ttl)
            replies = pipe.execute(raise_on_error=False)
        if any(isinstance(reply, Exception) for reply in replies[:counted]):
            log.warning("task %s: its metrics could not be recorded in Redis", result.id)
        for failed in (reply for reply in replies[counted:] if isinstance(reply, Exception)):
            log.warning("task %s: a listener's bookkeeping of its end (its webhook) failed (%s)", result.id, failed)
    except redis.RedisError as exc:
        log.warning("task %s: its metrics and webhook could not be recorded (%s)", result.id, exc)
    job = job if job is not None else fetch_job(store.client, result.id)
    if job is not None:
        settle_dependents(store, job, result)
    return True


def settle_dependents(store: TaskStore, job: Job, result: TaskResult) -> None:
    """What ``result`` means for the tasks submitted after ``job`` (see the module's rules)."""
    what = "was cancelled" if result.cancelled else "failed"
    for dependent_id in job.dependent_ids:
        dependent = fetch_job(store.client, dependent_id)
        if dependent is None:
            continue
        runs = result.success or (not result.cancelled and dependent.allow_dependency_failures)
        if runs:
            store.released(dependent_id, dependent.origin)  # RQ enqueues it; its record says queued now
            continue
        reason = f"Not run: it was to run after task {job.id}, which {what}" + (
            "." if dependent.allow_dependency_failures else "; submit it with after_any to run regardless."
        )
        with contextlib.suppress(UnknownTask):
            cancel(store, dependent_id, reason)


def settle_lost_end(store: TaskStore, job: Job, result: TaskResult) -> None:
    """An end was recorded but the process that recorded it died before it settled the dependents, or before
    RQ's own bookkeeping in it could enqueue them (a worker SIGKILLed at the task's end: chaos seed 102, whose
    chains then waited deferred for good). Settle them now; every step is idempotent, so an end that had got
    further is settled no differently."""
    settle_dependents(store, job, result)
    Queue(job.origin, connection=store.client, serializer=JSONSerializer).enqueue_dependents(job)


def settle_new_dependent(store: TaskStore, task_id: str, after: str, after_any: bool) -> None:
    """A task submitted after one that had already ended in a way that will never release it: cancel it now.

    RQ releases dependents when their predecessor ends; one submitted after that moment would wait forever.
    A predecessor that ends after this check settles its dependents itself (:func:`end`).
    """
    predecessor = store.get(after)
    if predecessor is None or predecessor.result is None or predecessor.result.success:
        return
    if not predecessor.result.cancelled:
        if after_any:
            return  # after_any and a failed predecessor: it runs (RQ has let it, or will)
        job = fetch_job(store.client, task_id)
        if job is None or job.get_status() != JobStatus.DEFERRED:
            return
    # RQ has put this task in the ended predecessor's dependents set, which the predecessor's end expired
    # already, or which this made anew, without a TTL: it expires with the predecessor's keys.
    store.client.expire(Job.dependents_key_for(after), store.log_ttl)
    # A cancelled predecessor cancels it whatever RQ made of it: RQ enqueues a dependent of a job it has
    # already filed as canceled when failures are allowed, which would let it run.
    what = "was cancelled" if predecessor.result.cancelled else "failed"
    with contextlib.suppress(UnknownTask):
        cancel(
            store,
            task_id,
            f"Not run: it was to run after task {after}, which {what}"
            + ("; submit it with after_any to run regardless." if not after_any else "."),
        )


def cancel_job(store: TaskStore, job: Job) -> None:
    """RQ's cancel of a job that will never run, filed in RQ's canceled registry until the task expires.

    RQ's own cancel scores the entry "now", which its registries read as an expiry already passed, and RQ
    never cleans that registry: the entry would stay forever. Here it is scored as RQ's other registries are,
    by its expiry, in the same transaction (the task's end then expires the job's keys, and trims the registry).
    """
    with contextlib.suppress(InvalidJobOperation), store.client.pipeline() as pipe:
        job.cancel(pipeline=pipe)
        registry = CanceledJobRegistry(job.origin, store.client, serializer=JSONSerializer)
        registry.add(job, ttl=store.log_ttl, pipeline=pipe)
        pipe.execute()


def cancel(store: TaskStore, task_id: str, reason: str | None = None) -> str:
    """Cancel ``task_id``; returns :data:`CancelOutcome.CANCELLED`, :data:`CancelOutcome.CANCELLING` or :data:`CancelOutcome.ALREADY_ENDED`.

    The cancel flag is set and announced first, so a work-horse that dequeues the
    task at this very moment sees it and does not start it.
    """
    client = store.client
    record = store.get(task_id)
    if record is None:
        raise UnknownTask(task_id)
    if record.result is not None:
        return CancelOutcome.ALREADY_ENDED
    message = reason or "The task was cancelled before it started."
    pipe = client.pipeline()
    pipe.set(keys.cancel_key(task_id), message, ex=store.log_ttl)
    pipe.publish(keys.cancel_key(task_id), message)
    pipe.zrem(keys.scheduled_key(record.queue), task_id)  # a task for later that will never come due
    pipe.execute()
    job = fetch_job(client, task_id)
    if job is not None and job.get_status() == JobStatus.STARTED:
        return CancelOutcome.CANCELLING
    if job is not None:
        cancel_job(store, job)
    result = TaskResult.cancelled_with(task_id, message, metadata=record.spec.metadata)
    if end(store, result, record.queue, job):
        log.info("task %s cancelled before it started", task_id)
    return CancelOutcome.CANCELLED


def last_look(attempts: list[dict[str, Any]], final: str) -> bool:
    """The attempts ran out, but the last one's run may have reached its end with its answer lost (its worker cut
    off, frozen or killed): mark it so the next attempt only collects that outcome from the handler, running
    nothing, and otherwise ends the task with ``final``. Once per task; False when there is no run to look for."""
    if not attempts[-1].get("run") or any(LAST_LOOK in attempt for attempt in attempts[:-1]):
        return False
    attempts[-1][LAST_LOOK] = final
    return True


def interruptions(attempts: list[dict[str, Any]]) -> int:
    """How many of ``attempts`` the infrastructure interrupted (the oldest records carry no kind: interrupted)."""
    return sum(1 for attempt in attempts if attempt.get("kind", AttemptKind.INTERRUPTED) == AttemptKind.INTERRUPTED)


def runs_again(attempts: list[dict[str, Any]], final: str, settings: Settings) -> bool:
    """Whether a task whose last attempt was interrupted runs again: up to ``interrupted_retries`` times, then
    once more only to collect a kept outcome (:func:`last_look`), else it ends with ``final``."""
    return interruptions(attempts) <= settings.interrupted_retries or last_look(attempts, final)


def hold_for_handler(
    store: TaskStore, task_id: str, queue: str, run: str, attempts: list[dict[str, Any]], error: str, started_at: str
) -> bool:
    """The worker could not reach the handler (``error`` says where and for how long): nothing ran, so the task
    goes back to the front untouched and the queue waits for the handler (a ``handler`` pause, which the worker
    ends once the handler answers). The attempt is recorded, repeats folded into one entry (``times``), and
    counts against no limit: a handler that is down or cut off is never the task's fault. False if ``run`` is
    no longer the task's current one (another worker has it now)."""
    previous = attempts[-1] if attempts and attempts[-1].get("kind") == PauseKind.HANDLER else None
    this = {
        "started_at": previous["started_at"] if previous else started_at,
        "ended_at": clock.now_iso(),
        "error": error,
        "kind": PauseKind.HANDLER,
        "times": (previous.get("times", 1) + 1) if previous else 1,
    }
    if not interrupt(store, task_id, queue, run, [*(attempts[:-1] if previous else attempts), this]):
        return False
    reason = f"{error} The queue waits for it and goes on by itself once the handler answers."
    queue_state.pause(store.client, queue, PauseKind.HANDLER, reason)
    log.warning("task %s goes back to the front of queue %s: %s", task_id, queue, error)
    return True


def conclude(
    store: TaskStore, job: Job, spec: TaskSpec, result: TaskResult, attempts: list[dict[str, Any]], settings: Settings,
    run: str,
) -> str | None:  # fmt: skip
    """What one attempt of ``job`` (run ``run``) means, decided in this one place: interrupted by the
    infrastructure, it runs again (up to ``interrupted_retries``); not successful, the retry policy may send
    it back, pausing the queue as it says; otherwise, or past those limits, the attempt is the task's end,
    recorded here. Returns why the task goes back to the front of its queue, or None once it has ended."""
    client, task_id, queue = store.client, job.id, job.origin
    this = {"started_at": result.started_at, "ended_at": result.ended_at, "error": result.error}
    if result.interrupted:
        attempts.append({**this, "kind": AttemptKind.INTERRUPTED, "run": run})
        final = f"{result.error} It was tried {interruptions(attempts)} time(s); resubmit it to try again."
        if runs_again(attempts, final, settings) and interrupt(store, task_id, queue, run, attempts):
            log.warning(
                "task %s interrupted (%s); it %s (attempt %d)", task_id, result.error,
                "runs again" if LAST_LOOK not in attempts[-1] else "only collects a kept outcome",
                len(attempts) + 1,
            )  # fmt: skip
            return AttemptKind.INTERRUPTED
        result.error = final
        attempts.pop()
    elif not result.success:
        state = queue_state.get(client, queue)
        decision = policy.decide(
            spec, result, attempts, settings, state.backoff_level, get_agent(spec.agent).default_retries
        )
        again = [*attempts, {**this, "kind": decision.kind, "reason": decision.reason}]
        if decision.action == policy.AGAIN and interrupt(store, task_id, queue, run, again):
            if decision.continue_session:
                store.continue_session(task_id, decision.continue_session)
            queue_state.pause(client, queue, decision.kind, decision.reason, decision.until)
            log.warning("task %s goes back to the front of queue %s: %s", task_id, queue, decision.reason)
            return decision.kind
    elif attempts:
        queue_state.succeeded(client, queue)  # a backoff starts from the beginning next time
    result.attempts = attempts
    if not end(store, result, queue, job, run):
        log.info("task %s already had a result, or was started again elsewhere; keeping that", task_id)
    return None
