"""The simulated machines and the services on them, with the faults the campaign injects into them.

Each machine is a Linux network namespace (tests/support/netns.py) with a host name of its own (a UTS
namespace), so that a worker on ``worker-2`` sees the lock of ``worker-1`` as another machine's and waits
out its TTL, as it would across real machines, while a worker restarted on ``worker-1`` takes over at once.
All machines share the file system, so the task's children write one history.

Services run under a supervisor thread, as systemd or Docker would run them: one that exits while it is
wanted is started again (a worker always as ``--standby``, since another may hold the queue by then).
Every process is started, signalled and stopped by its pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from runner.stack import find_redis_server, terminate
from tests.support.netns import Machine, Network
from tests.support.processes import children_of, pid_alive

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]
# Gives the process a host name of its own before it becomes the service (same pid: exec, no fork).
LAUNCH = "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execvp(sys.argv[2], sys.argv[2:])"
REDIS_PORT = 6390
QUEUE = "chaos"


@dataclass
class Service:
    """One long-running process on a machine, started again by its supervisor while it is ``wanted``."""

    name: str
    machine: Machine
    argv: Callable[[int], list[str]]
    """The command line of its ``n``-th start (0: the first)."""
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    wanted: bool = True
    starts: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        with self.lock:
            command = self.machine.argv("unshare", "--uts", PY, "-c", LAUNCH, self.name, *self.argv(self.starts))
            with self.log.open("ab") as log:
                log.write(
                    f"--- start {self.starts} at {time.time():.3f}: {' '.join(self.argv(self.starts)[:4])}\n".encode()
                )
                self.proc = subprocess.Popen(
                    command, env=self.env, stdin=subprocess.PIPE, stdout=log, stderr=log, cwd=REPO,
                    start_new_session=True,  # a Ctrl-C of the campaign must not reach it: it is stopped by pid
                )  # fmt: skip
            self.starts += 1
            self.feed(self.proc)

    def feed(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None
        proc.stdin.close()

    def signal(self, signum: int) -> int | None:
        with self.lock:
            pid = self.pid
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            return pid

    def stop(self, timeout: float = 20.0) -> None:
        with self.lock:
            self.wanted = False
            if self.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGCONT)  # a stopped process would never see its SIGTERM
            terminate(self.proc, timeout)

    def lines(self, text: str) -> int:
        """How many lines of its log contain ``text`` (its banners are counted to see it serve)."""
        return self.log.read_bytes().count(text.encode()) if self.log.exists() else 0


@dataclass
class RedisService(Service):
    password: str = ""

    def feed(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(f'requirepass "{self.password}"\n'.encode())  # never on a command line
        proc.stdin.close()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Cluster:
    net: Network
    directory: Path
    token: str
    password: str
    handler_slots: int = 2
    machines: dict[str, Machine] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    handler_port: int = 0
    closing: threading.Event = field(default_factory=threading.Event)
    _events: threading.Lock = field(default_factory=threading.Lock)
    _supervisor: threading.Thread | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.password}@{self.machines['redis'].address}:{REDIS_PORT}/0"

    @property
    def handler_url(self) -> str:
        return f"ws://{self.machines['handler'].address}:{self.handler_port}/ws"

    def record(self, event: dict[str, object]) -> None:
        with self._events, (self.directory / "services.jsonl").open("ab") as out:
            out.write(orjson.dumps({**event, "t": time.time()}) + b"\n")

    def base_env(self, machine: str) -> dict[str, str]:
        config = self.directory / "machines" / machine
        config.mkdir(parents=True, exist_ok=True)
        # The machines share the campaign's own private bridge: plain redis:// with a password is fine there.
        base = {k: v for k, v in os.environ.items() if not k.startswith("CCX_")}
        return {**base, "CCX_CONFIG_DIR": str(config), "CCX_ALLOW_INSECURE": "1"}

    def build(self, orchestrators: int) -> None:
        for name in ("redis", "handler", "worker-1", "worker-2", *(f"orch-{n}" for n in range(orchestrators))):
            self.machines[name] = self.net.machine(name)
        (self.directory / "logs").mkdir(parents=True, exist_ok=True)
        (self.directory / "redis").mkdir(exist_ok=True)

    def start(self) -> None:
        """Redis, then the handler, then worker-1 serving and worker-2 standing by; supervised from here on."""
        self.start_redis()
        self.start_handler()
        for name in ("worker-1", "worker-2"):
            self.add_worker(name)
        wait_for(lambda: self.services["worker-1"].lines("serving queue") >= 1, 90, "worker-1 to serve")
        wait_for(lambda: self.services["worker-2"].lines("standing by") >= 1, 90, "worker-2 to stand by")
        self._supervisor = threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True)
        self._supervisor.start()

    def start_redis(self) -> None:
        machine = self.machines["redis"]
        argv = [find_redis_server(), "-", "--port", str(REDIS_PORT), "--bind", machine.address,
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--dir", str(self.directory / "redis")]  # fmt: skip
        service = RedisService("redis", machine, lambda n: argv, self.base_env("redis"),
                               self.directory / "logs" / "redis.log", password=self.password)  # fmt: skip
        self.services["redis"] = service
        service.start()
        wait_for(lambda: service.lines("Ready to accept connections") >= 1, 30, "Redis to start")

    def start_handler(self) -> None:
        machine = self.machines["handler"]

        def argv(n: int) -> list[str]:
            # The first start takes any free port; every restart takes that same port, as a deployment would.
            return [PY, "-m", "handler", "--host", machine.address, "--port", str(self.handler_port),
                    "--allow", "*", "--max-concurrent", str(self.handler_slots)]  # fmt: skip

        service = Service("handler", machine, argv, {**self.base_env("handler"), "CCX_HANDLER_TOKEN": self.token},
                          self.directory / "logs" / "handler.log")  # fmt: skip
        self.services["handler"] = service
        service.start()
        wait_for(lambda: service.lines(" listening on ") >= 1, 60, "the handler to listen")
        banner = next(line for line in service.log.read_text().splitlines() if " listening on " in line)
        self.handler_port = int(banner.split(" listening on ", 1)[1].split()[0].rsplit(":", 1)[1].split("/")[0])

    def add_worker(self, name: str) -> None:
        env = {**self.base_env(name), "CCX_REDIS_URL": self.redis_url, "CCX_HANDLER_URL": self.handler_url,
               "CCX_HANDLER_TOKEN": self.token, "CCX_ALLOW_INSECURE": "1", "CCX_QUEUE": QUEUE}  # fmt: skip
        # worker-1 serves first; from then on each (re)start stands by, as a supervisor's unit would say.
        first = name == "worker-1"

        def argv(n: int) -> list[str]:
            return [PY, "-m", "runner.cli", "worker", *([] if first and n == 0 else ["--standby"])]

        service = Service(name, self.machines[name], argv, env, self.directory / "logs" / f"{name}.log")
        self.services[name] = service
        service.start()
        if first:
            wait_for(lambda: service.lines("serving queue") >= 1, 90, f"{name} to serve")

    def _supervise(self) -> None:
        """Start again, after a second, any wanted service that exited (a worker that lost its queue exits 3)."""
        while not self.closing.wait(0.25):
            for service in list(self.services.values()):
                with service.lock:
                    code = service.proc.poll() if service.proc is not None else None
                    if not service.wanted or code is None:
                        continue
                    self.record({"ev": "exit", "service": service.name, "code": code})
                    service.proc = None
                threading.Timer(1.0, self._restart, (service,)).start()

    def _restart(self, service: Service) -> None:
        with service.lock:
            if service.wanted and service.pid is None and not self.closing.is_set():
                service.start()
                self.record({"ev": "restart", "service": service.name, "pid": service.pid})

    def horse(self, worker: str, wait: float = 5.0) -> int | None:
        """The pid of ``worker``'s work-horse, waiting up to ``wait`` s for one (it forks one per task)."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not self.closing.is_set():
            pid = self.services[worker].pid
            horses = [child for child in children_of(pid) if pid_alive(child)] if pid else []
            if horses:
                return horses[0]
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        """Everything, by pid: the workers first (so nothing of theirs is left waiting), the handler, Redis."""
        self.closing.set()
        for name in ("worker-1", "worker-2"):
            for child in children_of(self.services[name].pid or 0) if name in self.services else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGCONT)
        for name in ("worker-1", "worker-2", "handler", "redis"):
            if name in self.services:
                self.services[name].stop()
