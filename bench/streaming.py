"""Streaming throughput: bytes/s and lines/s from a child's stdout to a reader of ``handle.events()``.

The baseline is the same child read straight from a pipe by one Python process
(``os.read`` in 1 MiB chunks): the most any relay of that child could reach
on this machine. CPU seconds per process are recorded with each run, which is
what says where the time goes.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from bench import children
from bench.context import Context
from bench.procs import ProcStat, descendants, proc_stat
from bench.report import Figure

SECTION = "streaming"
MB = 1e6


@dataclass
class StreamRun:
    """One child's stdout, as received by a reader."""

    chars: int
    lines: int
    elapsed: float
    frames: int = 0
    to_first_output: float | None = None
    costs: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per process: CPU seconds, the kernel's share of them, minor page faults per MB streamed."""
    task_id: str | None = None

    @property
    def bytes_per_s(self) -> float:
        return self.chars / self.elapsed

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.elapsed

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes": self.chars,
            "lines": self.lines,
            "elapsed_s": round(self.elapsed, 4),
            "MB_per_s": round(self.bytes_per_s / MB, 1),
            "lines_per_s": round(self.lines_per_s),
            "frames": self.frames,
            "to_first_output_ms": None if self.to_first_output is None else round(self.to_first_output * 1000, 1),
            "costs": self.costs,
        }


def wait_for_horse_reaped(ctx: Context, timeout: float = 10.0) -> None:
    """The work-horse's CPU reaches the worker's counters once the worker has reaped it."""
    deadline = time.monotonic() + timeout
    while descendants(ctx.worker_pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _snapshot(ctx: Context) -> dict[str, ProcStat]:
    return {
        "handler": proc_stat(ctx.handler_pid),
        "worker": proc_stat(ctx.worker_pid),
        "redis": proc_stat(ctx.redis_pid),
        "reader": proc_stat(os.getpid()),
    }


def _costs(before: dict[str, ProcStat], after: dict[str, ProcStat], mb: float) -> dict[str, dict[str, float]]:
    """CPU seconds (and the kernel's share of them) and minor page faults per MB, per process."""
    used = {name: after[name] - before[name] for name in before}

    def entry(cpu: float, system: float, faults: int) -> dict[str, float]:
        return {
            "cpu_s": round(cpu, 3),
            "kernel_share": round(system / cpu, 2) if cpu else 0.0,
            "faults_per_MB": round(faults / mb, 1) if mb else 0.0,
        }

    handler, worker, redis, reader = used["handler"], used["worker"], used["redis"], used["reader"]
    return {
        "handler": entry(handler.cpu, handler.system, handler.faults),
        "child (reaped by the handler)": entry(handler.children_cpu, handler.children_system, handler.children_faults),
        "work-horse (reaped by the worker)": entry(worker.children_cpu, worker.children_system, worker.children_faults),
        "redis (and its AOF rewrites)": entry(
            redis.cpu + redis.children_cpu, redis.system + redis.children_system, redis.faults + redis.children_faults
        ),
        "reader (this process)": entry(reader.cpu, reader.system, reader.faults),
    }


def stream_task(ctx: Context, argv: list[str], timeout: float = 3600) -> StreamRun:
    """Submit ``argv`` as a task and consume its events until the result, counting stdout."""
    wait_for_horse_reaped(ctx)
    before = _snapshot(ctx)
    chars = lines = frames = 0
    first: float | None = None
    result: dict[str, Any] | None = None
    began = time.perf_counter()
    handle = ctx.runner.submit(agent="command", argv=argv, timeout=timeout)
    for event in handle.events(timeout=timeout):
        kind = event["type"]
        if kind == "output" and event["stream"] == "stdout":
            data = event["data"]
            if first is None:
                first = time.perf_counter() - began
            chars += len(data)
            lines += data.count("\n")
            frames += 1
        elif kind == "result":
            result = event["result"]
    elapsed = time.perf_counter() - began
    wait_for_horse_reaped(ctx)
    after = _snapshot(ctx)
    ctx.forget_task(handle.id)
    if result is None or not result.get("success"):
        raise RuntimeError(f"the streaming task did not succeed: {result and result.get('error')}")
    return StreamRun(chars, lines, elapsed, frames, first, _costs(before, after, chars / MB), handle.id)


def raw_pipe(argv: list[str]) -> StreamRun:
    """The same child read directly through a pipe by this process."""
    chars = lines = 0
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, bufsize=0)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while chunk := os.read(fd, 1 << 20):
        chars += len(chunk)
        lines += chunk.count(b"\n")
    proc.wait()
    proc.stdout.close()
    return StreamRun(chars, lines, time.perf_counter() - began)


def _best(runs: list[StreamRun]) -> StreamRun:
    return min(runs, key=lambda r: r.elapsed)


def run(ctx: Context, bulk_bytes: int, line_count: int, repeat: int = 2) -> list[Figure]:
    bulk_argv = children.bulk(bulk_bytes)
    lines_argv = children.lines(line_count)
    ours_bulk, raw_bulk, ours_lines, raw_lines = [], [], [], []
    for _ in range(repeat):  # interleaved, best of `repeat` each
        raw_bulk.append(raw_pipe(bulk_argv))
        ours_bulk.append(stream_task(ctx, bulk_argv))
        raw_lines.append(raw_pipe(lines_argv))
        ours_lines.append(stream_task(ctx, lines_argv))
    for run_ in (*ours_bulk, *raw_bulk):
        if run_.chars != bulk_bytes:
            raise RuntimeError(f"bulk stream delivered {run_.chars} of {bulk_bytes} bytes")
    for run_ in (*ours_lines, *raw_lines):
        if run_.lines != line_count:
            raise RuntimeError(f"line stream delivered {run_.lines} of {line_count} lines")
    bulk, bulk_raw, lines, lines_raw = _best(ours_bulk), _best(raw_bulk), _best(ours_lines), _best(raw_lines)
    bulk_details = {
        "bytes": bulk_bytes,
        "best_of": repeat,
        "ours": [r.to_dict() for r in ours_bulk],
        "raw_pipe": [r.to_dict() for r in raw_bulk],
    }
    lines_details = {
        "lines": line_count,
        "best_of": repeat,
        "ours": [r.to_dict() for r in ours_lines],
        "raw_pipe": [r.to_dict() for r in raw_lines],
    }
    return [
        Figure(
            SECTION,
            f"bulk stdout → events() reader ({bulk_bytes / MB:.0f} MB)",
            "MB/s",
            bulk.bytes_per_s / MB,
            bulk_raw.bytes_per_s / MB,
            "raw pipe",
            target=300,
            higher_is_better=True,
            details=bulk_details,
        ),
        Figure(
            SECTION,
            "bulk stdout, share of raw pipe",
            "MB/s",
            bulk.bytes_per_s / MB,
            bulk_raw.bytes_per_s / MB,
            "raw pipe",
            target=0.30,
            target_on="ratio",
            higher_is_better=True,
        ),
        Figure(
            SECTION,
            f"short lines → events() reader ({line_count / 1e6:g} M lines)",
            "lines/s",
            lines.lines_per_s,
            lines_raw.lines_per_s,
            "raw pipe",
            target=1e6,
            higher_is_better=True,
            details=lines_details,
        ),
    ]
