"""The WebSocket server: auth, ``/healthz``, one session per connection, the FIFO slot.

Protocol parsing lives in :mod:`handler.protocol`, process control in
:mod:`handler.process`; this module only wires them to sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import ssl
import time
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from handler import __version__, proctree, protocol, watchdog
from handler.config import HEALTH_PATH, WS_PATH, HandlerConfig, is_loopback, server_tls_context
from handler.kept import KeptOutcomes, OutputTail
from handler.memory import pin_malloc_thresholds
from handler.process import ProcessRun, RunLimits
from handler.protocol import ProtocolError
from handler.slots import FifoSlots

log = logging.getLogger("ccx.handler")


def _json_response(status: int, reason: str, body: dict[str, Any], extra: dict[str, str] | None = None) -> Response:
    headers = Headers({"Content-Type": "application/json", **(extra or {})})
    payload = orjson.dumps(body)
    headers["Content-Length"] = str(len(payload))
    return Response(status, reason, headers, payload)


@dataclass
class FencedRun:
    """A run that carries a fencing token: runs of one key never overlap, the newest token wins."""

    token: int
    run: ProcessRun
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class Handler:
    """Shared state of one handler process: its settings, the slots and every live session."""

    def __init__(self, config: HandlerConfig) -> None:
        self.config = config
        self.fences: dict[str, int] = {}
        """The newest fencing token seen for each key (a queue)."""
        self.refused: dict[str, int] = {}
        """The stale token last refused (and logged) for each key."""
        self.fenced: dict[str, list[FencedRun]] = {}
        self.kept = KeptOutcomes(directory=config.kept_dir)
        """Outcomes of runs whose answer may not have reached their caller (see handler/kept.py)."""
        self.slots = FifoSlots(config.max_concurrent)
        self.limits = RunLimits(grace=config.grace)
        self.sessions: set[Session] = set()
        self.started = time.monotonic()
        self.stopping = False

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "running": self.slots.running,
            "queued": self.slots.queued,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3),
        }

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer health checks; refuse browsers and clients without the token before the upgrade."""
        # A repeated Host, Origin or Authorization is ambiguous (a proxy may have checked the other one) and
        # reading it raises MultipleValuesError, which websockets answers with a 500: refused with a 400, as
        # HTTP says for a repeated Host (RFC 9112, section 3.2).
        for name in ("Host", "Origin", "Authorization"):
            if len(request.headers.get_all(name)) > 1:
                log.warning("refused a request from %s with %s sent twice", connection.remote_address, name)
                return _json_response(
                    400,
                    "Bad Request",
                    {"error": f"Bad request: the {name} header was sent more than once; send it once."},
                )
        path = request.path.split("?", 1)[0]
        if path == HEALTH_PATH:
            return _json_response(200, "OK", self.health())
        if path != WS_PATH:
            return _json_response(404, "Not Found", {"error": f"Not found: the WebSocket endpoint is {WS_PATH}."})
        # Browsers always send Origin (and let any page open ws://127.0.0.1); the worker and scripts never do.
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() not in self.config.allowed_origins:
            log.warning("refused a browser connection from origin %r", origin[:200])
            return _json_response(
                403,
                "Forbidden",
                {
                    "error": "Forbidden: browser pages may not connect; the operator can allow an origin with --allow-origin."
                },
            )
        if self.config.token is not None:
            scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                supplied.strip().encode(), self.config.token.encode()
            ):
                log.warning("refused a client without a valid token from %s", connection.remote_address)
                return _json_response(
                    401,
                    "Unauthorized",
                    {"error": "Unauthorized: send 'Authorization: Bearer <token>' with the handler's token."},
                    {"WWW-Authenticate": "Bearer"},
                )
        return None

    def admit(self, key: str, token: int, run: ProcessRun, request_id: Any) -> tuple[FencedRun, list[FencedRun]]:
        """Register a fenced run; refuse an older token; stop (and return) the runs with an older one.

        The caller waits for the returned runs to end before starting its own: two runs of one key
        never overlap, even with ``--max-concurrent`` above 1 and a worker that lost its lock.
        """
        newest = self.fences.get(key, -1)
        if token < newest:
            if self.refused.get(key) != token:
                # Once per stale token: a worker refused again and again is one cause, not a flood.
                self.refused[key] = token
                log.warning(
                    "refusing runs of queue %r with stale fencing token %d (the newest seen is %d): their worker "
                    "lost its lock, or Redis lost its data and its clock went back (then restart this handler)",
                    key,
                    token,
                    newest,
                )
            raise ProtocolError(
                protocol.STALE_FENCE,
                f"Refused: this run's fencing token {token} for queue '{key}' is stale, as a newer worker (token "
                f"{newest}) serves the queue; the task is left to that worker. If no other worker serves it, Redis "
                "lost its data and its clock went back: restart this handler to forget the newer token.",
                request_id,
            )
        self.fences[key] = token
        runs = self.fenced.setdefault(key, [])
        older = [entry for entry in runs if entry.token < token]
        for entry in older:
            log.warning("stopping a run of queue %r with fencing token %d: token %d arrived", key, entry.token, token)
            entry.run.cancel()
        entry = FencedRun(token, run)
        runs.append(entry)
        return entry, older

    def release_fence(self, key: str, entry: FencedRun) -> None:
        entry.ended.set()
        runs = self.fenced.get(key, [])
        if entry in runs:
            runs.remove(entry)
        if not runs:
            self.fenced.pop(key, None)

    async def handle(self, connection: ServerConnection) -> None:
        session = Session(self, connection)
        self.sessions.add(session)
        try:
            await session.serve()
        finally:
            self.sessions.discard(session)

    async def stop_all(self) -> None:
        """Stop every run of every session (on shutdown): no process outlives the handler."""
        self.stopping = True  # and start no new one meanwhile
        await asyncio.gather(*(session.stop_runs() for session in list(self.sessions)), return_exceptions=True)


