"""The SSRF guard: which addresses a webhook may be sent to, and resolving a URL to an address checked now."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit, urlunsplit

import msgspec

from service.broker.errors import ForbiddenAddress, InvalidRequest

RESOLVE_TIMEOUT = 5.0  # seconds a webhook host's name may take to resolve


# Never a webhook target, whatever the settings: link-local (cloud metadata lives there) and site-local
# (deprecated, link-local's old sibling), unspecified, multicast, broadcast, and the metadata addresses
# clouds put elsewhere.
_ALWAYS_REFUSED = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "169.254.0.0/16",
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "192.0.0.192/32",  # Oracle Cloud metadata
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "fe80::/10",
        "fec0::/10",
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "ff00::/8",
    )
]
# Refused unless MASKING_WEBHOOK_ALLOW_PRIVATE, beside loopback and private ranges: carrier-grade NAT, unique
# local, and NAT64's local-use prefix (RFC 8215: a private network's own translator, its layout unknown).
_PRIVATE = [ipaddress.ip_network(n) for n in ("100.64.0.0/10", "fc00::/7", "64:ff9b:1::/48")]
# IPv6 forms whose last 32 bits are an IPv4 address that a host or gateway connects to: NAT64's well-known
# prefix (RFC 6052), SIIT's IPv4-translated ::ffff:0:a.b.c.d (RFC 2765), and the deprecated IPv4-compatible
# ::a.b.c.d (RFC 4291; but :: and ::1 are themselves). IPv4-mapped, 6to4 and Teredo: see embedded_ipv4.
_LAST_32_BITS = [ipaddress.ip_network(n) for n in ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96")]
_SELF = ipaddress.ip_network("::/127")


def embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to (None: none): mapped, NAT64, SIIT, compatible, 6to4, Teredo."""
    if isinstance(ip, ipaddress.IPv4Address) or ip in _SELF:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _LAST_32_BITS):
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    if ip.teredo is not None:
        return ip.teredo[1]
    return ip.sixtofour


def address_verdict(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool) -> str | None:
    """Why an address may not be a webhook target (None: it may); an address wrapping an IPv4 one is judged as it."""
    inner = embedded_ipv4(ip)
    target = inner if inner is not None else ip
    name = f"{ip} (that is {inner})" if inner is not None else str(ip)
    if any(target in net for net in _ALWAYS_REFUSED):
        return f"{name} is link-local, metadata or otherwise never reachable for webhooks"
    if not allow_private and (target.is_loopback or target.is_private or any(target in net for net in _PRIVATE)):
        return f"{name} is a private or loopback address (allowed only with MASKING_WEBHOOK_ALLOW_PRIVATE=true)"
    return None


class Target(msgspec.Struct, frozen=True):
    """A checked destination: the URL to connect to (the checked address), the Host header and TLS name."""

    url: str
    host: str
    ip: str


def check_url_shape(url: str, allow_http: bool) -> tuple[str, str, int]:
    """Scheme, host and port of a webhook URL, or invalid_request."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidRequest("`url` is not a valid URL.", field="url") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidRequest("`url` must be an absolute https:// URL.", field="url")
    if parts.scheme == "http" and not allow_http:
        raise InvalidRequest(
            "`url` must use https (plain http only with MASKING_WEBHOOK_ALLOW_HTTP=true).", field="url"
        )
    if parts.username or parts.password:
        raise InvalidRequest("`url` must not carry a user name or password.", field="url")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def resolve_target(url: str, allow_http: bool, allow_private: bool) -> Target:
    """Resolve the URL's host now and check every address it has; the first one is the one to connect to."""
    scheme, host, port = check_url_shape(url, allow_http)
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, TimeoutError):
        raise ForbiddenAddress(f"The host {host!r} does not resolve.", host=host) from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for ip in addresses:
        if why := address_verdict(ip, allow_private):
            raise ForbiddenAddress(f"Webhooks may not be sent to {host}: {why}.", host=host)
    ip = addresses[0]
    netloc = f"[{ip}]:{port}" if isinstance(ip, ipaddress.IPv6Address) else f"{ip}:{port}"
    parts = urlsplit(url)
    return Target(urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")), host, str(ip))
