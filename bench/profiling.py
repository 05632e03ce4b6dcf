"""``--profile``: py-spy samples of the handler and the worker (with its work-horses) during a run.

Each profile is written in py-spy's raw (collapsed-stack) format next to the
results, plus a summary of the functions with the most samples (self and
inclusive), which is what docs/performance.md quotes.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import children
from bench.context import Context
from bench.streaming import stream_task

_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def recording(pid: int, output: Path, subprocesses: bool = False, rate: int = 200) -> Iterator[None]:
    """Sample ``pid`` (and its children) with py-spy until the block ends."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed: `pip install py-spy` to use --profile")
    args = [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking"]
    args += ["--output", str(output)] + (["--subprocesses"] if subprocesses else [])
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # py-spy attaches
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summarize(raw: Path, top: int = 15) -> dict[str, Any]:
    """The functions with most samples: self (the frame running) and inclusive (anywhere on the stack)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    if not raw.exists():
        return {"samples": 0, "self": [], "inclusive": []}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_LINE.sub(")", frame) for frame in stack.split(";") if not frame.startswith("process ")]
        if not frames:
            continue
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def share(counter: collections.Counter[str], skip_roots: bool = False) -> list[tuple[str, float]]:
        if not total:
            return []
        # Frames on (nearly) every stack, such as the event loop's, say nothing: skip them.
        ranked = [(name, n) for name, n in counter.most_common() if not (skip_roots and n >= 0.95 * total)]
        return [(name, round(100 * n / total, 1)) for name, n in ranked[:top]]

    return {"samples": total, "self": share(own), "inclusive": share(inclusive, skip_roots=True)}


def _lines_of(title: str, summary: dict[str, Any]) -> list[str]:
    out = [f"== {title}: {summary['samples']} samples", "-- self"]
    out += [f"{pct:5.1f}%  {name}" for name, pct in summary["self"]]
    out += ["-- inclusive (frames on ≥ 95% of stacks left out)"]
    out += [f"{pct:5.1f}%  {name}" for name, pct in summary["inclusive"]]
    return out


def run(ctx: Context, bulk_bytes: int, tasks: int) -> dict[str, Any]:
    """Profile a bulk stream and a series of trivial tasks; return the summaries."""
    out_dir = ctx.results_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, Any] = {}
    files = {
        "bulk_handler": out_dir / "profile-bulk-handler.txt",
        "bulk_worker": out_dir / "profile-bulk-worker.txt",
        "tasks_handler": out_dir / "profile-tasks-handler.txt",
        "tasks_worker": out_dir / "profile-tasks-worker.txt",
    }
    for path in files.values():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    with (
        recording(ctx.handler_pid, files["bulk_handler"]),
        recording(ctx.worker_pid, files["bulk_worker"], subprocesses=True),
    ):
        bulk = stream_task(ctx, children.bulk(bulk_bytes))
    summaries["bulk"] = {"stream": bulk.to_dict()}
    with (
        recording(ctx.handler_pid, files["tasks_handler"]),
        recording(ctx.worker_pid, files["tasks_worker"], subprocesses=True),
    ):
        began = time.perf_counter()
        for _ in range(tasks):
            ctx.runner.submit(agent="command", argv=["true"], timeout=60).result(timeout=60)
        summaries["tasks"] = {"count": tasks, "seconds": round(time.perf_counter() - began, 3)}
    text: list[str] = []
    for key, path in files.items():
        summary = summarize(path)
        summaries[key] = summary
        text += [*_lines_of(key, summary), ""]
    (out_dir / "profile-summary.txt").write_text("\n".join(text))
    return summaries
