"""Request checks that come before any session work: Origin, Content-Type, Accept, body size.

Each check raises a `GatewayError`; none reads more of the request than it must (the body is
read only after the cheap header checks, and never beyond the configured cap).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from gateway.errors import GatewayError
from gateway.settings import Settings

JSON = "application/json"
SSE = "text/event-stream"


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


def check_origin(request: web.Request, policy: OriginPolicy) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and not policy.allows(origin):
        raise GatewayError("forbidden_origin", "Origin not allowed")


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
    """Content-Type must be JSON; Accept must allow JSON or SSE. Returns what Accept allows."""
    if request.content_type != JSON:
        raise GatewayError("unsupported_media_type", "Content-Type must be application/json")
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
