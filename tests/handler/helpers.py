"""Shared pieces of the handler tests: child programs, an output recorder, servers and clients.

Everything here drives the real thing: child programs are real processes, the
server is :func:`handler.server.start_server` (or ``python -m handler``) on an
ephemeral loopback port, and the client is a real ``websockets`` connection.
Whatever a helper starts, it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from websockets.asyncio.client import ClientConnection, connect

from handler.allowlist import Allowlist
from handler.config import HandlerConfig
from handler.process import ProcessRun, RunLimits
from handler.protocol import ExecuteParams, ExecuteResult
from handler.server import Handler, bound_port, start_server
from tests.support.processes import pids_with_marker

T = TypeVar("T")

PY = sys.executable
TOKEN = f"test-token-{uuid.uuid4().hex}"
"""The token of in-process handlers (:func:`serving`); their clients send it unless told otherwise."""
NO_TOKEN = ""
"""Pass as ``token`` to connect without an Authorization header."""
ROOT = Path(__file__).resolve().parents[2]
"""The repository root: children started with this ``cwd`` can import ``tests.handler.helpers``."""


# --------------------------------------------------------------------------- event loop and cleanup


def arun(coro: Awaitable[T], timeout: float = 30.0) -> T:
    """Run ``coro`` on a fresh event loop, failing the test if it takes longer than ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


