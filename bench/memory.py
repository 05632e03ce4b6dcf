"""Memory: peak RSS of the handler, and of the worker with its work-horse, while streaming a lot of output.

A thread samples ``/proc/<pid>/status`` VmRSS every 50 ms: the handler alone,
and the worker plus all its descendants summed (the work-horse is a fork of
the worker, so shared pages count twice: the PSS sum, also recorded, does not
double-count). The baseline is the same processes' RSS while idle, just before.
"""

from __future__ import annotations

import os

from bench import children
from bench.context import Context
from bench.procs import RssSampler, Target, rss_bytes
from bench.report import Figure
from bench.streaming import MB, stream_task, wait_for_horse_reaped

SECTION = "memory"
MiB = 1024 * 1024


def run(ctx: Context, total_bytes: int) -> list[Figure]:
    wait_for_horse_reaped(ctx)
    idle_handler = rss_bytes(ctx.handler_pid)
    idle_worker = rss_bytes(ctx.worker_pid)
    targets = {
        "handler": Target(ctx.handler_pid),
        "worker": Target(ctx.worker_pid, tree=True),
        "redis": Target(ctx.redis_pid, pss=False),
        "reader (this process)": Target(os.getpid(), pss=False),
    }
    with RssSampler(targets, interval=0.05) as sampler:
        stream = stream_task(ctx, children.bulk(total_bytes))
    peaks = sampler.peaks
    details = {
        "streamed_bytes": total_bytes,
        "stream": stream.to_dict(),
        "samples": peaks["handler"].samples,
        "peak_rss_MiB": {name: round(peak.rss / MiB, 1) for name, peak in peaks.items()},
        "peak_pss_MiB": {name: round(peak.pss / MiB, 1) for name, peak in peaks.items() if peak.pss},
        "peak_work_horse_rss_MiB": round(peaks["worker"].child_rss / MiB, 1),
        "idle_rss_MiB": {"handler": round(idle_handler / MiB, 1), "worker": round(idle_worker / MiB, 1)},
    }
    label = f"{total_bytes / MB:.0f} MB"
    return [
        Figure(
            SECTION,
            f"handler peak RSS, streaming {label}",
            "MiB",
            peaks["handler"].rss / MiB,
            idle_handler / MiB,
            "idle",
            target=100,
            details=details,
        ),
        Figure(
            SECTION,
            f"worker + work-horse peak RSS, streaming {label}",
            "MiB",
            peaks["worker"].rss / MiB,
            idle_worker / MiB,
            "idle",
            target=100,
        ),
    ]
