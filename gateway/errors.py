"""Every error the gateway answers with: a code, rendered to HTTP in exactly one place.

Layers below HTTP raise `GatewayError` with a `Literal` code; they never choose a status. The
table below is the only mapping from code to HTTP status and JSON-RPC error code, and `render`
the only function that turns an error into a response. Bodies are JSON-RPC error objects so
every MCP client can show them. Only the refusals of 2026-07-28 requests use that era's codes
(`-32020`, `-32022`), so a client that meets any other refusal does not take it for a modern one.

One refusal needs more than a code: `InsufficientScope` (a 403 whose challenge names the scopes
an operation needs) is data, turned into its `GatewayError` by the bearer middleware
(`gateway.auth.bearer`), the one place that writes `WWW-Authenticate`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError

from gateway import jsonrpc
from gateway.eras.envelope import HEADER_MISMATCH, UNSUPPORTED_VERSION
from gateway.jsonrpc import JsonObject, RequestId

ErrorCode = Literal[
    "forbidden_origin",
    "misdirected_request",
    "unsupported_media_type",
    "not_acceptable",
    "payload_too_large",
    "unreadable_body",
    "parse_error",
    "invalid_message",
    "batch_not_allowed",
    "batch_too_large",
    "session_required",
    "session_not_found",
    "stream_gone",
    "bad_last_event_id",
    "unsupported_protocol_version",
    "already_initialized",
    "missing_envelope",
    "header_mismatch",
    "unsupported_modern_version",
    "method_not_found",
    "invalid_request_state",
    "too_many_sessions",
    "too_many_sessions_for_principal",
    "too_many_sessions_for_address",
    "rate_limited",
    "too_many_in_flight",
    "spawn_rate_limited",
    "no_room_for_child",
    "ratelimit_unavailable",
    "unauthorized",
    "bad_authorization",
    "insufficient_scope",
    "auth_unavailable",
    "not_found",
    "method_not_allowed",
    "upstream_failed",
    "upstream_stalled",
    "shutting_down",
    "internal_error",
]

_STATUS: Final[dict[ErrorCode, tuple[int, int]]] = {
    "forbidden_origin": (403, jsonrpc.INVALID_REQUEST),
    # RFC 9110 §15.5.20: this server is not authoritative for the URI the Host header names.
    "misdirected_request": (421, jsonrpc.INVALID_REQUEST),
    "unsupported_media_type": (415, jsonrpc.INVALID_REQUEST),
    "not_acceptable": (406, jsonrpc.INVALID_REQUEST),
    "payload_too_large": (413, jsonrpc.INVALID_REQUEST),
    "unreadable_body": (400, jsonrpc.PARSE_ERROR),
    "parse_error": (400, jsonrpc.PARSE_ERROR),
    "invalid_message": (400, jsonrpc.INVALID_REQUEST),
    "batch_not_allowed": (400, jsonrpc.INVALID_REQUEST),
    "batch_too_large": (400, jsonrpc.INVALID_REQUEST),
    "session_required": (400, jsonrpc.INVALID_REQUEST),
    "session_not_found": (404, jsonrpc.INVALID_REQUEST),
    "stream_gone": (410, jsonrpc.INVALID_REQUEST),
    "bad_last_event_id": (400, jsonrpc.INVALID_REQUEST),
    "unsupported_protocol_version": (400, jsonrpc.INVALID_REQUEST),
    "already_initialized": (400, jsonrpc.INVALID_REQUEST),
    # The refusals of a 2026-07-28 request, with that era's codes (gateway.eras.envelope).
    "missing_envelope": (400, jsonrpc.INVALID_PARAMS),
    "header_mismatch": (400, HEADER_MISMATCH),
    "unsupported_modern_version": (400, UNSUPPORTED_VERSION),
    "method_not_found": (404, jsonrpc.METHOD_NOT_FOUND),
    "invalid_request_state": (400, jsonrpc.INVALID_PARAMS),
    "too_many_sessions": (503, jsonrpc.INTERNAL_ERROR),
    "too_many_sessions_for_principal": (429, jsonrpc.INVALID_REQUEST),
    "too_many_sessions_for_address": (429, jsonrpc.INVALID_REQUEST),
    "rate_limited": (429, jsonrpc.INVALID_REQUEST),
    "too_many_in_flight": (429, jsonrpc.INVALID_REQUEST),
    "spawn_rate_limited": (503, jsonrpc.INTERNAL_ERROR),
    "no_room_for_child": (503, jsonrpc.INTERNAL_ERROR),
    "ratelimit_unavailable": (503, jsonrpc.INTERNAL_ERROR),
    "unauthorized": (401, jsonrpc.INVALID_REQUEST),
    "bad_authorization": (400, jsonrpc.INVALID_REQUEST),
    "insufficient_scope": (403, jsonrpc.INVALID_REQUEST),
    "auth_unavailable": (503, jsonrpc.INTERNAL_ERROR),
    "not_found": (404, jsonrpc.INVALID_REQUEST),
    "method_not_allowed": (405, jsonrpc.INVALID_REQUEST),
    "upstream_failed": (502, jsonrpc.INTERNAL_ERROR),
    "upstream_stalled": (504, jsonrpc.REQUEST_TIMEOUT),
    "shutting_down": (503, jsonrpc.INTERNAL_ERROR),
    "internal_error": (500, jsonrpc.INTERNAL_ERROR),
}


class GatewayError(Exception):
    """A refusal with a stable code; the message is fixed text, never a peer's input."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: RequestId | None = None,
        retry_after: int | None = None,
        headers: Mapping[str, str] | None = None,
        data: JsonObject | None = None,
    ) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.data = data  # the JSON-RPC error's `data`, when the code defines one
        self.request_id = request_id
        self.retry_after = retry_after
        self.headers = headers

    @property
    def status(self) -> int:
        return _STATUS[self.code][0]


class InsufficientScope(Exception):
    """An operation needs scopes the caller's token lacks: answered 403 `insufficient_scope`, with
    a challenge naming every scope it needs (`gateway.auth.bearer` renders it).

    Data only, and never changed once raised (`Final`, so mypy refuses any assignment). Not a
    frozen dataclass: `contextlib` and the interpreter assign `__traceback__` to exceptions they
    pass on, which a frozen dataclass refuses.
    """

    def __init__(self, scopes: Iterable[str]) -> None:
        self.scopes: Final = frozenset(scopes)
        super().__init__(" ".join(sorted(self.scopes)))


def render(error: GatewayError) -> web.Response:
    status, rpc_code = _STATUS[error.code]
    body = jsonrpc.error_response(error.request_id, rpc_code, error.message, error.data)
    headers = dict(error.headers or {})
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render `GatewayError`s; turn anything unexpected into a logged 500 with no internals.

    A handler that fails because its client's connection is gone (the client left, or a deadline
    closed it) has no one to answer: that propagates unlogged (see `gateway.http.connections`).
    """
    try:
        return await handler(request)
    except GatewayError as error:
        return render(error)
    except web.HTTPException:
        raise
    except RequestPayloadError:
        # The body is not what its Content-Encoding or framing says: nothing more of it can be
        # read, so it is marked ended (no lingering read after the answer) and the connection closed.
        request.content.feed_eof()
        response = render(GatewayError("unreadable_body", "The request body could not be decoded"))
        response.force_close()
        return response
    except Exception as exc:
        if isinstance(exc, ConnectionError) and request.transport is None:
            raise
        logging.getLogger("gateway.errors").exception("unhandled error on %s %s", request.method, request.path)
        return render(GatewayError("internal_error", "Internal error"))
