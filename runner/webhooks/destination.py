"""Where a webhook POST may go: pure checks of the addresses one lookup gave, no network.

Whoever can set a webhook URL chooses where the worker connects, and the task record shows what came back, so
without a check webhooks probe the worker's own network (its loopback services, the LAN, the cloud metadata
endpoint). http_post.py runs the check when a POST is made, on the addresses of that one lookup, and connects
to a checked address: a name may resolve differently at submit time or on a second lookup.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence
from typing import Any

ALLOW_SETTING = "CCX_WEBHOOK_ALLOW_NETWORKS"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolved = list[tuple[int, tuple[Any, ...]]]
"""What one lookup gave: (address family, socket address) pairs, in the resolver's order."""

METADATA = frozenset(
    ipaddress.ip_address(text) for text in ("169.254.169.254", "fd00:ec2::254", "168.63.129.16", "100.100.100.200")
)
"""Cloud instance-metadata endpoints (most clouds; AWS over IPv6; Azure's WireServer, a public address; Alibaba)."""
_PRIVATE = tuple(ipaddress.ip_network(text) for text in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux takes 0.0.0.0 for this host
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _as_ipv4(address: Address) -> Address:
    """The IPv4 address an IPv6 one carries packets to (mapped, NAT64, 6to4): that is where they end up."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def address_kind(address: Address) -> str | None:
    """Why webhooks do not go to ``address`` unless it is allowed ("a loopback address", …); None: public."""
    address = _as_ipv4(address)
    if address in METADATA:
        return "the cloud metadata address"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if any(address in network for network in _PRIVATE):
        return "a private address"
    if not address.is_global or address.is_reserved or getattr(address, "is_site_local", False):
        return "a reserved address"
    return None


def refusal(host: str, resolved: Resolved, allow: Sequence[Network]) -> str | None:
    """The sentence refusing ``host``, or None to go ahead. Every address must pass, not just one: which of
    them a connection ends up using is not the checker's to choose."""
    for _, sockaddr in resolved:
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])  # no IPv6 zone (fe80::1%eth0)
        kind = address_kind(address)
        if kind is None or any(a in network for a in (address, _as_ipv4(address)) for network in allow):
            continue
        what, target = f"resolves to {address}, {kind}", _as_ipv4(address)  # allowing target allows address
        with contextlib.suppress(ValueError):
            what = f"is {kind}" if ipaddress.ip_address(host) == address else what
        allow_it = f"set {ALLOW_SETTING}={target}/{target.max_prefixlen} on the worker to allow it"
        return f"refused: {host} {what}; {allow_it}."
    return None
