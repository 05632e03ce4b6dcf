"""Raw HTTP requests a well-behaved client library would not send (a header twice), for the servers' edge cases."""

from __future__ import annotations

import http.client

WEBSOCKET_UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}
"""What makes a GET a WebSocket handshake (RFC 6455, section 4.1)."""


def send_raw(port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> tuple[int, bytes]:
    """``method path`` to 127.0.0.1:``port`` with exactly ``headers``, in order (Host among them; no others
    added); returns the status and body (empty for a 101: the upgrade was accepted)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if body:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, b"" if response.status == 101 else response.read()
    finally:
        connection.close()


def send_twice(
    port: int, method: str, path: str, headers: dict[str, str], twice: str, body: bytes = b""
) -> tuple[int, bytes]:
    """:func:`send_raw` with ``headers``, the one named ``twice`` sent two times with the same value."""
    pairs = [(name, value) for name, value in headers.items() for _ in range(2 if name == twice else 1)]
    return send_raw(port, method, path, pairs, body)
