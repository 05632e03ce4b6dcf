"""Whose socket listens on a loopback port (runner/listener.py), asked of the real kernel."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from runner.listener import foreign_owner, owner_name
from runner.stack import free_port, terminate
from tests.support.other_user import NOBODY, squat


@pytest.fixture
def ours() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_listener_of_this_user_is_trusted(ours: int) -> None:
    assert foreign_owner("127.0.0.1", ours) is None
    assert foreign_owner("localhost", ours) is None


def test_another_users_listener_is_named_by_its_uid_for_every_loopback_name_of_its_address() -> None:
    port = free_port()
    squatter = squat(port)
    try:
        assert foreign_owner("127.0.0.1", port) == NOBODY
        assert foreign_owner("localhost", port) == NOBODY
        assert owner_name(NOBODY) == f"nobody (uid {NOBODY})"
    finally:
        terminate(squatter)  # type: ignore[arg-type]


def test_an_address_on_another_machine_is_not_looked_up(ours: int) -> None:
    """Across machines TLS proves the server; the kernel here knows nothing of sockets there."""
    assert foreign_owner("192.0.2.1", ours) is None
    assert foreign_owner("handler.example", ours) is None


def test_another_users_wildcard_listener_takes_loopback_connections_too() -> None:
    port = free_port()
    squatter = squat(port, "0.0.0.0")
    try:
        assert foreign_owner("127.0.0.1", port) == NOBODY
        assert foreign_owner("::1", port) is None  # an IPv4 socket takes no IPv6 connection
    finally:
        terminate(squatter)  # type: ignore[arg-type]
