"""MCP Streamable HTTP, 2026-07-28: one POST is one request, answered on its own.

A POST whose request carries the modern envelope (and names no live session) comes here from
the endpoint's POST handler. It is checked as `gateway.eras.envelope` says (each refusal with
its code and status), then served by a child of its principal (`gateway.sessions.principals`):
`server/discover` from what the child said about itself, anything else forwarded to it. A
modern child gets the request as it came (ids rewritten); a legacy one gets it translated
(`gateway.eras.translate`), and its answer shaped as 2026-07-28 results are.

The answer is JSON while only the response comes, else an SSE stream without event ids (these
streams cannot be resumed) that carries the request's progress and, when it set a log level, its
log messages. A JSON error answer has the status its code maps to (404 for an unknown method,
400 for the envelope's own errors). A client that closes the stream before the answer cancels
the request at the child. Session ids and `Last-Event-ID` are ignored: nothing here has a session.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from aiohttp import web

from gateway import jsonrpc, keys
from gateway.eras import envelope, translate
from gateway.eras.envelope import Envelope, Refusal
from gateway.errors import ErrorCode, GatewayError
from gateway.http import ratelimit
from gateway.http.headers import JSON
from gateway.jsonrpc import Kind, Message
from gateway.sessions import failures
from gateway.sessions.child import ChildGone
from gateway.sessions.mrtr import Call, StateRefused, is_gateway_state
from gateway.sessions.principals import Backend, PrincipalChildren, ask_child
from gateway.sessions.router import Exchange, Interceptor, Overloaded, Screening, merged_interceptors
from gateway.transport import exchanges, sse

log = logging.getLogger("gateway.transport")

# The refusal codes of the envelope's checks, as the gateway's error codes.
_REFUSALS: Final[dict[int, ErrorCode]] = {
    jsonrpc.INVALID_PARAMS: "missing_envelope",
    envelope.HEADER_MISMATCH: "header_mismatch",
    envelope.UNSUPPORTED_VERSION: "unsupported_modern_version",
    jsonrpc.METHOD_NOT_FOUND: "method_not_found",
}
# How often a request whose child exited just before it was sent tries a fresh one.
CHILD_RETRIES: Final = 1
CANCELLED: Final = "The client closed the request's stream"


async def serve(
    request: web.Request, message: Message, body: bytes, *, json_ok: bool, sse_ok: bool
) -> web.StreamResponse:
    """Answer one 2026-07-28 POST."""
    if message.kind is Kind.RESPONSE:
        raise GatewayError("invalid_message", "Invalid Request: a 2026-07-28 client never sends responses")
    checked = envelope.check(message.method or "", message.params, lambda name: request.headers.getall(name, []))
    if isinstance(checked, Refusal):
        raise _refusal(checked)
    if message.kind is Kind.NOTIFICATION:
        return web.Response(status=202)  # nothing of 2026-07-28 over HTTP needs one passed on
    state = message.params.get("requestState")
    if message.method in envelope.NAMED_BY and is_gateway_state(state):
        return await _retry(request, message, body, checked, str(state), json_ok=json_ok, sse_ok=sse_ok)
    backend = await _backend(request, state)
    if message.method == "server/discover":
        started = time.monotonic()
        answer = await _discover(backend, message, request.app[keys.SETTINGS].request_timeout)
        _audit(request, backend, message, started, size=len(body), sent=len(answer))
        return web.Response(body=answer, content_type=JSON)
    if message.method == "subscriptions/listen":
        if not sse_ok:
            raise GatewayError("not_acceptable", "subscriptions/listen answers with a stream: accept text/event-stream")
        started = time.monotonic()
        try:
            return await _listen(request, backend, message)
        finally:
            _audit(request, backend, message, started, size=len(body), sent=0)
    for attempt in range(CHILD_RETRIES + 1):
        try:
            return await _forward(request, backend, message, body, checked, json_ok=json_ok, sse_ok=sse_ok)
        except ChildGone:
            if attempt == CHILD_RETRIES:
                break
            backend = await _backend(request)  # it exited before the request reached it: a fresh one
    raise GatewayError("upstream_failed", "The MCP server exited")


def _refusal(refusal: Refusal) -> GatewayError:
    return GatewayError(_REFUSALS.get(refusal.code, "invalid_message"), refusal.message, data=refusal.data)


async def _backend(request: web.Request, state: object = None) -> Backend:
    """The child for a request: the one that handed out its `requestState` (a modern child's own),
    while it lives; else its principal's least busy one."""
    client_ip = request[keys.CLIENT_IP]
    pool = request.app[keys.PRINCIPAL_CHILDREN]
    if isinstance(state, str):
        issuer = pool.issuer_of(request[keys.PRINCIPAL], ratelimit.address_key(client_ip), state)
        if issuer is not None:
            return issuer
    return await pool.acquire(
        request[keys.PRINCIPAL],
        request.get(keys.BEARER),
        client_ip,
        ratelimit.address_key(client_ip),
        lambda: ratelimit.session_creation(request),
    )


async def _discover(backend: Backend, message: Message, wait: float) -> bytes:
    """`server/discover`, from what the child said about itself while that still holds; a modern
    child whose answer has expired is asked again."""
    if not backend.fresh:
        answer = await ask_child(backend.router, "server/discover", translate.discover_request({}), wait)
        discovered = translate.modern_discovery(answer)
        if discovered is not None:
            backend.discovery, backend.discovered = discovered, time.monotonic()
    return jsonrpc.encode({"jsonrpc": "2.0", "id": message.id, "result": backend.discovery})


async def _listen(request: web.Request, backend: Backend, message: Message) -> web.StreamResponse:
    """A listen stream: the acknowledgement, then what the principal's children announce, until
    the client closes it (its cancellation) or the child keeping it alive ends."""
    if message.id is None:  # pragma: no cover - a request always has an id
        raise GatewayError("invalid_message", "Invalid Request")
    pool = request.app[keys.PRINCIPAL_CHILDREN]
    session = backend.session
    key = session.serves or ""
    listener = pool.listen(backend, key, message.id, message.params.get("notifications"))
    session.enter()  # an open listen keeps its child alive
    try:
        response = await sse.open_response(request)
        await sse.pump(listener.stream, response, request.app[keys.SETTINGS].sse_keepalive, event_ids=False)
        return response
    finally:
        session.leave()
        pool.unlisten(listener)


def _audit(request: web.Request, backend: Backend, message: Message, started: float, *, size: int, sent: int) -> None:
    """One `mcp.request` event for a request the gateway answered without a child's exchange."""
    audit = request.app[keys.AUDIT]
    if audit.active:
        audit.record(
            "mcp.request",
            session=backend.session,
            method=message.method,
            outcome="ok",
            duration_ms=round((time.monotonic() - started) * 1000, 3),
            bytes_in=size,
            bytes_out=sent,
            era="modern",
        )


class StateNote:
    """Notes which child handed out the `requestState` of an `input_required` result."""

    __slots__ = ("_backend", "_pool")

    def __init__(self, pool: PrincipalChildren, backend: Backend) -> None:
        self._pool = pool
        self._backend = backend

    def intercept(self, message: Message) -> bool:
        result = message.body.get("result")
        if isinstance(result, dict) and result.get("resultType") == translate.INPUT_REQUIRED:
            state = result.get("requestState")
            if isinstance(state, str):
                self._pool.note_state(state, self._backend)
        return False


class ModernResult:
    """Shapes a legacy child's result as 2026-07-28 does (after any policy saw it)."""

    __slots__ = ("_after", "_method", "_server_info")

    def __init__(self, method: str, server_info: jsonrpc.JsonObject | None, after: Interceptor | None) -> None:
        self._method = method
        self._server_info = server_info
        self._after = after  # the tool policy's filter of the same response, if any

    def intercept(self, message: Message) -> bool:
        changed = self._after.intercept(message) if self._after is not None else False
        result = message.body.get("result")
        if not isinstance(result, dict):
            return changed
        translate.modern_result(self._method, result, self._server_info)
        return True


async def _forward(
    request: web.Request,
    backend: Backend,
    message: Message,
    body: bytes,
    checked: Envelope,
    *,
    json_ok: bool,
    sse_ok: bool,
) -> web.StreamResponse:
    app = request.app
    session, router = backend.session, backend.router
    legacy = backend.era == "legacy"
    forwarded = (
        jsonrpc.classify({**message.body, "params": translate.legacy_params(message.params)}) if legacy else message
    )
    tool_filter = app[keys.TOOL_FILTER]
    screening = None if tool_filter is None else await tool_filter.screen(router, [forwarded], request[keys.PRINCIPAL])
    if legacy:
        screening = screening or Screening()
        policy = screening.intercepted.get(0)
        screening.intercepted[0] = ModernResult(message.method or "", backend.server_info, policy)
    elif message.method in envelope.NAMED_BY and app[keys.PRINCIPAL_CHILDREN].per_principal > 1:
        # Where its retry must go: to the child that asks, which alone can read its requestState.
        screening = screening or Screening()
        noted = StateNote(app[keys.PRINCIPAL_CHILDREN], backend)
        policy = screening.intercepted.get(0)
        screening.intercepted[0] = noted if policy is None else merged_interceptors(policy, noted)
    session.enter()
    exchange: Exchange | None = None
    call: Call | None = None
    try:
        try:
            exchange = router.submit([forwarded], raw=None if legacy else body, streamable=sse_ok, screening=screening)
        except Overloaded as failure:
            raise failures.refusal(failure) from None
        # A child that has exited (ChildGone) is no refusal: the caller tries a fresh one.
        if exchange is None:  # pragma: no cover - a request always opens an exchange
            raise GatewayError("internal_error", "Internal error")
        exchange.modern = True
        exchange.log_level = checked.log_level
        method = message.method or ""
        if backend.bridge is not None and method in envelope.NAMED_BY:
            call = backend.bridge.track(
                exchange, checked.capabilities, method, message.params.get(envelope.NAMED_BY[method])
            )
        await exchanges.drain(session)
        return await _answer(request, exchange, backend, json_ok=json_ok, sse_ok=sse_ok)
    finally:
        session.leave()
        if exchange is not None:
            if call is not None and not exchange.parked and backend.bridge is not None:
                backend.bridge.done(call)
            exchanges.audit_requests(request, session, [message], exchange, body_size=len(body))


async def _retry(
    request: web.Request,
    message: Message,
    body: bytes,
    checked: Envelope,
    state: str,
    *,
    json_ok: bool,
    sse_ok: bool,
) -> web.StreamResponse:
    """A retry carrying the gateway's `requestState`: its answers go to the child that asked, and
    the call still running there is answered to this request."""
    pool = request.app[keys.PRINCIPAL_CHILDREN]
    principal = request[keys.PRINCIPAL]
    address = ratelimit.address_key(request[keys.CLIENT_IP])
    try:
        claims = pool.signer.open(state)
        backend = pool.find(principal, address, str(claims.get("c")))
        if backend is None or backend.bridge is None:
            raise StateRefused("Invalid requestState: the request it belongs to has ended")
        if message.id is None:  # pragma: no cover - a request always has an id
            raise StateRefused("Invalid requestState")
        call = backend.bridge.resume(
            claims, pool.key_of(principal, address), message.id, message.method or "", message.params
        )
    except StateRefused as refused:
        raise GatewayError("invalid_request_state", str(refused)) from None
    exchange = call.exchange
    exchange.log_level = checked.log_level
    session = backend.session
    session.enter()
    try:
        return await _answer(request, exchange, backend, json_ok=json_ok, sse_ok=sse_ok)
    finally:
        session.leave()
        if not exchange.parked:
            backend.bridge.done(call)
        exchanges.audit_requests(request, session, [message], exchange, body_size=len(body))


async def _answer(
    request: web.Request, exchange: Exchange, backend: Backend, *, json_ok: bool, sse_ok: bool
) -> web.StreamResponse:
    """JSON while only the response comes, else a stream; an abandoned answer is a cancellation.

    The round this request answers ends with the response, or with a request for input (then
    the call waits for its retry, which another `_answer` serves: this one leaves it alone, even
    when that retry has begun before this one's last write returned)."""
    router = backend.router
    keepalive = request.app[keys.SETTINGS].sse_keepalive
    round_started = exchange.rounds
    try:
        if json_ok and (entries := await exchanges.responses_alone(exchange, keepalive, sse_ok=sse_ok)):
            payload = entries[-1][1]
            return web.Response(status=_status_of(payload), body=payload, content_type=JSON)
        response = await sse.open_response(request)
        await sse.pump(exchange, response, keepalive, event_ids=False)
        return response
    finally:
        if exchange.rounds == round_started and not exchange.parked:
            router.abandon(exchange, CANCELLED)
            router.forget(exchange)


def _status_of(payload: bytes) -> int:
    """The HTTP status of a JSON answer: 200, or what a modern error's code maps to."""
    if b'"error"' not in payload:
        return 200
    error = jsonrpc.decode(payload).get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return envelope.ERROR_STATUS.get(code, 200) if isinstance(code, int) else 200
