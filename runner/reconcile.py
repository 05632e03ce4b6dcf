"""RQ's own tools, kept coherent with the tasks' records.

`rq` and rq-dashboard act on RQ's jobs without knowing our records. What each of
their actions becomes (docs/reliability.md, "RQ's tools"):

* **Empty queue / delete a job** (rq-dashboard, ``rq empty``, ``Job.delete``): the
  job is gone, so the task can never run. A waiting task whose job is gone ends
  ``cancelled`` with a sentence saying how, at the worker's next look
  (:class:`Reconciler`, every :data:`LOOK_EVERY` seconds while it is idle).
* **A chain left waiting**: a deferred task whose predecessor has ended is settled
  at the same look, as that end would have settled it (an end recorded by a process
  that died at once, or by a Redis that lost its last second, may never have).
* **Requeue a failed task** (rq-dashboard, ``rq requeue``): refused. The task has
  ended and its dependents were settled; running it again would make its record
  lie. The worker files it back as failed and logs :data:`REQUEUE_REFUSED`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import redis
from rq.job import Job

from runner import keys, lifecycle
from runner.errors import UnknownTask
from runner.store import TaskStore
from runner.vocabulary import CancelOutcome, Status

log = logging.getLogger("ccx.worker")

LOOK_EVERY = 30.0
"""Seconds between an idle worker's looks for waiting tasks whose RQ job was deleted."""
LOOK_AT = 1000
"""The newest tasks of the queue one look covers (in pages of :data:`PAGE`)."""
PAGE = 200

JOB_DELETED = (
    "Cancelled: its RQ job was deleted outside cc-execute (rq-dashboard's Empty queue or Delete, `rq empty`), "
    "so it could never run; resubmit it to run it."
)
REQUEUE_REFUSED = (
    "task %s had already ended (%s) and was put back in the queue by RQ's requeue (rq-dashboard or `rq requeue`); "
    "it is not run again, so its record stays true: resubmit it (ccx submit) to run it again."
)
WAITING = frozenset({Status.QUEUED.encode(), Status.DEFERRED.encode(), Status.SCHEDULED.encode()})


@dataclass
class Waiting:
    """What one look found among the queue's newest tasks."""

    jobless: list[str] = field(default_factory=list)
    """Waiting (queued, deferred, scheduled) with no RQ job: they can never run."""
    deferred: list[str] = field(default_factory=list)
    """Deferred with their job: waiting for a predecessor, which may be among the jobless."""


def scan(client: redis.Redis, queue: str, limit: int = LOOK_AT) -> Waiting:
    """The waiting tasks among the newest ``limit`` of ``queue``, a page of :data:`PAGE` per round trip."""
    found = Waiting()
    for start in range(0, limit, PAGE):
        ids = [raw.decode() for raw in client.zrevrange(keys.index_key(queue), start, start + PAGE - 1)]
        if not ids:
            break
        with client.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hget(keys.info_key(task_id), "status")
                pipe.exists(Job.key_for(task_id))
            replies = pipe.execute()
        for index, task_id in enumerate(ids):
            status, job_exists = replies[2 * index], replies[2 * index + 1]
            if status in WAITING and not job_exists:
                found.jobless.append(task_id)
            elif status == Status.DEFERRED.encode():
                found.deferred.append(task_id)
    return found


class Reconciler:
    """An idle worker's periodic look: waiting tasks whose RQ job someone deleted end cancelled, saying how."""

    def __init__(self, store: TaskStore, queue: str, every: float = LOOK_EVERY) -> None:
        self.store = store
        self.queue = queue
        self.every = every
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every

    def run(self) -> list[str]:
        """End the jobless waiting tasks cancelled; then settle the deferred tasks whose predecessor has ended: RQ's
        empty deleted the predecessors' lists of dependents too, so their ends could not reach them; and an end
        whose process died, or whose Redis lost its last second, may have been recorded without settling them."""
        self._last = time.monotonic()
        found = scan(self.store.client, self.queue)
        ended = []
        for task_id in found.jobless:
            with contextlib.suppress(UnknownTask):
                if lifecycle.cancel(self.store, task_id, JOB_DELETED) == CancelOutcome.CANCELLED:
                    log.warning("task %s: %s", task_id, JOB_DELETED)
                    ended.append(task_id)
        for task_id in found.deferred:
            job = lifecycle.fetch_job(self.store.client, task_id)
            for after in job.dependency_ids if job is not None else ():
                self._settle(task_id, after, job.allow_dependency_failures)
        return ended

    def _settle(self, task_id: str, after: str, after_any: bool) -> None:
        predecessor = self.store.get(after)
        if predecessor is None or predecessor.result is None:
            return  # still to come: its end settles this task
        job = lifecycle.fetch_job(self.store.client, after)
        if job is None:  # deleted with RQ's tools: its list of dependents went with it
            lifecycle.settle_new_dependent(self.store, task_id, after, after_any)
            return
        log.warning("task %s: its predecessor %s had ended (%s) without settling it; settled now", task_id, after,
                    predecessor.result.status)  # fmt: skip
        lifecycle.settle_lost_end(self.store, job, predecessor.result)