class Session:
    """One client connection; its runs die with it."""

    def __init__(self, handler: Handler, connection: ServerConnection) -> None:
        self.handler = handler
        self.connection = connection
        self.runs: dict[Any, ProcessRun] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.kept: list[str] = []
        """Names of this connection's runs whose outcome the handler keeps until the client has read it."""

    async def send(self, message: bytes) -> bool:
        """Send a text frame; False when the client has gone (its runs are being stopped)."""
        try:
            await self.connection.send(message, text=True)
        except ConnectionClosed:
            return False
        return True

    async def serve(self) -> None:
        try:
            async for message in self.connection:
                await self.dispatch(message)
        except ConnectionClosed:
            pass
        finally:
            await self.stop_runs()
            if self.connection.close_code == 1000:  # the client said goodbye, so it read every answer
                for run in self.kept:
                    self.handler.kept.delivered(run)

    async def stop_runs(self) -> None:
        for run in self.runs.values():
            run.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def dispatch(self, message: str | bytes) -> None:
        request_id = None
        try:
            if isinstance(message, bytes):
                raise ProtocolError(
                    protocol.INVALID_REQUEST, "Invalid request: binary frames are not accepted; send JSON text frames."
                )
            req = protocol.parse_request(message)
            request_id = req.id
            if req.method == protocol.EXECUTE:
                self.start_execute(req)
            elif req.method == protocol.CANCEL:
                target = protocol.parse_cancel_params(req.params, req.id)
                run = self.runs.get(target)
                if run is None:
                    raise ProtocolError(protocol.UNKNOWN_RUN, f"No running execute request has id {target!r}.", req.id)
                run.cancel()
                if req.id is not None:
                    await self.send(protocol.response(req.id, {"cancelling": True}))
            else:
                raise ProtocolError(protocol.METHOD_NOT_FOUND, f"Method not found: {req.method!r}.", req.id)
        except ProtocolError as exc:
            await self.send(
                protocol.error_response(
                    exc.request_id if exc.request_id is not None else request_id, exc.code, exc.message
                )
            )

    def start_execute(self, req: protocol.Request) -> None:
        if req.id is None:
            raise ProtocolError(protocol.INVALID_REQUEST, "Invalid request: 'execute' needs an 'id' to answer to.")
        if self.handler.stopping:
            raise ProtocolError(
                protocol.SHUTTING_DOWN, "The handler is shutting down; run the task again once it is back.", req.id
            )
        if req.id in self.runs:
            raise ProtocolError(
                protocol.DUPLICATE_ID, f"A run with id {req.id!r} is already in progress on this connection.", req.id
            )
        params = protocol.parse_execute_params(req.params, req.id)
        check = self.handler.config.allow.check
        try:
            # Refused on arrival, before taking a place in line.
            check(params.argv[0], params.cwd, params.env, argv=params.argv)
        except ProtocolError as exc:
            raise ProtocolError(exc.code, exc.message, req.id) from None

        tail = OutputTail() if params.run is not None else None

        async def emit(stream: str, seq: int, data: str) -> None:
            if tail is not None:
                tail.add(stream, data)
            await self.connection.send(protocol.output_notification(req.id, stream, seq, data), text=True)

        run = ProcessRun(params, emit, self.handler.limits, check)
        fenced: tuple[FencedRun, list[FencedRun]] | None = None
        if params.fence is not None:
            fenced = self.handler.admit(params.fence["key"], params.fence["token"], run, req.id)
        self.runs[req.id] = run
        # Take the place in line now, synchronously: arrival order is the order runs start in.
        waiter = self.handler.slots.join()
        task = asyncio.create_task(self.execute(req.id, run, waiter, fenced, tail))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def execute(
        self,
        request_id: Any,
        run: ProcessRun,
        waiter: asyncio.Future[None] | None,
        fenced: tuple[FencedRun, list[FencedRun]] | None = None,
        tail: OutputTail | None = None,
    ) -> None:
        slots = self.handler.slots
        try:
            if waiter is not None:
                try:
                    await self.send(
                        protocol.notification(protocol.PROCESS_QUEUED, {"id": request_id, "position": slots.queued})
                    )
                except BaseException:
                    slots.abandon(waiter)
                    raise
                if not await slots.acquire(run.cancel_requested, waiter):
                    await self.send(protocol.response(request_id, run.not_started_result().to_dict()))
                    return
            try:
                if fenced is not None and fenced[1]:
                    # Runs of this queue with an older token are being stopped: start once they are gone.
                    await asyncio.gather(*(entry.ended.wait() for entry in fenced[1]))
                    if run.cancel_requested.is_set():
                        await self.send(protocol.response(request_id, run.not_started_result().to_dict()))
                        return
                if run.params.collect and await self.give_back(request_id, run.params):
                    pass
                elif run.params.collect_only:
                    message = "Nothing kept for those runs (none ran to its end here unread); nothing was run."
                    await self.send(protocol.error_response(request_id, protocol.NOTHING_KEPT, message))
                else:
                    await self.run_and_answer(request_id, run, tail)
            finally:
                slots.release()
        except Exception:
            log.exception("execute %r failed inside the handler", request_id)
            await self.send(
                protocol.error_response(
                    request_id, protocol.INTERNAL_ERROR, "Internal error in the handler; see its log."
                )
            )
        finally:
            self.runs.pop(request_id, None)
            if fenced is not None and run.params.fence is not None:
                self.handler.release_fence(run.params.fence["key"], fenced[0])

    async def run_and_answer(self, request_id: Any, run: ProcessRun, tail: OutputTail | None) -> None:
        """Start the run, relay it to its end, answer; its slot is already taken."""
        try:
            pid = await run.start()
        except ProtocolError as exc:
            await self.send(protocol.error_response(request_id, exc.code, exc.message))
            return
        await self.send(protocol.notification(protocol.PROCESS_STARTED, {"id": request_id, "pid": pid}))
        result = await run.wait()
        if result.cancelled and self.handler.stopping:
            # Not the user's cancel: the handler is going away. The worker runs the task again.
            await self.send(
                protocol.error_response(
                    request_id,
                    protocol.SHUTTING_DOWN,
                    "The handler shut down while the task ran (its processes were stopped); "
                    "the task is run again once a handler is back.",
                )
            )
            return
        if run.params.run is not None and tail is not None and not result.cancelled:
            # Kept until the client has read it (see handler/kept.py): sent is not received.
            self.handler.kept.keep(run.params.run, result, tail)
            self.kept.append(run.params.run)
        await self.send(protocol.response(request_id, result.to_dict()))

    async def give_back(self, request_id: Any, params: protocol.ExecuteParams) -> bool:
        """If one of the runs ``params`` collects ran to its end here and its caller never read the answer,
        answer with that outcome (its output replayed) instead of running the task again; False if none did."""
        found = self.handler.kept.collect(params.collect or [])
        if found is None:
            return False
        name, kept = found
        log.warning("giving back the outcome of run %s, which ended unread, instead of running it again", name)
        result = replace(kept.result, collected=name)
        if params.run is not None:  # kept again under this run's name, until this caller has read it
            self.handler.kept.keep(params.run, result, kept.output)
            self.kept.append(params.run)
        await self.send(protocol.notification(protocol.PROCESS_STARTED, {"id": request_id, "pid": 0}))
        for seq, (stream, data) in enumerate(kept.output.frames):
            if not await self.send(protocol.output_notification(request_id, stream, seq, data)):
                return True
        await self.send(protocol.response(request_id, result.to_dict()))
        return True


