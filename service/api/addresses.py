"""The client's own address, read through the proxies MASKING_TRUSTED_PROXIES names (for limits and the audit log)."""

from __future__ import annotations

import ipaddress

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def client_address(peer: str, forwarded_for: str | None, trusted: Networks) -> str:
    """The client's address: the peer, or behind trusted proxies the nearest X-Forwarded-For hop they did not add.

    Hops are read right to left (each proxy appends the address it saw), so a client cannot choose its own
    address by sending the header itself: only hops added by trusted proxies are skipped.
    """
    address = peer
    hops = [h.strip() for h in forwarded_for.split(",")] if forwarded_for else []
    while _is_trusted(address, trusted) and hops:
        address = hops.pop()
    return address


def _is_trusted(address: str, trusted: Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
