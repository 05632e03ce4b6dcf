"""Queue scale: how fast tasks can be enqueued, and how fast the one worker drains trivial ones.

Enqueueing goes to a scratch queue that no worker serves (its keys are deleted
afterwards); the baseline is a bare ``Queue.enqueue_call`` of the bare-RQ job
on another scratch queue. Draining runs ``true`` tasks on the stack's worker;
the baseline is the bare RQ worker draining as many bare jobs. Drain rate is
tasks / (last end − first start), from the tasks' own timestamps.
"""

from __future__ import annotations

import time
from datetime import datetime

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from bench.context import Context
from bench.report import Figure
from bench.rqbase import JOB_FUNCTION, wait_for_rq_result
from runner.client import Runner

SECTION = "queue scale"
TRUE = ["true"]


def _delete_queue(client: redis.Redis, queue_name: str, job_ids: list[str], task_records: bool) -> None:
    """Remove every key a scratch queue's tasks created."""
    for start in range(0, len(job_ids), 1000):
        chunk = job_ids[start : start + 1000]
        keys = [f"rq:job:{job_id}" for job_id in chunk]
        if task_records:
            keys += [keys.info_key(job_id) for job_id in chunk]
        client.delete(*keys)
    client.delete(f"rq:queue:{queue_name}", keys.index_key(queue_name))
    client.srem("rq:queues", f"rq:queue:{queue_name}")
    for key in client.scan_iter(match=f"*{queue_name}*", count=1000):
        client.delete(key)


def enqueue_ours(ctx: Context, count: int) -> float:
    name = ctx.scratch_queue("enqueue")
    runner = Runner(redis_url=ctx.stack.redis_url, queue=name)
    ids = []
    began = time.perf_counter()
    for _ in range(count):
        ids.append(runner.submit(agent="command", argv=TRUE).id)
    elapsed = time.perf_counter() - began
    _delete_queue(ctx.redis, name, ids, task_records=True)
    runner.redis.close()
    return count / elapsed


def enqueue_bare(ctx: Context, count: int) -> float:
    name = ctx.scratch_queue("enqueue-bare")
    queue = Queue(name, connection=ctx.redis, serializer=JSONSerializer)
    ids = []
    began = time.perf_counter()
    for _ in range(count):
        ids.append(queue.enqueue_call(JOB_FUNCTION, args=(TRUE,)).id)
    elapsed = time.perf_counter() - began
    _delete_queue(ctx.redis, name, ids, task_records=False)
    return count / elapsed


def _iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def drain_ours(ctx: Context, count: int) -> tuple[float, float]:
    """(tasks/s, seconds) for ``count`` ``true`` tasks on the stack's worker."""
    handles = [ctx.runner.submit(agent="command", argv=TRUE, timeout=60) for _ in range(count)]
    handles[-1].result(timeout=count * 2 + 60)
    starts, ends = [], []
    for handle in handles:
        record = ctx.runner.get(handle.id)
        if record is None or record.started_at is None or record.ended_at is None or record.result is None:
            raise RuntimeError(f"task {handle.id} has no start/end time")
        if not record.result.success:
            raise RuntimeError(f"task {handle.id} failed: {record.result.error}")
        starts.append(_iso(record.started_at))
        ends.append(_iso(record.ended_at))
    span = max(ends) - min(starts)
    return count / span, span


def drain_bare(ctx: Context, count: int) -> tuple[float, float]:
    jobs = [ctx.bare_queue.enqueue_call(JOB_FUNCTION, args=(TRUE,), result_ttl=600) for _ in range(count)]
    if wait_for_rq_result(jobs[-1], count * 2 + 60) is None:
        raise RuntimeError("the bare RQ worker did not drain its jobs in time")
    fetched = Job.fetch_many([job.id for job in jobs], connection=ctx.redis, serializer=JSONSerializer)
    starts = [job.started_at.timestamp() for job in fetched if job is not None and job.started_at]
    ends = [job.ended_at.timestamp() for job in fetched if job is not None and job.ended_at]
    if len(starts) != count or len(ends) != count:
        raise RuntimeError("some bare RQ jobs have no start/end time")
    span = max(ends) - min(starts)
    return count / span, span


def run(ctx: Context, enqueue_count: int, drain_count: int) -> list[Figure]:
    ours_enqueue = enqueue_ours(ctx, enqueue_count)
    bare_enqueue = enqueue_bare(ctx, enqueue_count)
    ours_drain, ours_span = drain_ours(ctx, drain_count)
    bare_drain, bare_span = drain_bare(ctx, drain_count)
    return [
        Figure(
            SECTION,
            f"enqueue {enqueue_count:,} tasks (Runner.submit loop)",
            "tasks/s",
            ours_enqueue,
            bare_enqueue,
            "bare enqueue_call",
            higher_is_better=True,
            details={"count": enqueue_count},
        ),
        Figure(
            SECTION,
            f"drain {drain_count:,} `true` tasks (one worker)",
            "tasks/s",
            ours_drain,
            bare_drain,
            "bare RQ worker",
            higher_is_better=True,
            details={"count": drain_count, "ours_span_s": ours_span, "bare_span_s": bare_span},
        ),
    ]
