"""The dashboard's server: the page and a few GET JSON endpoints over HTTP, live updates over ``/live``.

Built on the ``websockets`` library the project already uses: its
``process_request`` hook answers plain GET requests (the page, its assets, the
JSON endpoints), and everything that changes a task or streams (submit,
cancel, the queue view, a task's log) goes over the WebSocket at ``/live``.

The page's shell (``/``, ``/tasks/<id>``) holds no data and is served to any request passing the Host
check; everything else needs a credential (see :mod:`runner.dashboard.auth`). GET endpoints (JSON; send
``Authorization: Bearer <session or token>``):

* ``/metrics`` – the queue's Prometheus metrics (text format; see docs/metrics.md).
* ``/api/queue`` – the queue view (running, queued in order, deferred, recent).
* ``/api/tasks/<id>`` – a task's record (its result's output cut to the last 64 KiB).
* ``/api/tasks/<id>/log?before=<entry id>[&offset=<n>]`` – about 256 KiB of the log before that
  entry (before its character ``n`` with ``offset``; the newest without ``before``), as the
  page's chunks, with ``more_before``.
* ``/api/logout`` – ends the session it is sent with (every session, sent with the token).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import signal
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
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from handler.config import ConfigError, is_loopback, server_tls_context
from runner import metrics
from runner.client import Runner
from runner.config import DEFAULT_DASHBOARD_HOST, DEFAULT_DASHBOARD_PORT, redact_url
from runner.dashboard import logview
from runner.dashboard.auth import (
    ALL_ENDED,
    AUTH_TIMEOUT,
    CLOSE_SESSION_ENDED,
    LOGGED_OUT,
    SESSION_ENDED,
    TOKEN_PARAM,
    Auth,
    Decision,
    Kind,
    Verdict,
)
from runner.dashboard.data import TASK_ID, Reader
from runner.dashboard.live import Hub, Session, encode
from runner.errors import DashboardError, RedisUnavailable
from runner.follow.aio import read_page
from runner.listener import redis_guard

log = logging.getLogger("ccx.dashboard")

LIVE_PATH = "/live"
LOGOUT_PATH = "/api/logout"
PAGE_PATH = re.compile(r"^/(tasks/[^/]+)?$")
SESSION_SWEEP = 30.0
"""Seconds between two looks for ``/live`` connections whose session outlived its maximum age."""
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


@dataclass(frozen=True)
class DashboardConfig:
    host: str = DEFAULT_DASHBOARD_HOST
    port: int = DEFAULT_DASHBOARD_PORT
    redis_url: str = ""
    """Required: there is no default Redis (runner/config.py, ``NO_REDIS``)."""
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
    """The address that logs a browser in: the token in the fragment, which the browser never sends over HTTP;
    the page swaps it for a session at once and drops it from the address bar."""
    return f"{url}#{urlencode({TOKEN_PARAM: token})}"


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
        self.auth = Auth(config.token or "", config.host)
        self.index = _static("index.html")
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
        kind = Kind.LIVE if path == LIVE_PATH else Kind.PAGE if PAGE_PATH.match(path) else Kind.API
        decision = self.auth.decide(request.path, request.headers, kind)
        if decision.verdict is Verdict.BAD_REQUEST:
            return json_response(HTTPStatus.BAD_REQUEST, {"error": decision.reason})
        if decision.verdict is Verdict.FORBIDDEN:
            return json_response(HTTPStatus.FORBIDDEN, {"error": decision.reason})
        if decision.verdict is Verdict.REDIRECT:
            return _response(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": decision.location})
        if decision.verdict is Verdict.LOGIN:
            return json_response(HTTPStatus.UNAUTHORIZED, {"error": decision.reason})
        if kind is Kind.LIVE:
            return None
        if kind is Kind.PAGE:
            return _response(HTTPStatus.OK, self.index, "text/html; charset=utf-8", _PAGE_SECURITY)
        if path == metrics.PATH:
            # The collector reads Redis with a sync client: off the event loop, on the scrapes' thread.
            body = await asyncio.get_running_loop().run_in_executor(
                self._scrapes, prometheus_client.generate_latest, self.metrics
            )
            return _response(HTTPStatus.OK, body, prometheus_client.CONTENT_TYPE_LATEST)
        if path == LOGOUT_PATH:
            return await self.logout(decision)
        if path.startswith("/api/"):
            try:
                return await self.api(path, parse_qs(urlsplit(request.path).query))
            except redis.RedisError as exc:
                return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"Redis is unreachable ({exc})."})
        return json_response(HTTPStatus.NOT_FOUND, {"error": f"Not found: {path}"})

    async def logout(self, decision: Decision) -> Response:
        """End the session the request came with, and close its pages' connections; with the token, all of them."""
        if decision.with_token:
            count = self.auth.sessions.revoke_all()
            await self.close_ended(ALL_ENDED)
            message = f"Ended every dashboard session ({count}): each browser must open the login link again."
            return json_response(HTTPStatus.OK, {"ok": True, "message": message})
        self.auth.sessions.revoke(decision.session)
        await self.close_ended(LOGGED_OUT)
        return json_response(HTTPStatus.OK, {"ok": True, "message": LOGGED_OUT})

    async def close_ended(self, reason: str = SESSION_ENDED) -> None:
        """Close every ``/live`` connection whose session has ended (revoked, or past its maximum age)."""
        ended = [live for live in self.hub.sessions if not self.auth.sessions.alive(live.login)]
        await asyncio.gather(
            *(live.connection.close(CLOSE_SESSION_ENDED, reason) for live in ended), return_exceptions=True
        )

    async def run(self) -> None:
        """The background work: live updates, and ending connections whose session ended."""
        await asyncio.gather(self.hub.run(), self.sweep_sessions())

    async def sweep_sessions(self) -> None:
        """Forget expired sessions and close the connections still riding on one, now and then."""
        while True:
            await asyncio.sleep(SESSION_SWEEP)
            self.auth.sessions.prune()
            await self.close_ended()

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
                entries, more = await read_page(self.client, task_id, before, int(offset) if before else 0)
                first = entries[0] if entries else None
                transcript = await logview.transcript_for(self.client, task_id, record["spec"].get("agent"), first)
                chunks = logview.make_chunks(entries, transcript)
                return json_response(HTTPStatus.OK, {"task": task_id, "chunks": chunks, "more_before": more})
        return json_response(HTTPStatus.NOT_FOUND, {"error": f"Not found: {path}"})

    async def handle(self, connection: ServerConnection) -> None:
        key = await self.admit(connection)
        if key is None:
            return
        self.auth.sessions.opened(key)
        try:
            await Session(self.hub, connection, login=key).serve()
        finally:
            self.auth.sessions.closed(key)

    async def admit(self, connection: ServerConnection) -> str | None:
        """Wait for the connection's first message, which must authenticate it: its session's key, or None
        once the connection is closed with the reason (before any data was sent on it)."""
        try:
            first = await asyncio.wait_for(connection.recv(), AUTH_TIMEOUT)
        except ConnectionClosed:
            return None
        except TimeoutError:
            first = b""
        admission = self.auth.admit(first)
        try:
            if admission.close_code:
                await connection.close(admission.close_code, admission.reason)
                return None
            if admission.new_session:
                await connection.send(encode({"type": "session", "session": admission.new_session}))
        except ConnectionClosed:
            return None
        return admission.key


