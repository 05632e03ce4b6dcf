"""The worker's side of the handler protocol: run one command remotely, relay its frames.

Every way this can fail ends in a :class:`~runner.errors.HandlerUnavailable`,
a :class:`~runner.errors.HandlerError` or a :class:`~runner.errors.ConfigError`
carrying one sentence that says what happened and what to do. Frames are read
with :func:`handler.protocol.parse_server_message`, never indexed raw here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from handler.config import is_loopback
from handler.protocol import (
    CANCEL,
    EXECUTE,
    Error,
    ExecuteParams,
    ExecuteResult,
    Output,
    ProtocolError,
    Result,
    ServerMessage,
    Started,
    parse_server_message,
    request,
)
from runner.errors import ConfigError, HandlerError, HandlerImpostor, HandlerUnavailable, HandlerUnreachable
from runner.listener import foreign_owner, impostor_sentence

OnOutput = Callable[[str, int, str], Awaitable[None]]
OnStarted = Callable[[int], Awaitable[None]]

EXECUTE_ID = 1
CANCEL_ID = 2


def check_transport(url: str, token: str | None, allow_insecure: bool = False) -> None:
    """Refuse to send a token in clear to another machine: raise :class:`ConfigError` saying what to do."""
    parts = urlsplit(url)
    if parts.scheme == "ws" and token and not is_loopback(parts.hostname or "") and not allow_insecure:
        raise ConfigError(
            f"Refusing to send the handler token over plain ws:// to {parts.hostname}: anyone on the network "
            "could read it. Serve the handler with --tls-cert/--tls-key and use a wss:// URL "
            "(or set CCX_ALLOW_INSECURE=1 on a network you trust)."
        )


def tls_context(url: str, ca: str | None = None) -> ssl.SSLContext | None:
    """The client side of ``wss://``: the system's CAs, or only ``ca`` when given; None for ``ws://``."""
    if urlsplit(url).scheme != "wss":
        return None
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"CCX_HANDLER_CA: could not load {ca} ({reason}); give a PEM CA certificate.") from None


def check_listener(url: str, token: str | None) -> None:
    """Before a token goes to a loopback handler, make sure the socket there is this user's (runner/listener.py)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    uid = foreign_owner(parts.hostname or "", port) if token else None
    if uid is not None:
        raise HandlerImpostor(impostor_sentence("handler", url, port, uid, "token") + " (`ccx handler`).")


def _connect_options(url: str, token: str | None, ca: str | None, allow_insecure: bool) -> dict[str, Any]:
    check_transport(url, token, allow_insecure)
    check_listener(url, token)
    options: dict[str, Any] = {"additional_headers": {"Authorization": f"Bearer {token}"} if token else None}
    context = tls_context(url, ca)
    if context is not None:
        options["ssl"] = context
    return options


def _unreachable(url: str, exc: BaseException) -> HandlerUnavailable:
    """Why a connection could not be opened: a certificate problem is final, a refusal may pass."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return HandlerUnavailable(
            f"The handler at {url} presented a certificate this worker does not trust ({exc.verify_message}): "
            "set CCX_HANDLER_CA to the CA that signed it."
        )
    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
    return HandlerUnreachable(
        f"Could not reach the handler at {url} ({cause}): start it with `ccx handler` (or `ccx up`), or set CCX_HANDLER_URL."
    )


async def execute_remote(
    url: str,
    params: ExecuteParams,
    on_output: OnOutput,
    *,
    token: str | None = None,
    on_started: OnStarted | None = None,
    cancel: asyncio.Event | None = None,
    open_timeout: float = 10.0,
    ca: str | None = None,
    allow_insecure: bool = False,
) -> ExecuteResult:
    """Run ``params`` on the handler at ``url`` and return its outcome; output goes to ``on_output``.

    Setting ``cancel`` asks the handler to stop the run; the result then says ``cancelled``.
    Leaving (e.g. this task being cancelled) closes the connection, and the handler kills the run.
    """
    connection = await _connect(url, _connect_options(url, token, ca, allow_insecure), open_timeout)
    async with connection:
        await connection.send(request(EXECUTE, params.to_params(), EXECUTE_ID), text=True)
        watcher = asyncio.create_task(_forward_cancel(connection, cancel)) if cancel is not None else None
        try:
            return await _answer(connection, url, on_output, on_started)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher


