"""The worker's side of the handler protocol: run one command remotely, relay its frames.

Every way this can fail ends in a :class:`HandlerUnavailable` or
:class:`HandlerError` carrying one sentence that says what happened and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

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

OnOutput = Callable[[str, int, str], Awaitable[None]]
OnStarted = Callable[[int], Awaitable[None]]

EXECUTE_ID = 1
CANCEL_ID = 2


class HandlerUnavailable(Exception):
    """The handler could not be reached, refused us, or went away mid-run."""


class HandlerError(Exception):
    """The handler answered ``execute`` with a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def execute_remote(
    url: str,
    params: ExecuteParams,
    on_output: OnOutput,
    *,
    token: str | None = None,
    on_started: OnStarted | None = None,
    cancel: asyncio.Event | None = None,
    open_timeout: float = 10.0,
) -> ExecuteResult:
    """Run ``params`` on the handler at ``url`` and return its outcome; output goes to ``on_output``.

    Setting ``cancel`` asks the handler to stop the run; the result then says ``cancelled``.
    Leaving (e.g. this task being cancelled) closes the connection, and the handler kills the run.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        connection = await connect(
            url,
            additional_headers=headers,
            compression=None,
            max_size=64 * 1024 * 1024,
            open_timeout=open_timeout,
            ping_interval=20,
            ping_timeout=20,
            max_queue=4,  # frames buffered before backpressure reaches the handler: each may be ~1 MB
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status == 401:
            raise HandlerUnavailable(
                f"The handler at {url} refused the connection (HTTP 401): set CCX_HANDLER_TOKEN to the handler's token."
            ) from None
        raise HandlerUnavailable(
            f"The handler at {url} answered HTTP {status}: check CCX_HANDLER_URL (it ends in /ws)."
        ) from None
    except (OSError, TimeoutError, InvalidURI, InvalidHandshake) as exc:
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
        raise HandlerUnavailable(
            f"Could not reach the handler at {url} ({cause}): start it with `ccx handler` (or `ccx up`), or set CCX_HANDLER_URL."
        ) from None

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


async def probe_handler(url: str, token: str | None = None, open_timeout: float = 2.0) -> None:
    """Connect, ask one harmless question (a ``cancel`` of no run), read the answer; raise
    :class:`HandlerUnavailable` if the handler cannot be reached or refuses us."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        async with connect(url, additional_headers=headers, compression=None, open_timeout=open_timeout) as connection:
            await connection.send(request(CANCEL, {"id": "probe"}, CANCEL_ID), text=True)
            orjson.loads(await asyncio.wait_for(connection.recv(decode=False), open_timeout))
    except InvalidStatus as exc:
        raise HandlerUnavailable(f"The handler at {url} answered HTTP {exc.response.status_code}.") from None
    except (OSError, TimeoutError, InvalidURI, InvalidHandshake, ConnectionClosed) as exc:
        raise HandlerUnavailable(f"Could not reach the handler at {url} ({exc or type(exc).__name__}).") from None


async def _forward_cancel(connection: object, cancel: asyncio.Event) -> None:
    await cancel.wait()
    with contextlib.suppress(ConnectionClosed):
        await connection.send(request(CANCEL, {"id": EXECUTE_ID}, CANCEL_ID), text=True)  # type: ignore[attr-defined]
