"""Request ids and trace context: every request has an id, returned to the client and written
into every audit line and log record made while it is handled.

An incoming `X-Request-ID` is kept when it is short and made of safe characters (so a log line
can never be forged or bloated through it); otherwise the gateway makes one. A W3C `traceparent`
is kept only when it is well formed, so logs join the caller's distributed trace. The current
request is found through a context variable: code that does not see the HTTP request (the session
store, say) can still name it. The context is marked finished when the request ends, because
callbacks registered while it ran (a child's pipe readers) keep a copy of it afterwards.

A leaf: the audit log, the process logs, authentication and the HTTP edge all read the current
request, so it imports nothing of the gateway.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import web
from aiohttp.typedefs import Handler

if TYPE_CHECKING:
    from gateway.auth import Principal

HEADER: Final = "X-Request-ID"
TRACEPARENT: Final = "traceparent"
# Longest incoming request id kept; longer ones are replaced rather than cut (a cut id no longer
# matches the caller's own logs).
MAX_REQUEST_ID: Final = 128
_SAFE_ID: Final = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{MAX_REQUEST_ID}}}")
# W3C Trace Context, level 1: version-traceid-parentid-flags; version ff and all-zero ids are invalid.
_TRACEPARENT: Final = re.compile(r"(?!ff)([0-9a-f]{2})-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass(slots=True)
class RequestContext:
    """What identifies the request being handled, for audit lines and logs.

    The client address and principal are filled in by their middlewares as they become known.
    """

    request: web.Request
    request_id: str
    request_id_chosen_by_client: bool
    trace_id: str | None
    span_id: str | None
    client_ip: str | None = None
    principal: Principal | None = None
    finished: bool = False


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("gateway_request", default=None)


def current() -> RequestContext | None:
    """The request being handled by the running task, if any."""
    context = _current.get()
    return None if context is None or context.finished else context


def incoming_id(value: str | None) -> str:
    """The caller's request id when it is safe to log and echo, else a fresh one."""
    if value is not None and _SAFE_ID.fullmatch(value):
        return value
    return str(uuid.uuid4())


def trace_ids(value: str | None) -> tuple[str | None, str | None]:
    """The trace id and parent span id of a valid `traceparent`, else neither."""
    if value is None:
        return None, None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None, None
    return match.group(2), match.group(3)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    trace_id, span_id = trace_ids(request.headers.get(TRACEPARENT))
    offered = request.headers.get(HEADER)
    request_id = incoming_id(offered)
    context = RequestContext(request, request_id, request_id == offered, trace_id, span_id)
    token = _current.set(context)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers[HEADER] = context.request_id
        raise
    finally:
        context.finished = True
        _current.reset(token)
    if not response.prepared:  # a streamed response got the header as it was prepared
        response.headers[HEADER] = context.request_id
    return response


async def _add_header(request: web.Request, response: web.StreamResponse) -> None:
    """Name the request on responses prepared while it is handled (streams, SSE)."""
    context = current()
    if context is not None and context.request is request:
        response.headers[HEADER] = context.request_id


def install(app: web.Application) -> None:
    app.on_response_prepare.append(_add_header)
