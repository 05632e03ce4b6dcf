"""The campaign itself: build the machines, start the services and orchestrators, inject the plan's faults,
heal, drain, stop everything, then read the history and check it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.chaos.checker import Violation, check
from bench.chaos.cluster import PY, QUEUE, REPO, Cluster
from bench.chaos.faults import Injector
from bench.chaos.history import History, load
from bench.chaos.plan import Plan, make_plan
from runner.stack import terminate
from tests.support.netns import Network
from tests.support.processes import pids_with_marker


@dataclass
class Options:
    seed: int
    minutes: float = 5.0
    faults: int | None = None
    """None: three a minute."""
    orchestrators: int = 2
    drain: float = 240.0
    """Seconds without progress after the campaign (every fault healed) before a task still pending counts as
    lost: the queue may take longer to work off what the faults held back, as long as it keeps going."""
    lossy_redis: bool = False
    directory: Path | None = None
    handler_slots: int = 2
    """The handler's --max-concurrent. Two, not its default one: with one slot the handler itself would
    queue a stale worker's run behind its successor's, hiding an overlap the fencing token must prevent."""
    drain_cap: float = 3600.0
    """Seconds the drain may take at most, progress or not."""

    @property
    def fault_count(self) -> int:
        return self.faults if self.faults is not None else max(1, round(self.minutes * 3))

    def command(self) -> str:
        """The command line that gives back this campaign's schedule."""
        extra = " --lossy-redis" if self.lossy_redis else ""
        return (
            f"python -m bench chaos --seed {self.seed} --minutes {self.minutes:g} --faults {self.fault_count} "
            f"--orchestrators {self.orchestrators}{extra}"
        )


@dataclass
class Campaign:
    options: Options
    plan: Plan
    directory: Path
    t0: float = 0.0
    history: History | None = None
    violations: list[Violation] = field(default_factory=list)
    leftovers: int = 0
    """Task processes still alive after every service was stopped (each killed by pid)."""


def run(options: Options) -> Campaign:
    """One whole campaign; raises pytest's skip exception where namespaces cannot be made."""
    plan = make_plan(options.seed, options.minutes, options.fault_count, options.orchestrators, options.lossy_redis)
    directory = options.directory or Path(tempfile.mkdtemp(prefix=f"ccx-chaos-{options.seed}-"))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "plan.json").write_bytes(orjson.dumps(plan.to_dict(), option=orjson.OPT_INDENT_2))
    campaign = Campaign(options, plan, directory)
    _run_cluster(campaign)
    campaign.history = load(directory, campaign.t0)
    campaign.violations = check(campaign.history)
    return campaign


def recheck(directory: Path) -> Campaign:
    """The checker run again over a campaign's stored history (after a change to the checker, say)."""
    plan = Plan.from_dict(orjson.loads((directory / "plan.json").read_bytes()))
    t0 = orjson.loads((directory / "config.json").read_bytes())["t0"]
    options = Options(plan.seed, plan.minutes, plan.requested, len(plan.orchestrators), lossy_redis=plan.lossy_redis,
                      directory=directory)  # fmt: skip
    campaign = Campaign(options, plan, directory, t0, load(directory, t0))
    campaign.violations = check(campaign.history) if campaign.history else []
    return campaign


def _start_orchestrators(campaign: Campaign, cluster: Cluster, marker: str) -> list[subprocess.Popen[bytes]]:
    options, plan = campaign.options, campaign.plan
    campaign.t0 = time.time() + 1.0
    config = {
        "plan": plan.to_dict(), "redis_url": cluster.redis_url, "queue": QUEUE, "directory": str(campaign.directory),
        "python": PY, "marker": marker, "t0": campaign.t0, "submit_until": campaign.t0 + plan.seconds,
        "drain_stall": options.drain, "drain_until": campaign.t0 + plan.seconds + options.drain_cap,
    }  # fmt: skip
    path = campaign.directory / "config.json"
    path.write_bytes(orjson.dumps(config))
    path.chmod(0o600)  # it holds the Redis password
    procs = []
    for index in range(options.orchestrators):
        machine = cluster.machines[f"orch-{index}"]
        with (campaign.directory / "logs" / f"orch-{index}.log").open("ab") as log:
            procs.append(
                subprocess.Popen(
                    machine.argv(PY, "-m", "bench.chaos.orchestrator", str(path), str(index)),
                    env=cluster.base_env(f"orch-{index}"),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=REPO,
                    start_new_session=True,
                )
            )
    return procs


def _run_cluster(campaign: Campaign) -> None:
    marker = f"ccx-chaos-{uuid.uuid4().hex[:12]}"
    with Network() as net:
        cluster = Cluster(net, campaign.directory, "tok-" + uuid.uuid4().hex, uuid.uuid4().hex,
                          campaign.options.handler_slots)  # fmt: skip
        orchestrators: list[subprocess.Popen[bytes]] = []
        injector: Injector | None = None
        try:
            cluster.build(campaign.options.orchestrators)
            cluster.start()
            orchestrators = _start_orchestrators(campaign, cluster, marker)
            injector = Injector(cluster, campaign.t0)
            injector.run(campaign.plan.faults, until=campaign.t0 + campaign.plan.seconds)
            injector.heal_all()
            deadline = campaign.t0 + campaign.plan.seconds + campaign.options.drain_cap + 120
            for proc in orchestrators:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(1.0, deadline - time.time()))
        finally:
            if injector is not None:
                injector.heal_now.set()
                injector.heal_all()
            for proc in orchestrators:
                terminate(proc, 5)
            cluster.stop()
            campaign.leftovers = _kill_leftovers(marker)


def _kill_leftovers(marker: str) -> int:
    """Task processes still alive once every service stopped (there should be none), each killed by pid."""
    found = pids_with_marker(marker)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(found)
