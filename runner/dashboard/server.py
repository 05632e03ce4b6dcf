"""The dashboard's server: the page and a few GET JSON endpoints over HTTP, live updates over ``/live``.

Built on the ``websockets`` library the project already uses: its
``process_request`` hook answers plain GET requests (the page, its assets, the
JSON endpoints), and everything that changes something or streams (submit,
cancel, the queue view, a task's log) goes over the WebSocket at ``/live``.

GET endpoints (JSON; with a token, send the cookie or ``Authorization: Bearer``):

* ``/metrics`` – the queue's Prometheus metrics (text format; see docs/metrics.md).
* ``/api/queue`` – the queue view (running, queued in order, deferred, recent).
* ``/api/tasks/<id>`` – a task's record (its result's output cut to the last 64 KiB).
* ``/api/tasks/<id>/log?before=<entry id>[&offset=<n>]`` – about 256 KiB of the log before that
  entry (before its character ``n`` with ``offset``; the newest without ``before``), as the
  page's chunks, with ``more_before``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson
import prometheus_client
import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from handler.config import ConfigError, is_loopback, server_tls_context
from runner import metrics
from runner.client import RedisUnavailable, Runner
from runner.config import redact_url
from runner.dashboard import logview
from runner.dashboard.auth import TOKEN_PARAM, Auth, Verdict
from runner.dashboard.data import TASK_ID, Reader
from runner.dashboard.live import Hub, Session
from runner.errors import UsageError

log = logging.getLogger("ccx.dashboard")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8766
LIVE_PATH = "/live"
ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")

_PAGE_SECURITY = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
}
_COMMON = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


class DashboardError(UsageError):
    """The dashboard cannot start; the message says what to change."""


@dataclass(frozen=True)
class DashboardConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue: str = "ccx"
    token: str | None = None

    token_source: str = ""
    """Where the token came from (for the banner; never the token itself)."""
    tls_cert: str | None = None
    tls_key: str | None = None
    allow_insecure: bool = False
    """CCX_ALLOW_INSECURE: plain HTTP off loopback, for a network the operator knows is private."""

    def check(self) -> None:
        if not self.token:
            raise DashboardError(
                "The dashboard needs a token: pass --token, set CCX_DASHBOARD_TOKEN, or let it use its token file."
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise DashboardError("--tls-cert and --tls-key go together: give both.")
        if not is_loopback(self.host) and not self.tls_cert and not self.allow_insecure:
            raise DashboardError(
                f"The dashboard on --host {self.host} would send its token and every task's output in clear text: "
                "give --tls-cert and --tls-key, or bind 127.0.0.1 (CCX_ALLOW_INSECURE=1 if the network is private)."
            )


def login_url(url: str, token: str) -> str:
    """The address that logs a browser in: the token once in the query, swapped for a cookie at once."""
    return f"{url}?{urlencode({TOKEN_PARAM: token})}"


def url_of(host: str, port: int, tls: bool = False) -> str:
    return f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}/"


def _static(name: str) -> bytes:
    return (resources.files("runner.dashboard") / "static" / name).read_bytes()


def _response(status: HTTPStatus, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> Response:
    headers = Headers({"Content-Type": content_type, "Content-Length": str(len(body)), **_COMMON, **(extra or {})})
    return Response(status.value, status.phrase, headers, body)


def json_response(status: HTTPStatus, body: Any) -> Response:
    return _response(status, orjson.dumps(body), "application/json")


class Dashboard:
    """The routes: which request gets what, after the access check."""

    def __init__(self, config: DashboardConfig, client: redis.asyncio.Redis, runner: Runner) -> None:
        self.config = config
        self.client = client
        self.reader = Reader(client, config.queue)
        self.hub = Hub(client, self.reader, runner)
        self.auth = Auth(config.token, config.host, config.port)
        self.index = _static("index.html")
        self.login = _static("login.html")
        self.assets = {name: _static(name) for name in _ASSETS}
        self.metrics = metrics.registry(metrics.scrape_client(config.redis_url), config.queue)
        # Scrapes get a thread of their own: a slow Redis never holds up submit and cancel, which use
        # the default executor.
        self._scrapes = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ccx-metrics")

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return json_response(HTTPStatus.OK, {"status": "ok"})
        if path.startswith("/static/") and path[len("/static/") :] in self.assets:
            name = path[len("/static/") :]
            return _response(HTTPStatus.OK, self.assets[name], _ASSETS[name])
        websocket = path == LIVE_PATH
        decision = self.auth.decide(request.path, request.headers, websocket=websocket)
        if decision.verdict is Verdict.BAD_REQUEST:
            return json_response(HTTPStatus.BAD_REQUEST, {"error": decision.reason})
        if decision.verdict is Verdict.FORBIDDEN:
            return json_response(HTTPStatus.FORBIDDEN, {"error": decision.reason})
        if decision.verdict is Verdict.REDIRECT:
            return _response(
                HTTPStatus.SEE_OTHER,
                b"",
                "text/plain",
                {"Location": decision.location, "Set-Cookie": decision.set_cookie},
            )
        if decision.verdict is Verdict.LOGIN:
            if path.startswith("/api/") or websocket or path == metrics.PATH:
                return json_response(
                    HTTPStatus.UNAUTHORIZED,
                    {
                        "error": "Unauthorized: open the dashboard with ?token=<token>, or send 'Authorization: Bearer <token>'."
                    },
                )
            page = self.login.replace(
                b"<!--wrong-->", b"<p class='error'>That token is not right.</p>" if decision.wrong_token else b""
            )
            return _response(HTTPStatus.UNAUTHORIZED, page, "text/html; charset=utf-8", _PAGE_SECURITY)
        if websocket:
            return None
        if path == metrics.PATH:
            # The collector reads Redis with a sync client: off the event loop, on the scrapes' thread.
            body = await asyncio.get_running_loop().run_in_executor(
                self._scrapes, prometheus_client.generate_latest, self.metrics
            )
            return _response(HTTPStatus.OK, body, prometheus_client.CONTENT_TYPE_LATEST)
        if path == "/" or re.fullmatch(r"/tasks/[^/]+", path):
            return _response(HTTPStatus.OK, self.index, "text/html; charset=utf-8", _PAGE_SECURITY)
        if path.startswith("/api/"):
            try:
                return await self.api(path, parse_qs(urlsplit(request.path).query))
            except redis.RedisError as exc:
                return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"Redis is unreachable ({exc})."})
        return json_response(HTTPStatus.NOT_FOUND, {"error": f"Not found: {path}"})

    async def api(self, path: str, query: dict[str, list[str]]) -> Response:
        parts = path.strip("/").split("/")
        if parts == ["api", "queue"]:
            return json_response(HTTPStatus.OK, await self.reader.snapshot())
        if len(parts) in (3, 4) and parts[1] == "tasks" and TASK_ID.match(parts[2]):
            task_id = parts[2]
            record = await self.reader.record(task_id)
            if record is None:
                return json_response(
                    HTTPStatus.NOT_FOUND, {"error": f"No task {task_id} in this Redis (it may have expired)."}
                )
            if len(parts) == 3:
                return json_response(HTTPStatus.OK, record)
            if parts[3] == "log":
                before = (query.get("before") or [None])[0]
                offset = (query.get("offset") or ["0"])[0]
                if (before is not None and not ENTRY_ID.match(before)) or not offset.isdigit():
                    return json_response(
                        HTTPStatus.BAD_REQUEST,
                        {"error": "'before' must be a log entry id like 1700000000000-0, 'offset' a character count."},
                    )
                entries, more = await logview.read_page(self.client, task_id, before, int(offset) if before else 0)
                transcript = None
                if record["spec"].get("agent") == "claude":
                    transcript = await logview.transcript_for(self.client, task_id, entries[0] if entries else None)
                chunks = logview.make_chunks(entries, transcript)
                return json_response(HTTPStatus.OK, {"task": task_id, "chunks": chunks, "more_before": more})
        return json_response(HTTPStatus.NOT_FOUND, {"error": f"Not found: {path}"})

    async def handle(self, connection: ServerConnection) -> None:
        await Session(self.hub, connection).serve()


def redis_async_client(redis_url: str) -> redis.asyncio.Redis:
    """A bytes-returning client that rides out a blip but reports an outage within seconds."""
    from redis.asyncio.retry import Retry

    return redis.asyncio.Redis.from_url(
        redis_url,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=2),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=5,
        health_check_interval=30,
        driver_info=None,
    )


async def serve_dashboard(
    config: DashboardConfig,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str], Awaitable[None] | None] | None = None,
    announce: bool = True,
) -> None:
    """Serve the dashboard until ``stop`` is set (forever without one; cancel the task to end it).

    Checks the settings and Redis first (:class:`DashboardError` or
    :class:`~runner.client.RedisUnavailable`, with one sentence), then listens; with ``announce`` prints ``ccx dashboard on URL``
    on stdout, and calls ``on_ready(url)``. ``config.port`` 0 picks a free port.
    """
    config.check()
    try:
        tls = server_tls_context(config.tls_cert, config.tls_key)
    except ConfigError as exc:
        raise DashboardError(str(exc)) from None
    client = redis_async_client(config.redis_url)
    runner = Runner(redis_url=config.redis_url, queue=config.queue)
    try:
        try:
            await client.ping()
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"Redis is unreachable at {redact_url(config.redis_url)} ({exc}): start it (e.g. `ccx up`) or pass --redis-url."
            ) from None
        dashboard = Dashboard(config, client, runner)
        server: Server = await serve(
            dashboard.handle,
            config.host,
            config.port,
            process_request=dashboard.process_request,
            ssl=tls,
            compression=None,
            max_size=1024 * 1024,
            write_limit=256 * 1024,
            close_timeout=2,
        )
        port = next(iter(server.sockets)).getsockname()[1]
        dashboard.auth.port = port
        url = url_of(config.host, port, tls is not None)
        hub = asyncio.create_task(dashboard.hub.run())
        try:
            if announce:
                print(f"ccx dashboard on {url} ({config.token_source or 'token given'})", flush=True)
                if sys.stdout.isatty():  # as Jupyter does: the user's own terminal gets a URL that logs in
                    print(f"log in at {login_url(url, config.token or '')}", flush=True)
            log.info("dashboard on %s serving queue %s of %s", url, config.queue, redact_url(config.redis_url))
            if on_ready is not None:
                ready = on_ready(url)
                if ready is not None:
                    await ready
            await (stop.wait() if stop is not None else asyncio.Future())
        finally:
            hub.cancel()
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
            with contextlib.suppress(BaseException):
                await hub
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
        runner.redis.close()


def run(config: DashboardConfig) -> int:
    """Serve until SIGINT/SIGTERM; returns an exit status, printing one sentence on failure."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_dashboard(config, stop)

    try:
        asyncio.run(main())
    except DashboardError as exc:
        print(f"ccx dashboard: {exc}", file=sys.stderr)
        return 2
    except RedisUnavailable as exc:
        print(f"ccx dashboard: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(
            f"ccx dashboard: could not listen on {config.host}:{config.port}: {exc.strerror or exc}.", file=sys.stderr
        )
        return 1
    return 0
