"""Taking the line: putting a job back in its place, and reclaiming what a previous holder took.

RQ moves a dequeued job from the queue into its intermediate list, and from there
into the started registry once a work-horse prepares it. A job can be stranded in
either place without ever having run: a worker that dequeued it and then found the
queue held, or its lock lost; a worker frozen or cut off while its blocking dequeue
was pending (Redis hands it the next job all the same); a horse refused as stale.
RQ's own maintenance would later fail such a job ("stuck in intermediate queue").
Here it goes back to the front of its queue instead, and only while the task's
record says nobody runs it and it has not ended, so a job handed back twice, or by
two workers, is in the queue once.

Taking a job is fenced by the queue lock (:func:`fenced_queue_class`): a worker
takes the head job only in a script that checks it still holds the lock, and waits
for work without taking any. So a worker that lost the queue while cut off or frozen
(and does not know it yet) never takes a job from under its successor, whose next
job would then run first; and a pending wait of a frozen worker swallows nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue
from rq.exceptions import DequeueTimeout
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus

from runner import keys
from runner.errors import LockNotHeld

log = logging.getLogger("ccx.worker")

# KEYS: the queue's list, its intermediate list, the task's record, RQ's job hash, the started registry.
# ARGV: job id, started-registry member ('' = none), RQ's status queued.
# Leaves the intermediate list and the started registry; then, unless the task ended, a run holds it, or it is
# no task of ours (no record, or no job), goes first in line exactly once. Returns 1 when it was put back.
_HAND_BACK = """
redis.call('LREM', KEYS[2], 0, ARGV[1])
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[5], ARGV[2]) end
if redis.call('HEXISTS', KEYS[3], 'result') == 1 or redis.call('HEXISTS', KEYS[3], 'run') == 1 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 or redis.call('EXISTS', KEYS[4]) == 0 then return 0 end
redis.call('LREM', KEYS[1], 0, ARGV[1])
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[4], 'status', ARGV[3])
return 1
"""

# KEYS: the queue's list, its intermediate list, the queue lock. ARGV: the lock's owner.
# Moves the head job into the intermediate list, as RQ's dequeue does, only while the lock is the owner's.
# Returns the job id, false when the queue is empty, or -1 when the lock is not the owner's.
_TAKE = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -1 end
return redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
"""


def fenced_queue_class(lock_key: str, owner: str) -> type[Queue]:
    """RQ's Queue, for a worker whose lock is ``lock_key`` held as ``owner``: its dequeue takes the head job only
    while that lock is the owner's (else :class:`LockNotHeld`), and waits for work without taking any."""

    class FencedQueue(Queue):
        @classmethod
        def lmove(cls, connection: redis.Redis, queue_key: str, timeout: int | None) -> tuple[str, bytes] | None:
            take = connection.register_script(_TAKE)
            names = [queue_key, IntermediateQueue.get_intermediate_queue_key(queue_key), lock_key]
            deadline = time.monotonic() + (timeout or 0)
            while True:
                taken = take(keys=names, args=[owner])
                if taken == -1:
                    raise LockNotHeld(lock_key)
                if taken is not None:
                    return queue_key, taken
                left = deadline - time.monotonic()
                if timeout is None:
                    return None
                # Pops the head and pushes it back where it was: a wait for work that takes nothing.
                if left <= 0 or connection.blmove(queue_key, queue_key, left, "LEFT", "LEFT") is None:
                    raise DequeueTimeout(timeout, queue_key)

        @classmethod
        def lpop(cls, queue_keys: Any, timeout: int | None, connection: redis.Redis | None = None) -> Any:
            # RQ takes this path for several queues or a Redis older than 6.2: one queue per worker here, and
            # the fenced take needs LMOVE (Redis 6.2).
            raise RuntimeError("cc-execute needs Redis 6.2 or newer (LMOVE), and one queue per worker")

    return FencedQueue


RECLAIM_EVERY = 5.0
"""Seconds between an idle holder's looks for jobs a previous (frozen, cut-off) holder took and never started."""


def hand_back(client: redis.Redis | redis.client.Pipeline, job_id: str, queue: Queue, member: str = "") -> object:
    """Put ``job_id`` back first in line (see the module's rules), in one round trip; ``member`` is its
    started-registry entry, if it has one. On a pipeline, queues the call and returns the pipeline."""
    script = client.register_script(_HAND_BACK) if isinstance(client, redis.Redis) else None
    names = [queue.key, queue.intermediate_queue.key, keys.info_key(job_id), Job.key_for(job_id)]
    names.append(queue.started_job_registry.key)
    if script is not None:
        return script(keys=names, args=[job_id, member, JobStatus.QUEUED])
    return client.eval(_HAND_BACK, len(names), *names, job_id, member, JobStatus.QUEUED)


@dataclass
class Stranded:
    """What a previous holder left: jobs taken but not started, and started entries whose run is gone."""

    taken: list[str]
    started: list[tuple[str, str]]
    """(job id, registry member) pairs."""


def stranded(client: redis.Redis, queue: Queue) -> Stranded:
    """Jobs in the intermediate list, and started-registry entries without a live run lease, in one round trip."""
    registry = queue.started_job_registry
    with client.pipeline(transaction=False) as pipe:
        pipe.lrange(queue.intermediate_queue.key, 0, -1)
        pipe.zrange(registry.key, 0, -1)
        taken, members = pipe.execute()
    started = []
    for raw in members:
        member = raw.decode()
        started.append((registry.parse_job_id(member), member))
    return Stranded([job_id.decode() for job_id in taken], started)


class Reclaimer:
    """An idle holder's periodic look: jobs stranded by a previous holder go back first in line, in order.

    RQ calls the worker's heartbeat, where this runs, also right after a dequeue, while the job just taken is
    still in the intermediate list for a moment: so a job is handed back only once two looks in a row have
    seen it there, as RQ's own maintenance does (its ``first_seen``)."""

    def __init__(self, client: redis.Redis, queue: Queue, every: float = RECLAIM_EVERY) -> None:
        self.client = client
        self.queue = queue
        self.every = every
        self._last = time.monotonic()
        self._seen: set[str] = set()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every

    def run(self) -> list[str]:
        """Hand back what was taken and never started; returns their ids. Started entries whose run lease is
        gone are left to :func:`runner.worker.recover_abandoned`, which decides what their attempt meant."""
        self._last = time.monotonic()
        taken = stranded(self.client, self.queue).taken
        returned = []
        for job_id in reversed(taken):  # LPUSH in reverse keeps their order at the front
            if job_id in self._seen and hand_back(self.client, job_id, self.queue):
                log.warning("task %s had been taken by a worker that never started it; it is first in line", job_id)
                returned.append(job_id)
        self._seen = set(taken) - set(returned)
        return returned
