"""Round trips to Redis per trivial task, with 25 ms of latency between the worker and Redis.

A worker far from its Redis pays the latency once per sequential round trip, so
this is the figure that decides how a queue behaves across machines. Each worker
(ours, and the bare RQ baseline) gets its own queue and reaches Redis through a
delaying proxy on loopback that holds every client-to-server chunk for
``delay`` seconds and counts request bursts (a burst: the client writes after
the server last answered on that connection). Orchestrators submit directly.

Two figures per side: the time per ``true`` task, and the bursts per task (on
all of the worker's connections, so parallel ones count too); the time per task
divided by the delay is the sequential round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from rq import Queue
from rq.serializers import JSONSerializer

from bench.context import REPO, Context, _start_bare_worker
from bench.report import Figure
from bench.rqbase import JOB_FUNCTION, wait_for_rq_result
from bench.stats import median
from runner.client import Runner
from runner.errors import StackError
from runner.stack import terminate

SECTION = "latency to Redis"
TRUE = ["true"]


@dataclass
class DelayProxy:
    """A TCP proxy on 127.0.0.1 that delays client→server data and counts request bursts."""

    target_port: int
    delay: float
    port: int = 0
    bursts: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> DelayProxy:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise StackError("The delaying proxy did not start.")
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        state = {"answered": True}

        async def upstream() -> None:
            while data := await client_reader.read(65536):
                if state["answered"]:
                    self.bursts += 1
                    state["answered"] = False
                await asyncio.sleep(self.delay)
                server_writer.write(data)
                await server_writer.drain()
            server_writer.close()

        async def downstream() -> None:
            while data := await server_reader.read(65536):
                state["answered"] = True
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()

        with contextlib.suppress(Exception):
            await asyncio.gather(upstream(), downstream())

    def url(self, redis_url: str) -> str:
        parts = urlsplit(redis_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)


def _our_worker(ctx: Context, redis_url: str, queue: str) -> subprocess.Popen[bytes]:
    env = {**ctx.stack.child_env(), "CCX_REDIS_URL": redis_url, "CCX_QUEUE": queue}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "worker"],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().decode(errors="replace")
    if "serving queue" not in line:
        terminate(proc)
        raise StackError(f"The worker behind the delaying proxy did not start: {line.strip() or 'no output'}")
    proc.stdout.close()
    return proc


def _measure(submit_and_wait: object, proxy: DelayProxy, count: int) -> tuple[float, float]:
    """Median seconds per task and request bursts per task over ``count`` tasks."""
    for _ in range(2):
        submit_and_wait()  # type: ignore[operator]
    before = proxy.bursts
    times = []
    for _ in range(count):
        began = time.perf_counter()
        submit_and_wait()  # type: ignore[operator]
        times.append(time.perf_counter() - began)
    return median(times), (proxy.bursts - before) / count


def run(ctx: Context, count: int = 20, delay: float = 0.025) -> list[Figure]:
    assert ctx.stack.redis_url is not None
    port = urlsplit(ctx.stack.redis_url).port
    assert port is not None
    ours_proxy = DelayProxy(port, delay).start()
    bare_proxy = DelayProxy(port, delay).start()
    ours_queue, bare_queue_name = f"bench-far-{uuid.uuid4().hex[:8]}", f"bench-far-bare-{uuid.uuid4().hex[:8]}"
    worker = bare = None
    try:
        worker = _our_worker(ctx, ours_proxy.url(ctx.stack.redis_url), ours_queue)
        bare = _start_bare_worker(bare_proxy.url(ctx.stack.redis_url), bare_queue_name)
        runner = Runner(redis_url=ctx.stack.redis_url, queue=ours_queue)
        bare_queue = Queue(bare_queue_name, connection=ctx.redis, serializer=JSONSerializer)

        def ours() -> None:
            result = runner.submit(agent="command", argv=TRUE, timeout=60).result(timeout=120)
            if not result.success:
                raise RuntimeError(f"`true` failed behind the delaying proxy: {result.error}")

        def bare_job() -> None:
            job = bare_queue.enqueue_call(JOB_FUNCTION, args=(TRUE,), result_ttl=600)
            if wait_for_rq_result(job, 120) is None:
                raise RuntimeError("the bare RQ job behind the delaying proxy gave no result")

        ours_s, ours_bursts = _measure(ours, ours_proxy, count)
        bare_s, bare_bursts = _measure(bare_job, bare_proxy, count)
    finally:
        terminate(worker)
        terminate(bare)
        ours_proxy.stop()
        bare_proxy.stop()
    ms = delay * 1000
    details = {
        "delay_ms": ms,
        "sequential_round_trips": {"ours": round(ours_s * 1000 / ms, 1), "bare_rq": round(bare_s * 1000 / ms, 1)},
        "bursts_per_task": {"ours": round(ours_bursts, 1), "bare_rq": round(bare_bursts, 1)},
    }
    return [
        Figure(
            SECTION,
            f"trivial task, worker {ms:g} ms from Redis",
            "ms",
            ours_s * 1000,
            bare_s * 1000,
            "bare RQ job",
            details=details,
        ),
        Figure(SECTION, "request bursts to Redis per task", "", ours_bursts, bare_bursts, "bare RQ job"),
    ]
