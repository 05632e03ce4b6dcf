"""Who holds a loopback port: a secret is sent to a local service only if the socket listening there is ours.

Any local user can bind a free port. While a service of ours is down (a restart, a crash), another user's
process can take its port and wait for the token our clients send it. Across machines TLS with verification
proves the server; on one machine the kernel says who owns each listening socket (sock_diag, as ``ss -ltne``
shows it), so before a client sends a token or password to a loopback address it asks whose listener it
is about to reach. The socket's owner must be this user or root (who can read our secrets anyway).

Where the kernel does not say (no sock_diag, another OS), nothing is refused: the check only ever takes away.
A port taken between the check and the connect is the remaining window; the real service, once listening,
holds its port, and no other user can bind it beside it (``SO_REUSEPORT`` demands the same user).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import socket
import struct
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio.connection
import redis.connection

_LISTEN = 10
"""TCP_LISTEN, the kernel's number for the state."""
_SOCK_DIAG = 4  # NETLINK_SOCK_DIAG
_BY_FAMILY = 20  # SOCK_DIAG_BY_FAMILY
_DUMP = 0x1 | 0x300  # NLM_F_REQUEST | NLM_F_DUMP
_DONE, _ERROR = 3, 2  # NLMSG_DONE, NLMSG_ERROR
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_REQUEST = struct.Struct("=BBBxI48x")  # struct inet_diag_req_v2, its socket id left empty: every socket
_MESSAGE = struct.Struct("=BBxx2s2x16s16x4x8x4x4x4xI4x")  # struct inet_diag_msg: family, state, sport, src, uid
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _listeners(port: int) -> Iterator[tuple[Address, int]]:
    """(address, owner uid) of every TCP socket listening on ``port`` in this network namespace.

    Asked of the kernel over sock_diag netlink (what ``ss -ltn`` does), for listening sockets only: it walks
    the small table of listeners. /proc/net/tcp walks every socket bucket, milliseconds on a large machine,
    too slow for every task's connection. Raises OSError where sock_diag is not available."""
    for family in (socket.AF_INET, socket.AF_INET6):
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _SOCK_DIAG) as diag:
            body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 1 << _LISTEN)
            diag.sendto(_HEADER.pack(_HEADER.size + len(body), _BY_FAMILY, _DUMP, 1, 0) + body, (0, 0))
            yield from _replies(diag, port)


def _replies(diag: socket.socket, port: int) -> Iterator[tuple[Address, int]]:
    while True:
        data = diag.recv(65536)
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind = _HEADER.unpack_from(data, offset)[:2]
            if kind == _DONE:
                return
            if kind == _ERROR:
                raise OSError("sock_diag answered with an error")
            family, state, sport, src, uid = _MESSAGE.unpack_from(data, offset + _HEADER.size)
            if state == _LISTEN and int.from_bytes(sport, "big") == port:
                raw = src[:4] if family == socket.AF_INET else src
                yield ipaddress.ip_address(raw), uid
            offset += (length + 3) & ~3
        if not data:
            return


def _reaches(listening: Address, targets: list[Address]) -> bool:
    """Whether a connection to one of ``targets`` may land on a socket listening on ``listening``."""
    if listening.is_unspecified:  # 0.0.0.0 takes IPv4; :: takes both (unless the socket is IPv6-only)
        return listening.version == 6 or any(target.version == 4 for target in targets)
    mapped = listening.ipv4_mapped if isinstance(listening, ipaddress.IPv6Address) else None
    return listening in targets or (mapped is not None and mapped in targets)


def foreign_owner(host: str, port: int) -> int | None:
    """The uid of another user's process listening where a connection to loopback ``host:port`` would land;
    None when every such listener is this user's or root's, when there is none, or when ``host`` is not a
    loopback address (TLS is what proves a server on another machine)."""
    if host == "localhost":
        targets: list[Address] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    else:
        try:
            targets = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            return None
        if not targets[0].is_loopback:
            return None
    trusted = {os.geteuid(), 0}
    try:
        for listening, uid in _listeners(port):
            if uid not in trusted and _reaches(listening, targets):
                return uid
    except OSError:
        pass  # the kernel will not say: nothing to refuse on
    return None


def owner_name(uid: int) -> str:
    """``nobody (uid 65534)``, or ``uid 1234`` for a user with no name."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def impostor_sentence(what: str, address: str, port: int, uid: int, secret: str) -> str:
    """One sentence for a secret not sent: who holds the port, and what to do (without its full stop)."""
    return (
        f"The {what} address {address} is held by a process of another user, {owner_name(uid)}, not by the "
        f"{what}: the {secret} was not sent. Find it with `ss -ltnp 'sport = :{port}'`, stop it, and start the "
        f"{what} again"
    )


class _RedisGuard:
    """Before a connection that will carry the Redis password opens to a loopback address, check the listener."""

    host: str
    port: int

    def _check_listener(self) -> None:
        uid = foreign_owner(self.host, int(self.port))
        if uid is not None:
            address = f"{self.host}:{self.port}"
            raise redis.ConnectionError(impostor_sentence("Redis", address, int(self.port), uid, "password") + ".")


class GuardedConnection(_RedisGuard, redis.connection.Connection):
    def _connect(self) -> socket.socket:
        self._check_listener()
        return super()._connect()


class AsyncGuardedConnection(_RedisGuard, redis.asyncio.connection.Connection):
    async def _connect(self) -> None:
        self._check_listener()
        await super()._connect()


def redis_guard(url: str, asynchronous: bool = False) -> dict[str, Any]:
    """``from_url`` arguments for a client of ``url``: a connection class that checks the listener first, when the
    URL carries a password over plain TCP (TLS proves the server by its certificate; a Unix socket by its
    file's permissions)."""
    parts = urlsplit(url)
    password = parts.password or "password=" in parts.query
    if parts.scheme != "redis" or not password:
        return {}
    return {"connection_class": AsyncGuardedConnection if asynchronous else GuardedConnection}
