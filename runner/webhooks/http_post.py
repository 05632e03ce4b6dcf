"""One webhook POST: a single DNS lookup, the destination check (destination.py), a connection pinned to the
checked address, and a deadline thread that bounds the whole request (connect, send, answer)."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runner.webhooks.destination import Network, Resolved, refusal


@dataclass(frozen=True)
class Response:
    """How one POST went: the HTTP status, or why there was none."""

    status_code: int | None = None
    error: str | None = None
    refused: bool = False
    """The destination was not allowed, so nothing was sent (and it is not tried again)."""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def resolve(host: str, port: int) -> Resolved:
    """Every address of ``host``: the one lookup a POST makes (tests put a resolver of their own here)."""
    return [(info[0], info[4]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _pinned(resolved: Resolved) -> Callable[..., socket.socket]:
    """http.client's connect function, tied to the checked addresses: it ignores the host it is handed,
    since a second lookup could answer differently (DNS rebinding). Tries them in order, all within
    ``timeout``, as :func:`socket.create_connection` would."""

    def connect(_address: object, timeout: float = 10.0, _source: object = None) -> socket.socket:
        deadline = time.monotonic() + timeout
        error = OSError("the host has no address")
        for family, sockaddr in resolved:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(left)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error

    return connect


def _connection(url: str, timeout: float, allow: Sequence[Network]) -> http.client.HTTPConnection | Response:
    """A connection to ``url``'s host that will go only to an address that passed the check, or the
    Response that says why there is none (a refusal says nothing about what is at the address)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # e.g. a port that is not a number
        return Response(None, str(exc))
    try:
        resolved = resolve(host, port)
    except OSError as exc:  # socket.gaierror: no such name, or no answer
        return Response(None, f"no address for {host} ({exc.strerror or exc})")
    refused = refusal(host, resolved, allow)
    if refused is not None:
        return Response(None, refused, refused=True)
    # The host stays the name: the Host header, TLS's SNI and the certificate check all use it.
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn._create_connection = _pinned(resolved)  # type: ignore[attr-defined]  # what connect() calls
    return conn


def _abort(conn: http.client.HTTPConnection) -> None:
    """The attempt's deadline passed: cut its connection, which ends whatever read or write it is in."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float, allow: Sequence[Network] = ()) -> Response:
    """POST ``body``, all of it (connect, send, answer) within ``timeout`` seconds; any answer but a 2xx,
    and any network error, is a failed attempt. A redirect is not followed: it would resend a signed body
    somewhere else. (``timeout`` bounds the whole request, not each read: a receiver that answers a byte
    at a time cannot hold a sender for longer.) A host that resolves to an address that is not public is
    refused before any connection, unless a network of ``allow`` holds that address."""
    conn = _connection(url, timeout, allow)
    if isinstance(conn, Response):
        return conn
    parts = urllib.parse.urlsplit(url)
    # Once the deadline has cut the socket, what http.client makes of the cut depends on where it was
    # (RemoteDisconnected, BadStatusLine('HTTP') for a half-read status line, even a "200" whose headers
    # were cut short), so the attempt's outcome is then the timeout, whatever the request returned or raised.
    # The flag, not the timer thread's liveness: that thread may still be running when the error arrives.
    # A TimeoutError is the same story: the socket's own per-read timeout is the same N s, and on a busy
    # machine it may expire before the timer thread is scheduled.
    expired = threading.Event()

    def expire() -> None:
        expired.set()  # before the cut, so whoever sees the cut finds it set
        _abort(conn)

    timed_out = Response(None, f"no complete answer within {timeout:g} s")
    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, headers)
        answer = conn.getresponse()
        answer.read(65536)
        if expired.is_set():
            return timed_out
        if 200 <= answer.status < 300:
            return Response(answer.status)
        return Response(answer.status, f"HTTP {answer.status} {answer.reason}".strip())
    except Exception as exc:
        if expired.is_set() or isinstance(exc, TimeoutError):
            return timed_out
        if isinstance(exc, (http.client.HTTPException, OSError, ValueError)):
            return Response(None, str(exc) or type(exc).__name__)
        raise
    finally:
        watchdog.cancel()
        conn.close()
