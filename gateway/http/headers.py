"""Request checks that come before any session work: Host, Origin, Content-Type, Accept, body size.

Each check raises a `GatewayError`; none reads more of the request than it must (the body is
read only after the cheap header checks, and never beyond the configured cap). A header that
decides a security check is judged only when it is there once: a repeated `Origin` is refused,
since a check of one copy says nothing about the copy another component reads. With a public
URL configured, the MCP endpoint (and the built-in authorization server's `/oauth/` endpoints)
answer only requests whose `Host` names that URL's host and port (case-insensitive, the
scheme's default port optional); any other is refused with 421 Misdirected Request before it is
counted or authenticated, which also stops DNS-rebinding pages that do not send `Origin`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.config import Settings

JSON = "application/json"
SSE = "text/event-stream"
DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """Which browser origins may call the endpoint (DNS-rebinding protection)."""

    exact: frozenset[str]
    any_port: frozenset[str]  # "scheme://host" prefixes allowed with any port
    allow_all: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> OriginPolicy:
        exact: set[str] = set()
        any_port: set[str] = set()
        for origin in settings.allowed_origins:
            if origin.endswith(":*"):
                any_port.add(origin[:-2].lower())
            else:
                exact.add(origin.lower())
        if settings.public_url is not None:
            parts = urlsplit(str(settings.public_url))
            exact.add(f"{parts.scheme}://{parts.netloc}".lower())
        return cls(frozenset(exact), frozenset(any_port), "*" in settings.allowed_origins)

    def allows(self, origin: str) -> bool:
        origin = origin.lower()
        if self.allow_all or origin in self.exact:
            return True
        if origin in self.any_port:  # the scheme's default port
            return True
        head, sep, port = origin.rpartition(":")
        return sep == ":" and port.isdigit() and head in self.any_port


def request_origin(request: web.Request) -> str | None:
    """The request's `Origin`, if it has one; refused (403) when it has several."""
    origins = request.headers.getall("Origin", ())
    if len(origins) > 1:
        raise GatewayError("forbidden_origin", "Origin not allowed: several Origin headers")
    return origins[0] if origins else None


def check_origin(request: web.Request, policy: OriginPolicy) -> None:
    origin = request_origin(request)
    if origin is not None and not policy.allows(origin):
        raise GatewayError("forbidden_origin", "Origin not allowed")


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The `Host` values that name the public URL: `host:port`, and `host` alone for the
    scheme's default port (lowercase; an IPv6 address in brackets)."""

    accepted: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> HostPolicy | None:
        """The policy of the configured public URL; None without one (nothing to compare with)."""
        if settings.public_url is None:
            return None
        parts = urlsplit(str(settings.public_url))
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        default = DEFAULT_PORTS[parts.scheme]
        port = parts.port if parts.port is not None else default
        accepted = {f"{host}:{port}"}
        if port == default:
            accepted.add(host)
        return cls(frozenset(accepted))

    def allows(self, host: str) -> bool:
        return host.strip().lower() in self.accepted


def host_middleware(policy: HostPolicy, guarded: Callable[[str], bool]) -> Middleware:
    """Refuse requests to a `guarded` path whose `Host` (or absolute request target) does not
    name the public URL."""

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        if guarded(request.path) and not policy.allows(request.host):
            raise GatewayError("misdirected_request", "Misdirected request: this server does not serve that host")
        return await handler(request)

    return check_host


@functools.lru_cache(maxsize=128)
def accepted(accept: str | None) -> tuple[bool, bool]:
    """(accepts JSON, accepts SSE) for an Accept header; a missing header accepts both."""
    if accept is None or not accept.strip():
        return True, True
    json_ok = sse_ok = False
    for item in accept.split(","):
        media, _, params = item.partition(";")
        media = media.strip().lower()
        if any(p.strip().replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params.split(";")):
            continue
        if media in (JSON, "application/*", "*/*"):
            json_ok = True
        if media in (SSE, "text/*", "*/*"):
            sse_ok = True
    return json_ok, sse_ok


def check_post_headers(request: web.Request) -> tuple[bool, bool]:
    """Content-Type must be JSON, uncompressed; Accept must allow JSON or SSE. Returns what Accept
    allows. No MCP client compresses what it sends, and a compressed body is work (and, inflated,
    memory) spent before any check: any content coding but identity is refused (RFC 9110 §15.5.16)."""
    if request.content_type != JSON:
        raise GatewayError("unsupported_media_type", "Content-Type must be application/json")
    codings = [
        coding.strip().lower()
        for value in request.headers.getall("Content-Encoding", ())
        for coding in value.split(",")
    ]
    if any(coding not in ("identity", "") for coding in codings):
        raise GatewayError(
            "unsupported_media_type",
            "Content-Encoding is not supported: send the body uncompressed",
            headers={"Accept-Encoding": "identity"},
        )
    json_ok, sse_ok = accepted(request.headers.get("Accept"))
    if not (json_ok or sse_ok):
        raise GatewayError("not_acceptable", "Accept must include application/json or text/event-stream")
    return json_ok, sse_ok


async def read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise GatewayError("payload_too_large", f"Request body exceeds {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise GatewayError("payload_too_large", f"Request body exceeds {limit} bytes") from None