async def eventually(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """The async twin of ``wait_until``: poll without blocking the event loop (the server may share it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.contextmanager
def marked_token() -> Iterator[str]:
    """A unique token for child argv; any process still carrying it afterwards is SIGKILLed (test hygiene only)."""
    token = f"ccx-test-{uuid.uuid4().hex}"
    try:
        yield token
    finally:
        for pid in pids_with_marker(token):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- child programs

_PRINTABLE = bytes(range(32, 127)) + b"\n"
_TRANSLATE = bytes(_PRINTABLE[i % len(_PRINTABLE)] for i in range(256))
_MULTIBYTE = "é中😀".encode()


def payload(seed: int, size: int, newlines: bool = True) -> bytes:
    """Deterministic, non-repeating, valid UTF-8 of about ``size`` bytes, with 2-, 3- and 4-byte characters."""
    raw = random.Random(seed).randbytes(size).translate(_TRANSLATE)
    if not newlines:
        raw = raw.replace(b"\n", b".")
    return _MULTIBYTE.join(raw[i : i + 997] for i in range(0, len(raw), 997))


def write_mixed(seed: int, out_size: int, err_size: int) -> None:
    """Child side: write two payloads to stdout and stderr, interleaved in random-sized pieces.

    Piece boundaries fall anywhere, so multi-byte characters are split across writes.
    """
    rng = random.Random(seed)
    todo = {1: memoryview(payload(seed, out_size)), 2: memoryview(payload(seed + 1, err_size))}
    while todo:
        fd = rng.choice(sorted(todo))
        size = rng.randint(1, 256 * 1024)
        piece, todo[fd] = todo[fd][:size], todo[fd][size:]
        while piece:
            piece = piece[os.write(fd, piece) :]
        if not todo[fd]:
            del todo[fd]


def mixed_writer(seed: int, out_size: int, err_size: int) -> list[str]:
    """argv of a child running :func:`write_mixed` (start it with ``cwd=ROOT``)."""
    code = f"from tests.handler.helpers import write_mixed; write_mixed({seed}, {out_size}, {err_size})"
    return [PY, "-c", code]


def expected_mixed(seed: int, out_size: int, err_size: int) -> tuple[bytes, bytes]:
    """What :func:`write_mixed` writes to stdout and stderr."""
    return payload(seed, out_size), payload(seed + 1, err_size)


TRICKLE = r"""
import fcntl, os, struct, sys, termios, time
for byte in sys.argv[1].encode():
    os.write(1, bytes([byte]))
    # Wait until the reader has taken the byte, so the next one can only arrive in a later read.
    deadline = time.monotonic() + 10
    while struct.unpack("i", fcntl.ioctl(1, termios.FIONREAD, b"\0" * 4))[0] and time.monotonic() < deadline:
        time.sleep(0.001)
"""


def trickle(text: str) -> list[str]:
    """argv of a child that writes ``text`` one byte per read of the pipe (multi-byte characters get split)."""
    return [PY, "-c", TRICKLE, text]


GRANDCHILD = "import sys, time; sys.stdout.write('up'); sys.stdout.flush(); time.sleep(1000)"

SPAWNER = r"""
import os, subprocess, sys, time
how, then, grandchild, token, ready_file = sys.argv[1:6]
argv = [sys.executable, "-c", grandchild, token]
r, w = os.pipe()
if how == "background":  # an ordinary child in the same process group
    subprocess.Popen(argv, stdout=w)
elif how == "setsid":  # `setsid ... &` from a shell that exits at once: a new session, re-parented to init
    subprocess.run(["sh", "-c", 'setsid "$@" &', "sh", *argv], stdout=w, check=True)
elif how == "nohup":  # `nohup ... &` from a shell that exits at once: re-parented to init
    subprocess.run(["sh", "-c", 'nohup "$@" 2>/dev/null </dev/null &', "sh", *argv], stdout=w, check=True)
elif how == "double-fork":  # the classic daemon dance, without exec'ing a shell
    if os.fork() == 0:
        if os.fork() == 0:
            os.dup2(w, 1)
            os.execv(sys.executable, argv)
        os._exit(0)
    os.wait()
os.close(w)
if os.read(r, 2) != b"up":  # the grandchild is running and marked
    sys.exit("grandchild did not start")
print("ready", flush=True)
if ready_file:
    open(ready_file, "w").close()
if then == "stay":
    time.sleep(1000)
"""


def spawner(token: str, how: str, then: str = "stay", ready_file: str = "") -> list[str]:
    """argv of a child that starts a grandchild (``how``: background, setsid, nohup, double-fork).

    The grandchild carries ``token`` in its argv. Once it runs, the child prints ``ready``
    (and creates ``ready_file`` if given), then sleeps (``then="stay"``) or exits (``then="exit"``).
    """
    return [PY, "-c", SPAWNER, how, then, GRANDCHILD, token, ready_file]


# --------------------------------------------------------------------------- ProcessRun under asyncio


@dataclass(frozen=True)
class Frame:
    stream: str
    seq: int
    data: str


class Recorder:
    """An ``emit`` that keeps every frame and lets a test wait for text to appear."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._changed = asyncio.Event()

    async def emit(self, stream: str, seq: int, data: str) -> None:
        self.frames.append(Frame(stream, seq, data))
        self._changed.set()

    def text(self, stream: str = "stdout") -> str:
        return "".join(frame.data for frame in self.frames if frame.stream == stream)

    async def wait_for_text(self, needle: str, stream: str = "stdout", timeout: float = 15.0) -> None:
        async def seen() -> None:
            while needle not in self.text(stream):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(seen(), timeout)


async def run_process(
    argv: list[str], limits: RunLimits | None = None, **params: Any
) -> tuple[ExecuteResult, Recorder]:
    """Start ``argv`` as a :class:`ProcessRun`, wait for the end of its tree, return the result and output."""
    recorder = Recorder()
    run = ProcessRun(ExecuteParams(argv=argv, **params), recorder.emit, limits)
    await run.start()
    return await run.wait(), recorder


# --------------------------------------------------------------------------- clients


def _message_id(message: dict[str, Any]) -> Any:
    return message["params"].get("id") if "method" in message else message.get("id")


@dataclass
class Exchange:
    """Everything the server sent about one ``execute`` request, in arrival order, ending with its answer."""

    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def answer(self) -> dict[str, Any]:
        return self.messages[-1]

    @property
    def result(self) -> dict[str, Any]:
        assert "result" in self.answer, f"expected a result, got {self.answer}"
        return self.answer["result"]

    @property
    def error(self) -> dict[str, Any]:
        assert "error" in self.answer, f"expected an error, got {self.answer}"
        return self.answer["error"]

    def notifications(self, method: str) -> list[dict[str, Any]]:
        return [m["params"] for m in self.messages if m.get("method") == method]

    def output(self, stream: str = "stdout") -> str:
        return "".join(p["data"] for p in self.notifications("process.output") if p["stream"] == stream)


class Client:
    """A real WebSocket client speaking the handler's JSON-RPC; messages are kept apart by request id."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.backlog: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, url: str, token: str = NO_TOKEN, **options: Any) -> Client:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        connection = await asyncio.wait_for(
            connect(url, additional_headers=headers, max_size=None, compression=None, proxy=None, **options), 10
        )
        return cls(connection)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.wait_for(self.connection.close(), 10)

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        """Send a dict as JSON text, a str as a text frame, bytes as a binary frame."""
        if isinstance(message, dict):
            message = orjson.dumps(message).decode()
        await asyncio.wait_for(self.connection.send(message), 10)

    async def receive(self, timeout: float = 15.0) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        return orjson.loads(await asyncio.wait_for(self.connection.recv(decode=False), timeout))

    async def execute(self, request_id: Any, argv: list[str], **params: Any) -> None:
        await self.send({"jsonrpc": "2.0", "id": request_id, "method": "execute", "params": {"argv": argv, **params}})

    async def cancel(self, target: Any, request_id: Any = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": "cancel", "params": {"id": target}}
        if request_id is not None:
            message["id"] = request_id
        await self.send(message)

    async def next_for(self, request_id: Any, timeout: float = 15.0) -> dict[str, Any]:
        """The next message about ``request_id``; messages about other requests are kept for later."""
        for index, message in enumerate(self.backlog):
            if _message_id(message) == request_id:
                return self.backlog.pop(index)
        while True:
            message = orjson.loads(await asyncio.wait_for(self.connection.recv(decode=False), timeout))
            if _message_id(message) == request_id:
                return message
            self.backlog.append(message)

    async def finish(self, request_id: Any, timeout: float = 30.0, exchange: Exchange | None = None) -> Exchange:
        """Collect messages about ``request_id`` until its response (result or error) arrives."""
        exchange = exchange or Exchange()
        deadline = time.monotonic() + timeout
        while True:
            message = await self.next_for(request_id, max(deadline - time.monotonic(), 0.01))
            exchange.messages.append(message)
            if "method" not in message:
                return exchange

    async def read_until_output(self, request_id: Any, needle: str, timeout: float = 15.0) -> Exchange:
        """Read messages about ``request_id`` until its stdout contains ``needle``; return what was read."""
        exchange = Exchange()
        deadline = time.monotonic() + timeout
        while needle not in exchange.output():
            message = await self.next_for(request_id, max(deadline - time.monotonic(), 0.01))
            assert "method" in message, f"the run ended before printing {needle!r}: {message}"
            exchange.messages.append(message)
        return exchange

    async def run(self, request_id: Any, argv: list[str], within: float = 30.0, **params: Any) -> Exchange:
        """``execute`` (``params`` such as ``timeout`` go to the server) and wait up to ``within`` s for the answer."""
        await self.execute(request_id, argv, **params)
        return await self.finish(request_id, within)


# --------------------------------------------------------------------------- servers


@dataclass
class Served:
    handler: Handler
    url: str
    port: int

    async def client(self, token: str | None = None, **options: Any) -> Client:
        """A client sending ``token`` (default: the handler's own; ``NO_TOKEN``: none)."""
        return await Client.connect(
            self.url, self.handler.config.token or NO_TOKEN if token is None else token, **options
        )


@contextlib.asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[Served]:
    """An in-process handler on an ephemeral loopback port with :data:`TOKEN`; any executable is
    allowed unless ``allow`` says otherwise."""
    config = HandlerConfig(**{"port": 0, "allow": Allowlist.parse("*"), "token": TOKEN, **settings})
    handler, server = await start_server(config)
    port = bound_port(server)
    try:
        yield Served(handler, f"ws://127.0.0.1:{port}/ws", port)
    finally:
        server.close()
        await asyncio.wait_for(handler.stop_all(), 15)
        await asyncio.wait_for(server.wait_closed(), 15)


class HandlerProcess:
    """``python -m handler`` as a subprocess; the first stdout line tells the port."""

    def __init__(self, *args: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log.open("wb")
        self.token = f"test-token-{uuid.uuid4().hex}"
        """Given to the handler in CCX_HANDLER_TOKEN (its environment, never its argv)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("CCX_") or k == "CCX_CONFIG_DIR"}
        self.proc = subprocess.Popen(
            [PY, "-m", "handler", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            env={**base, "CCX_HANDLER_TOKEN": self.token, **(env or {})},
            cwd=ROOT,
        )
        self.banner = ""
        self.port = 0

    def wait_ready(self, timeout: float = 30.0) -> str:
        """Read the banner line within ``timeout`` seconds; return it."""
        assert self.proc.stdout is not None
        line = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise AssertionError(f"handler printed no banner within {timeout:g} s (got {line!r})")
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise AssertionError(f"handler exited before listening: {self.log_text()}")
                line += chunk
        self.banner = line.decode().strip()
        self.port = int(self.banner.split("://127.0.0.1:", 1)[1].split("/", 1)[0])
        return self.banner

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (a clean shutdown), then SIGKILL if it does not end in time; return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        return self.proc.returncode

    def __enter__(self) -> HandlerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
