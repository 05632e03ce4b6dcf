"""Per-task overhead: submit → result of ``true``, against a bare RQ job and a direct spawn.

The three are interleaved (one of each per round) so background load on the
machine hits them alike. For cc-execute the task records' timestamps also give
a breakdown of where the time goes.
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime

from bench.context import Context
from bench.procs import proc_stat
from bench.report import Figure
from bench.rqbase import JOB_FUNCTION, wait_for_rq_result
from bench.stats import median, percentile, summary_ms

SECTION = "per-task overhead"
TRUE = ["true"]


def _ours(ctx: Context) -> tuple[float, str]:
    began = time.perf_counter()
    handle = ctx.runner.submit(agent="command", argv=TRUE, timeout=60)
    result = handle.result(timeout=60)
    elapsed = time.perf_counter() - began
    if not result.success:
        raise RuntimeError(f"`true` failed as a cc-execute task: {result.error}")
    return elapsed, handle.id


def _bare(ctx: Context) -> float:
    began = time.perf_counter()
    job = ctx.bare_queue.enqueue_call(JOB_FUNCTION, args=(TRUE,), result_ttl=600)
    result = wait_for_rq_result(job, 60)
    elapsed = time.perf_counter() - began
    if result is None or result.return_value != 0:
        raise RuntimeError(f"the bare RQ job did not return 0: {result!r}")
    return elapsed


def _spawn() -> float:
    began = time.perf_counter()
    subprocess.run(TRUE, check=True)
    return time.perf_counter() - began


def _process_costs(ctx: Context) -> dict[str, dict[str, float]]:
    """CPU ms and minor page faults used so far by the work-horses of each worker and by the handler.

    A work-horse's counts reach its worker's reaped-children counters once the
    worker has waited for it; the handler's own counters exclude the commands.
    """
    time.sleep(0.2)  # let the last work-horse be reaped
    costs = {}
    for side, pid in (("ours_work_horse", ctx.worker_pid), ("bare_rq_work_horse", ctx.bare_worker.pid)):
        stat = proc_stat(pid)
        costs[side] = {"cpu_ms": stat.children_cpu * 1000, "minor_faults": float(stat.children_faults)}
    handler = proc_stat(ctx.handler_pid)
    costs["handler"] = {"cpu_ms": handler.cpu * 1000, "minor_faults": float(handler.faults)}
    return costs


def _iso(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def _breakdown(
    ctx: Context, task_ids: list[str], submit_wall: dict[str, float], received_wall: dict[str, float]
) -> dict[str, float]:
    """Medians (ms) of the phases of our tasks, from their records (millisecond timestamps)."""
    phases: dict[str, list[float]] = {
        "submit_to_started": [],
        "started_to_ended": [],
        "process_run": [],
        "ended_to_received": [],
    }
    for task_id in task_ids:
        record = ctx.runner.get(task_id)
        if record is None or record.result is None:
            continue
        started, ended = _iso(record.started_at), _iso(record.ended_at)
        if started is None or ended is None:
            continue
        phases["submit_to_started"].append(started - submit_wall[task_id])
        phases["started_to_ended"].append(ended - started)
        phases["ended_to_received"].append(received_wall[task_id] - ended)
        if record.result.duration_ms is not None:
            phases["process_run"].append(record.result.duration_ms / 1000)
    return {f"{name}_median_ms": median(values) * 1000 for name, values in phases.items() if values}


def run(ctx: Context, count: int, warmup: int = 5) -> list[Figure]:
    for _ in range(warmup):
        _ours(ctx)
        _bare(ctx)
        _spawn()
    ours: list[float] = []
    bare: list[float] = []
    spawn: list[float] = []
    before = _process_costs(ctx)
    ids: list[str] = []
    submit_wall: dict[str, float] = {}
    received_wall: dict[str, float] = {}
    for _ in range(count):
        wall = time.time()
        elapsed, task_id = _ours(ctx)
        received_wall[task_id] = time.time()
        ours.append(elapsed)
        ids.append(task_id)
        submit_wall[task_id] = wall
        bare.append(_bare(ctx))
        spawn.append(_spawn())
    after = _process_costs(ctx)
    details = {
        "ours": summary_ms(ours),
        "bare_rq": summary_ms(bare),
        "spawn": summary_ms(spawn),
        "ours_breakdown": _breakdown(ctx, ids, submit_wall, received_wall),
        "per_task_costs": {
            side: {name: round((after[side][name] - before[side][name]) / count, 2) for name in after[side]}
            for side in after
        },
    }
    ms = 1000
    return [
        Figure(
            SECTION,
            "task submit→result, median",
            "ms",
            median(ours) * ms,
            median(bare) * ms,
            "bare RQ job",
            target=1.3,
            target_on="ratio",
            details=details,
        ),
        Figure(
            SECTION,
            "task submit→result, p95",
            "ms",
            percentile(ours, 95) * ms,
            percentile(bare, 95) * ms,
            "bare RQ job",
            target=1.3,
            target_on="ratio",
        ),
        Figure(SECTION, "task submit→result, median", "ms", median(ours) * ms, median(spawn) * ms, "spawn `true`"),
    ]