def redis_async_client(redis_url: str) -> redis.asyncio.Redis:
    """A bytes-returning client that rides out a blip but reports an outage within seconds."""

    return redis.asyncio.Redis.from_url(
        redis_url,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=2),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=5,
        health_check_interval=30,
        driver_info=None,
        **redis_guard(redis_url, asynchronous=True),
    )


def _announce(config: DashboardConfig, url: str, announce: bool) -> None:
    if announce:
        print(f"ccx dashboard on {url} ({config.token_source or 'token given'})", flush=True)
        if sys.stdout.isatty():  # as Jupyter does: the user's own terminal gets a URL that logs in
            print(f"log in at {login_url(url, config.token or '')}", flush=True)
    log.info("dashboard on %s serving queue %s of %s", url, config.queue, redact_url(config.redis_url))


async def serve_dashboard(
    config: DashboardConfig,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str], Awaitable[None] | None] | None = None,
    announce: bool = True,
) -> None:
    """Serve the dashboard until ``stop`` is set (forever without one; cancel the task to end it).

    Checks the settings and Redis first (:class:`DashboardError` or
    :class:`~runner.errors.RedisUnavailable`, with one sentence), then listens; with ``announce`` prints ``ccx dashboard on URL``
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
        url = url_of(config.host, port, tls is not None)
        background = asyncio.create_task(dashboard.run())
        try:
            _announce(config, url, announce)
            if on_ready is not None:
                ready = on_ready(url)
                if ready is not None:
                    await ready
            await (stop.wait() if stop is not None else asyncio.Future())
        finally:
            background.cancel()
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
            with contextlib.suppress(BaseException):
                await background
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
        runner.redis.close()


def run(config: DashboardConfig) -> int:
    """Serve until SIGINT/SIGTERM; returns an exit status, printing one sentence on failure."""

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
