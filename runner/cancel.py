"""Cancelling tasks: a queued task never runs; a running one is stopped by its work-horse."""

from __future__ import annotations

import contextlib
import logging

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from runner import events
from runner.errors import UnknownTask
from runner.spec import TaskResult
from runner.store import TaskStore

log = logging.getLogger("ccx.runner")

CANCELLED = "cancelled"
CANCELLING = "cancelling"
ALREADY_ENDED = "ended"


def fetch_job(client: redis.Redis, task_id: str) -> Job | None:
    try:
        return Job.fetch(task_id, connection=client, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def cancel_task(store: TaskStore, task_id: str, reason: str | None = None) -> str:
    """Cancel ``task_id``; returns :data:`CANCELLED`, :data:`CANCELLING` or :data:`ALREADY_ENDED`.

    The cancel flag is set and announced first, so a work-horse that dequeues the
    task at this very moment sees it and does not start it.
    """
    client = store.client
    record = store.get(task_id)
    if record is None:
        raise UnknownTask(task_id)
    if record.result is not None:
        return ALREADY_ENDED
    message = reason or "The task was cancelled before it started."
    pipe = client.pipeline()
    pipe.set(events.cancel_key(task_id), message, ex=store.log_ttl)
    pipe.publish(events.cancel_key(task_id), message)
    pipe.execute()
    job = fetch_job(client, task_id)
    status = job.get_status() if job is not None else None
    if status == JobStatus.STARTED:
        return CANCELLING
    if job is not None:
        with contextlib.suppress(InvalidJobOperation):
            job.cancel()
    ended = events.now_iso()
    if store.finalize(
        TaskResult(id=task_id, cancelled=True, error=message, ended_at=ended, metadata=record.spec.metadata),
        record.queue,
    ):
        log.info("task %s cancelled before it started", task_id)
        if job is not None:
            cancel_dependents(store, job, "was cancelled", include_after_any=True)
    return CANCELLED


def cancel_dependents(store: TaskStore, job: Job, what_happened: str, include_after_any: bool) -> None:
    """Cancel tasks submitted with ``after=job``; RQ itself runs the ``after_any`` ones after a failure."""
    for dependent_id in job.dependent_ids:
        dependent = fetch_job(store.client, dependent_id)
        if dependent is None or (dependent.allow_dependency_failures and not include_after_any):
            continue
        reason = f"Not run: it was to run after task {job.id}, which {what_happened}; submit it with after_any to run regardless."
        with contextlib.suppress(UnknownTask):
            cancel_task(store, dependent_id, reason)


def release_dependents(store: TaskStore, job: Job, succeeded: bool) -> None:
    """Mark ``queued`` the dependents RQ now runs: all of them after a success, the ``after_any`` ones after
    a failure (the others were cancelled). Their record said ``deferred`` until now."""
    for dependent_id in job.dependent_ids:
        dependent = fetch_job(store.client, dependent_id)
        if dependent is not None and (succeeded or dependent.allow_dependency_failures):
            store.released(dependent_id, dependent.origin)