async def _connect(url: str, options: dict[str, Any], open_timeout: float) -> ClientConnection:
    try:
        return await connect(
            url,
            **options,
            compression=None,
            max_size=64 * 1024 * 1024,
            open_timeout=open_timeout,
            ping_interval=20,
            ping_timeout=20,
            max_queue=4,  # frames buffered before backpressure reaches the handler: each may be ~1 MB
        )
    except InvalidStatus as exc:
        raise _refused(url, exc.response.status_code) from None
    except (OSError, TimeoutError, InvalidURI, InvalidHandshake) as exc:
        raise _unreachable(url, exc) from None


async def _answer(
    connection: ClientConnection, url: str, on_output: OnOutput, on_started: OnStarted | None
) -> ExecuteResult:
    """Relay the run's notifications until the answer to ``execute`` comes; return it, or raise its error."""
    while True:
        match await _receive(connection, url):
            case Output(stream=stream, seq=seq, data=data):
                await on_output(stream, seq, data)
            case Started(pid=pid) if on_started is not None:
                await on_started(pid)
            case Error(id=request_id, code=code, message=message) if request_id == EXECUTE_ID:
                raise HandlerError(code, message)
            case Result(id=request_id, result=result) if request_id == EXECUTE_ID:
                return ExecuteResult.from_dict(result)
            case _:
                pass  # a place in line, the cancel's answer, a notification of a newer handler: nothing to do


async def _receive(connection: ClientConnection, url: str) -> ServerMessage:
    """The handler's next message; a connection that closes or a frame that breaks the protocol ends the run."""
    try:
        raw = await connection.recv(decode=False)
    except ConnectionClosed:
        raise HandlerUnavailable(
            f"The handler at {url} closed the connection before the task finished "
            "(it crashed, restarted or was stopped); the handler stops the task's processes, "
            "at the latest when it starts again."
        ) from None
    try:
        return parse_server_message(raw)
    except ProtocolError as exc:
        raise _unreadable(url, exc) from None


def _unreadable(url: str, exc: ProtocolError) -> HandlerUnavailable:
    # Raised out of the connection's block: closing it makes the handler stop any run this worker cannot follow.
    return HandlerUnavailable(
        f"The handler at {url} sent a message this worker cannot read ({exc.message.rstrip('.')}): "
        "check that CCX_HANDLER_URL names a cc-execute handler of this version."
    )


def _refused(url: str, status: int) -> HandlerUnavailable:
    if status == 401:
        return HandlerUnavailable(
            f"The handler at {url} refused the connection (HTTP 401): set CCX_HANDLER_TOKEN to the handler's token."
        )
    return HandlerUnavailable(f"The handler at {url} answered HTTP {status}: check CCX_HANDLER_URL (it ends in /ws).")


async def probe_handler(
    url: str,
    token: str | None = None,
    open_timeout: float = 2.0,
    ca: str | None = None,
    allow_insecure: bool = False,
) -> None:
    """Connect, ask one harmless question (a ``cancel`` of no run), read the answer; raise
    :class:`HandlerUnavailable` if the handler cannot be reached or refuses us."""
    options = _connect_options(url, token, ca, allow_insecure)
    try:
        async with connect(url, **options, compression=None, open_timeout=open_timeout) as connection:
            await connection.send(request(CANCEL, {"id": "probe"}, CANCEL_ID), text=True)
            parse_server_message(await asyncio.wait_for(connection.recv(decode=False), open_timeout))
    except ProtocolError as exc:
        raise _unreadable(url, exc) from None
    except InvalidStatus as exc:
        raise _refused(url, exc.response.status_code) from None
    except (OSError, TimeoutError, InvalidURI, InvalidHandshake, ConnectionClosed) as exc:
        raise _unreachable(url, exc) from None


async def _forward_cancel(connection: ClientConnection, cancel: asyncio.Event) -> None:
    await cancel.wait()
    with contextlib.suppress(ConnectionClosed):
        await connection.send(request(CANCEL, {"id": EXECUTE_ID}, CANCEL_ID), text=True)
