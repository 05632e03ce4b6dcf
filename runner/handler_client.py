"""The worker's side of the handler protocol: run one command remotely, relay its frames.

Every way this can fail ends in a :class:`HandlerUnavailable` or
:class:`HandlerError` carrying one sentence that says what happened and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from handler.config import ConfigError, is_loopback
from handler.protocol import (
    CANCEL,
    EXECUTE,
    PROCESS_OUTPUT,
    PROCESS_QUEUED,
    PROCESS_STARTED,
    ExecuteParams,
    ExecuteResult,
    request,
)
from runner.errors import Unavailable
from runner.listener import foreign_owner, impostor_sentence

OnOutput = Callable[[str, int, str], Awaitable[None]]
OnStarted = Callable[[int], Awaitable[None]]

EXECUTE_ID = 1
CANCEL_ID = 2


class HandlerUnavailable(Unavailable):
    """The handler could not be reached, refused us, or went away mid-run."""


class HandlerUnreachable(HandlerUnavailable):
    """No connection could be opened: nothing ran, so trying again later is safe."""


class HandlerImpostor(HandlerUnreachable):
    """Another user's process holds the handler's loopback port: the token was not sent. The handler is not
    there, so, as for a handler that cannot be reached, the queue waits for it."""


class HandlerError(Exception):
    """The handler answered ``execute`` with a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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
    options = _connect_options(url, token, ca, allow_insecure)
    try:
        connection = await connect(
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

    async with connection:
        await connection.send(request(EXECUTE, params.to_params(), EXECUTE_ID), text=True)
        watcher = asyncio.create_task(_forward_cancel(connection, cancel)) if cancel is not None else None
        try:
            while True:
                try:
                    message = await connection.recv(decode=False)
                except ConnectionClosed:
                    raise HandlerUnavailable(
                        f"The handler at {url} closed the connection before the task finished "
                        "(it crashed, restarted or was stopped); the handler stops the task's processes, "
                        "at the latest when it starts again."
                    ) from None
                data = orjson.loads(message)
                method = data.get("method")
                if method == PROCESS_OUTPUT:
                    params_ = data["params"]
                    await on_output(params_["stream"], params_["seq"], params_["data"])
                elif method == PROCESS_STARTED:
                    if on_started is not None:
                        await on_started(data["params"]["pid"])
                elif method == PROCESS_QUEUED:
                    continue
                elif data.get("id") == EXECUTE_ID:
                    if "error" in data:
                        raise HandlerError(data["error"].get("code", 0), data["error"].get("message", "unknown error"))
                    return ExecuteResult.from_dict(data["result"])
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher


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
            orjson.loads(await asyncio.wait_for(connection.recv(decode=False), open_timeout))
    except InvalidStatus as exc:
        raise _refused(url, exc.response.status_code) from None
    except (OSError, TimeoutError, InvalidURI, InvalidHandshake, ConnectionClosed) as exc:
        raise _unreachable(url, exc) from None


async def _forward_cancel(connection: object, cancel: asyncio.Event) -> None:
    await cancel.wait()
    with contextlib.suppress(ConnectionClosed):
        await connection.send(request(CANCEL, {"id": EXECUTE_ID}, CANCEL_ID), text=True)  # type: ignore[attr-defined]
