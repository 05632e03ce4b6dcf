"""Several machines on one host: Linux network namespaces joined by a bridge in a namespace of the test's own.

``Network()`` makes a namespace holding a bridge, and ``machine(name)`` a namespace
with a veth link to it and an address in 10.231.<n>.0/24, a range used by nothing
else: traffic between the machines never leaves namespaces the test made. Processes
are started in a machine with ``ip netns exec``; everything is deleted afterwards.
Tests skip, saying why, where namespaces cannot be made (not root, no ``ip``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field

import pytest


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Machine:
    name: str
    address: str
    link: str = ""
    """Its cable: the bridge-side end of its veth pair, in the LAN namespace."""

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside this machine's network namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


@dataclass
class Network:
    prefix: str = field(default_factory=lambda: f"ccx{uuid.uuid4().hex[:6]}")
    subnet: int = field(default_factory=lambda: 1 + uuid.uuid4().int % 250)
    machines: list[Machine] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    def __enter__(self) -> Network:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            pytest.skip("network namespaces need root and the `ip` command (iproute2)")
        try:
            self._make(self.lan, "")
            _ip("-n", self.lan, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.lan, "link", "set", "br0", "up")
        except subprocess.CalledProcessError as exc:
            self.__exit__()
            pytest.skip(f"cannot make network namespaces here: {exc.stderr.decode(errors='replace').strip()}")
        return self

    @property
    def lan(self) -> str:
        return f"{self.prefix}-lan"

    def _make(self, name: str, address: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def machine(self, label: str) -> Machine:
        index = len(self.machines) + 1
        name = f"{self.prefix}-{label}"
        address = f"10.231.{self.subnet}.{index}"
        self._make(name, address)
        outside, inside = f"{self.prefix[-6:]}{index}a", f"{self.prefix[-6:]}{index}b"
        _ip("-n", self.lan, "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", name)
        _ip("-n", self.lan, "link", "set", outside, "master", "br0", "up")
        _ip("-n", name, "addr", "add", f"{address}/24", "dev", inside)
        _ip("-n", name, "link", "set", inside, "up")
        machine = Machine(name, address, outside)
        self.machines.append(machine)
        return machine

    def unplug(self, machine: Machine) -> None:
        """A partition: ``machine`` stays up but its packets go nowhere (its TCP connections stay half-open)."""
        _ip("-n", self.lan, "link", "set", machine.link, "down")

    def plug(self, machine: Machine) -> None:
        _ip("-n", self.lan, "link", "set", machine.link, "up")

    def __exit__(self, *exc: object) -> None:
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self.namespaces.clear()
