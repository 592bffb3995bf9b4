"""The real client IP: the TCP peer, unless that peer is a trusted proxy.

Forwarded headers are believed only from peers inside `trusted_proxies` (the compose network,
say): then `X-Real-IP` (nginx-proxy always overwrites it), else the right-most
`X-Forwarded-For` entry outside the trusted networks. From any other peer they are ignored,
since a client can write anything into them; and the left-most `X-Forwarded-For` entry is never
taken, since behind an appending proxy it is the client's own claim. Host and scheme are
never rewritten.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDictProxy

from gateway import keys, request_context

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:a.b.c.d is an IPv4 client
    return address


def _trusted(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


def client_ip(peer: str | None, headers: CIMultiDictProxy[str], trusted: Sequence[Network]) -> str:
    """The client's address for a request from `peer` carrying `headers`."""
    if not trusted and peer and ":" not in peer:
        return peer  # the common case, an IPv4 peer and no proxy: nothing to parse
    peer_address = parse_address(peer)
    if peer_address is None:
        return peer or "unknown"
    if not trusted or not _trusted(peer_address, trusted):
        return str(peer_address)
    real = parse_address(headers.get("X-Real-IP"))
    if real is not None:
        return str(real)
    chain = ",".join(headers.getall("X-Forwarded-For", [])).split(",")
    for entry in reversed(chain):
        address = parse_address(entry)
        if address is None:
            break  # unparsable: nothing further left can be trusted
        if not _trusted(address, trusted):
            return str(address)
    return str(peer_address)


def client_ip_middleware(trusted: Sequence[Network]) -> Middleware:
    """Record every request's client IP (`keys.CLIENT_IP`) for the layers below."""

    @web.middleware
    async def record_client_ip(request: web.Request, handler: Handler) -> web.StreamResponse:
        address = request[keys.CLIENT_IP] = client_ip(request.remote, request.headers, trusted)
        if (context := request_context.current()) is not None:
            context.client_ip = address
        return await handler(request)

    return record_client_ip
