"""CORS for browser-based MCP clients calling from an allowed origin.

Only origins that `OriginPolicy` allows ever get CORS headers; any other `Origin`, and a
repeated one, is refused with 403 before work is done. Headers are added when a response is prepared, so streamed (SSE)
responses get them as well as JSON ones. `Mcp-Session-Id` is exposed so a browser client can
read the session it was given.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from gateway import keys
from gateway.errors import GatewayError
from gateway.http.headers import request_origin

ALLOW_METHODS: Final = "GET, POST, DELETE"
ALLOW_HEADERS: Final = (
    "Accept, Authorization, Content-Type, Last-Event-ID, MCP-Protocol-Version, Mcp-Session-Id, "
    "X-Request-ID, traceparent"
)
# What a browser client may read of an answer: the session, the auth challenge, the request id,
# and when to retry after a rate limit.
EXPOSE_HEADERS: Final = (
    "Mcp-Session-Id, WWW-Authenticate, X-Request-ID, "
    "Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, RateLimit-Policy"
)
PREFLIGHT_MAX_AGE: Final = "600"  # seconds a browser may cache a preflight answer


def install(app: web.Application, path: str) -> None:
    app.router.add_route("OPTIONS", path, handle_preflight)
    app.on_response_prepare.append(_add_headers)


async def handle_preflight(request: web.Request) -> web.Response:
    origin = request_origin(request)
    if origin is None or not request.app[keys.ORIGINS].allows(origin):
        raise GatewayError("forbidden_origin", "Origin not allowed")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
        },
    )


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    origins = request.headers.getall("Origin", ())
    if not origins or request.path != request.app[keys.SETTINGS].mcp_path:
        return
    if len(origins) == 1 and request.app[keys.ORIGINS].allows(origins[0]):
        response.headers["Access-Control-Allow-Origin"] = origins[0]
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    response.headers.add("Vary", "Origin")