async def start_server(config: HandlerConfig) -> tuple[Handler, Server]:
    """Check the settings and start listening; the caller owns the returned server."""
    config.check()
    handler = Handler(config)
    if handler.kept.load():  # before the first request: a task's next attempt may come at once
        log.warning("kept %d outcome(s) a previous handler left unread, for their tasks to collect", len(handler.kept))
    server = await serve(
        handler.handle,
        config.host,
        config.port,
        ssl=tls_context(config),
        process_request=handler.process_request,
        compression=None,  # output is streamed at hundreds of MB/s; deflate would cap it
        max_size=config.max_message_bytes,
        ping_interval=config.ping_interval,
        ping_timeout=config.ping_timeout,
        close_timeout=2,  # a dead client's runs are stopped soon after its pings time out
        write_limit=1 << 20,
    )
    return handler, server


def tls_context(config: HandlerConfig) -> ssl.SSLContext | None:
    """The server side of ``wss://``, or None for plain ``ws://``."""
    return server_tls_context(config.tls_cert, config.tls_key)


def bound_port(server: Server) -> int:
    return next(iter(server.sockets)).getsockname()[1]


async def run_forever(config: HandlerConfig, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then stop every run before returning.

    Should this process be killed outright instead, its watchdog stops the runs (see :mod:`handler.watchdog`).
    """
    pin_malloc_thresholds()
    swept = await proctree.kill_orphans(config.grace)
    if swept:
        log.warning("stopped %d process(es) left running by a previous handler that died", swept)
    guard = watchdog.start(config.grace)
    try:
        await _serve(config, ready)
    finally:
        if guard is not None:
            await guard.stop()


async def _serve(config: HandlerConfig, ready: asyncio.Event | None) -> None:

    handler, server = await start_server(config)
    port = bound_port(server)
    print(
        f"ccx handler listening on {config.scheme}://{config.host}:{port}{WS_PATH} "
        f"(allow: {config.allow.describe()}; {config.token_source or 'no token'})",
        flush=True,
    )
    if config.no_token:
        log.warning("running without a token (--no-token): any local user can run commands as this user")
    if config.allow.allow_all:
        log.warning("the allowlist is '*': any executable may run, with any environment")
    if not is_loopback(config.host) and not config.tls_cert:
        log.warning(
            "listening on %s without TLS: the token travels in clear; use --tls-cert/--tls-key across machines",
            config.host,
        )
    log.info("handler %s listening on %s:%d max_concurrent=%d", __version__, config.host, port, config.max_concurrent)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("handler stopping: ending %d session(s)", len(handler.sessions))
    server.close(close_connections=False)
    await handler.stop_all()
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 5)
