"""``python -m bench chaos``: a randomized fault campaign with a history checker, as Jepsen does.

Simulated machines (network namespaces: redis, handler, worker-1 serving, worker-2 standing by, one or two
orchestrators) run the real services; the orchestrators submit chains and independent tasks, each a
process that records its own start and end; faults drawn from the seed (partitions, SIGSTOP, SIGKILL of
worker, work-horse and handler, handler and Redis restarts) hit them while users cancel, pause and resubmit;
then a checker reads the whole history and names every violation of the guarantees. The seed gives back
the schedule: ``--seed N`` replays it. Exit status 1 when any violation was found.

Modules: ``plan`` (the schedule, from the seed), ``cluster`` (machines and supervised services), ``faults``
(injecting them), ``orchestrator`` (the orchestrator process and the task's child), ``history`` (the
records, as plain data), ``checker`` (a pure function over them), ``driver`` (one campaign), ``report``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, help="the schedule's seed (default: a random one, printed)")
    parser.add_argument("--minutes", type=float, default=5.0, help="how long faults are injected (default 5)")
    parser.add_argument("--faults", type=int, help="faults to inject (default: three a minute)")
    parser.add_argument("--orchestrators", type=int, choices=(1, 2), default=2, help="submitting machines")
    parser.add_argument(
        "--drain",
        type=float,
        default=240.0,
        help="seconds without progress after which a pending task counts as lost (default 240)",
    )
    parser.add_argument("--lossy-redis", action="store_true", help="also restart Redis with its data deleted")
    parser.add_argument("--dir", type=Path, help="where the history and logs go (default: a new temp dir)")
    parser.add_argument("--check", type=Path, metavar="DIR", help="only check the history a campaign left in DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    import pytest

    from bench.chaos.driver import Options, recheck, run
    from bench.chaos.plan import make_plan
    from bench.chaos.report import render, schedule

    args = build_parser().parse_args(argv)
    if args.check is not None:
        campaign = recheck(args.check)
        print(render(campaign), flush=True)
        return 1 if campaign.violations else 0
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    options = Options(seed, args.minutes, args.faults, args.orchestrators, args.drain, args.lossy_redis, args.dir)
    print(f"chaos campaign, seed {seed}: {options.command()}", flush=True)
    plan = make_plan(seed, options.minutes, options.fault_count, options.orchestrators, options.lossy_redis)
    print("\n".join(["fault schedule:", *schedule(plan)]), flush=True)
    try:
        campaign = run(options)
    except pytest.skip.Exception as exc:
        print(f"cannot run the campaign here: {exc.msg}", file=sys.stderr)
        return 2
    print(render(campaign), flush=True)
    return 1 if campaign.violations else 0
