"""``python -m bench``: start a local stack, measure every figure against its baseline, report.

Prints a table and writes ``bench/results/latest.json``. ``--quick`` runs
small sizes (about a minute); the default sizes take a few minutes.
``python -m bench chaos`` runs the randomized fault campaign instead (bench/chaos, its own options).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench import latency, memory, overhead, profiling, roundtrips, scale, streaming
from bench.context import REPO, Context, bench_context
from bench.report import Figure, machine, table

SECTIONS = ("overhead", "roundtrips", "latency", "streaming", "memory", "scale")
"""In this order: latency is measured before the bulk streams load Redis's append-only file."""


@dataclass(frozen=True)
class Sizes:
    tasks: int
    bulk_bytes: int
    lines: int
    latency_lines: int
    memory_bytes: int
    enqueue: int
    drain: int
    repeat: int


MB = 1_000_000

FULL = Sizes(
    tasks=200,
    bulk_bytes=1000 * MB,
    lines=5_000_000,
    latency_lines=500,
    memory_bytes=2000 * MB,
    enqueue=100_000,
    drain=1000,
    repeat=2,
)
QUICK = Sizes(
    tasks=40,
    bulk_bytes=100 * MB,
    lines=500_000,
    latency_lines=200,
    memory_bytes=200 * MB,
    enqueue=5000,
    drain=100,
    repeat=1,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a fast look")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--tasks", type=int, help="tasks for the per-task overhead (default 200)")
    parser.add_argument("--bulk-mb", type=int, help="MB (10^6 bytes) of bulk output for throughput (default 1000)")
    parser.add_argument("--lines", type=int, help="short lines for lines/s (default 5,000,000)")
    parser.add_argument("--latency-lines", type=int, help="lines, one per 10 ms, for latency (default 500)")
    parser.add_argument("--memory-mb", type=int, help="MB streamed while sampling memory (default 2000)")
    parser.add_argument("--enqueue", type=int, help="tasks enqueued for the enqueue rate (default 100,000)")
    parser.add_argument("--drain", type=int, help="`true` tasks drained for the drain rate (default 1,000)")
    parser.add_argument("--repeat", type=int, help="streaming runs per side, best kept (default 2)")
    parser.add_argument("--redis-server", help="use this redis-server binary instead of the one LocalStack finds")
    parser.add_argument("--profile", action="store_true", help="also record py-spy profiles (needs py-spy)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "latest.json", help="JSON output")
    parser.add_argument("--check", action="store_true", help="exit 1 when a figure misses its target")
    return parser


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    return Sizes(
        tasks=args.tasks or base.tasks,
        bulk_bytes=args.bulk_mb * MB if args.bulk_mb else base.bulk_bytes,
        lines=args.lines or base.lines,
        latency_lines=args.latency_lines or base.latency_lines,
        memory_bytes=args.memory_mb * MB if args.memory_mb else base.memory_bytes,
        enqueue=args.enqueue or base.enqueue,
        drain=args.drain or base.drain,
        repeat=args.repeat or base.repeat,
    )


def section_runners(sizes: Sizes) -> dict[str, Callable[[Context], list[Figure]]]:
    return {
        "overhead": lambda ctx: overhead.run(ctx, sizes.tasks),
        "roundtrips": lambda ctx: roundtrips.run(ctx, max(10, sizes.tasks // 10)),
        "streaming": lambda ctx: streaming.run(ctx, sizes.bulk_bytes, sizes.lines, sizes.repeat),
        "latency": lambda ctx: latency.run(ctx, sizes.latency_lines),
        "memory": lambda ctx: memory.run(ctx, sizes.memory_bytes),
        "scale": lambda ctx: scale.run(ctx, sizes.enqueue, sizes.drain),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["chaos"]:  # a subcommand of its own: the fault campaign, not a benchmark (bench/chaos)
        from bench.chaos import main as chaos

        return chaos(argv[1:])
    args = build_parser().parse_args(argv)
    sizes = sizes_from(args)
    chosen = args.only or list(SECTIONS)
    runners = section_runners(sizes)
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "sizes": sizes.__dict__,
        "quick": args.quick,
        "redis_server": args.redis_server,
        "sections": {},
        "errors": {},
    }
    figures: list[Figure] = []
    results_dir = args.json.parent
    print(f"cc-execute bench: {', '.join(chosen)}{' (quick)' if args.quick else ''}", file=sys.stderr)
    with bench_context(results_dir, redis_binary=args.redis_server) as ctx:
        for name in chosen:
            print(f"  {name} …", file=sys.stderr, flush=True)
            began = time.perf_counter()
            try:
                section = runners[name](ctx)
            except Exception as exc:
                traceback.print_exc()
                report["errors"][name] = f"{type(exc).__name__}: {exc}"
                continue
            figures.extend(section)
            report["sections"][name] = {"seconds": round(time.perf_counter() - began, 1)}
        if args.profile:
            print("  profile …", file=sys.stderr, flush=True)
            try:
                report["profile"] = profiling.run(ctx, min(sizes.bulk_bytes, 500 * MB), min(sizes.tasks, 100))
            except Exception as exc:
                traceback.print_exc()
                report["errors"]["profile"] = f"{type(exc).__name__}: {exc}"
    report["figures"] = [figure.to_dict() for figure in figures]
    report["table"] = table(figures)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print(report["table"])
    print(f"\nwritten to {args.json}", file=sys.stderr)
    if report["errors"]:
        return 1
    if args.check and any(figure.passed is False for figure in figures):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
