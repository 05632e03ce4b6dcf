"""Injecting the plan's faults into the cluster: each in a thread of its own, at its planned time.

A fault is injected, lasts its planned duration, and is healed by the same thread (the cable plugged
back, SIGCONT, the service started again), then recorded in ``faults.jsonl``. The plan keeps faults on
one machine apart, so no two threads ever touch the same machine at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import orjson

from bench.chaos import plan as kinds
from bench.chaos.cluster import Cluster, Service, wait_for
from bench.chaos.plan import Fault
from tests.support.processes import children_of


@dataclass
class Injector:
    cluster: Cluster
    t0: float
    heal_now: threading.Event = field(default_factory=threading.Event)
    """Set at the campaign's end (or on an interrupt): every fault still on is healed at once."""
    threads: list[threading.Thread] = field(default_factory=list)
    _write: threading.Lock = field(default_factory=threading.Lock)

    def run(self, faults: list[Fault], until: float) -> None:
        """Start each fault at its time; return at ``until`` (epoch) with every fault healed."""
        for fault in faults:
            if self.heal_now.wait(max(0.0, self.t0 + fault.at - time.time())):
                break
            thread = threading.Thread(target=self._one, args=(fault,), name=f"fault-{fault.kind}", daemon=True)
            thread.start()
            self.threads.append(thread)
        self.heal_now.wait(max(0.0, until - time.time()))
        self.heal_now.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def _one(self, fault: Fault) -> None:
        began = time.time()
        try:
            task, note = self.inject(fault)
        except Exception as exc:  # recorded, never fatal: the campaign goes on and heals what it can
            task, note = None, f"injection failed: {type(exc).__name__}: {exc}"
        record = {"kind": fault.kind, "target": fault.target, "planned_at": fault.at, "duration": fault.duration,
                  "began": began, "ended": time.time(), "task_id": task, "note": note}  # fmt: skip
        with self._write, (self.cluster.directory / "faults.jsonl").open("ab") as out:
            out.write(orjson.dumps(record) + b"\n")

    def inject(self, fault: Fault) -> tuple[str | None, str]:
        """Inject ``fault``, wait its duration, heal it; returns the task it hit, if known, and a note."""
        if fault.kind == kinds.PARTITION:
            return None, self.partition(fault)
        if fault.kind in (kinds.STOP_WORKER, kinds.STOP_WITH_HORSE):
            return None, self.stop(fault)
        if fault.kind == kinds.KILL_HORSE:
            return None, self.kill_horse(fault)
        if fault.kind == kinds.KILL_WORKER:
            return None, self.restart(self.cluster.services[fault.target], signal.SIGKILL, fault.duration)
        if fault.kind in (kinds.KILL_HANDLER, kinds.TERM_HANDLER):
            signum = signal.SIGKILL if fault.kind == kinds.KILL_HANDLER else signal.SIGTERM
            return None, self.restart(self.cluster.services["handler"], signum, fault.duration, " listening on ")
        if fault.kind in (kinds.RESTART_REDIS, kinds.WIPE_REDIS):
            signum = signal.SIGKILL if fault.variant == "SIGKILL" else signal.SIGTERM
            wipe = fault.kind == kinds.WIPE_REDIS
            note = self.restart(self.cluster.services["redis"], signum, fault.duration, "Ready to accept", wipe=wipe)
            return None, note
        return None, f"unknown fault kind {fault.kind!r}"

    def partition(self, fault: Fault) -> str:
        machine = self.cluster.machines[fault.target]
        self.cluster.net.unplug(machine)
        try:
            self.heal_now.wait(fault.duration)
        finally:
            self.cluster.net.plug(machine)
        return ""

    def stop(self, fault: Fault) -> str:
        worker = self.cluster.services[fault.target]
        pid = worker.pid
        if pid is None:
            return "no worker running"
        horse = self.cluster.horse(fault.target, wait=0.5) if fault.kind == kinds.STOP_WITH_HORSE else None
        stopped = [pid, *([horse] if horse else [])]
        for each in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGSTOP)
        try:
            self.heal_now.wait(fault.duration)
        finally:
            for each in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(each, signal.SIGCONT)
        return f"stopped worker {pid}" + (f" and work-horse {horse}" if horse else " (no work-horse at the time)")

    def kill_horse(self, fault: Fault) -> str:
        horse = self.cluster.horse(fault.target)
        if horse is None:
            return "no work-horse within 5 s: nothing killed"
        with contextlib.suppress(ProcessLookupError):
            os.kill(horse, signal.SIGKILL)
        return f"killed work-horse {horse}"

    def restart(self, service: Service, signum: int, down: float, banner: str = "", wipe: bool = False) -> str:
        """Stop ``service`` with ``signum``, keep it down ``down`` s, start it again (as its supervisor would)."""
        with service.lock:
            service.wanted = False
            pid = service.signal(signum)
        note = f"{signal.Signals(signum).name} to pid {pid}" if pid else "it was not running"
        if service.proc is not None:
            try:
                service.proc.wait(30)
            except subprocess.TimeoutExpired:
                service.signal(signal.SIGKILL)
                service.proc.wait(30)
                note += " (SIGKILL after 30 s)"
        if wipe:
            shutil.rmtree(self.cluster.directory / "redis", ignore_errors=True)
            (self.cluster.directory / "redis").mkdir()
        self.heal_now.wait(down)
        before = service.lines(banner) if banner else 0
        with service.lock:
            service.wanted = True
            service.start()
        if banner:
            wait_for(
                lambda: service.lines(banner) > before or self.cluster.closing.is_set(), 60, f"{service.name} back"
            )
        return note

    def heal_all(self) -> None:
        """Whatever a fault left behind (it should be nothing): every cable in, every process continued, every service up."""
        for name in ("worker-1", "worker-2"):
            with contextlib.suppress(Exception):
                self.cluster.net.plug(self.cluster.machines[name])
            service = self.cluster.services.get(name)
            pid = service.pid if service else None
            for each in [pid, *children_of(pid)] if pid else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(each, signal.SIGCONT)
        for service in self.cluster.services.values():
            with service.lock:
                if not service.wanted:
                    service.wanted = True
                    if service.pid is None:
                        service.start()
