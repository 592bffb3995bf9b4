"""MCP Streamable HTTP, legacy era (protocol versions 2025-03-26 through 2025-11-25).

POST carries client messages: `initialize` opens a session, requests are answered with JSON or
an SSE stream, notifications and responses get 202. GET opens (or resumes) a session's stream;
DELETE ends a session. The transport validates and shapes HTTP; it never touches a process —
sessions and routers do that.

Response shape for a POST with requests: `application/json` when only responses come; SSE as
soon as anything else comes first, or when the answer takes longer than one keep-alive interval
(so proxies see traffic on slow calls). A POST carrying the 2026-07-28 envelope that names no
live session is that era's request, served by `gateway.transport.modern`; a GET or DELETE of
that version, which has neither, gets 405 with `Allow: POST`.

A session serves any `MCP-Protocol-Version` this gateway serves, the negotiated one or another,
and refuses only an unsupported one. On a 2025-11-25 session an SSE answer starts with the
priming event: an event id before any message, so a client that loses the connection resumes
the whole answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from typing import Final

from aiohttp import web

from gateway import jsonrpc, keys
from gateway.eras.envelope import is_modern
from gateway.eras.facade import Facade
from gateway.errors import GatewayError
from gateway.http import ratelimit
from gateway.http.headers import JSON, accepted, check_origin, check_post_headers, read_body
from gateway.jsonrpc import Message
from gateway.sessions.child import ChildGone
from gateway.sessions.router import Exchange, Router, Screening, merged
from gateway.sessions.store import Session
from gateway.sessions.streams import Stream
from gateway.sessions.translated import Translated
from gateway.transport import exchanges, modern, sse

log = logging.getLogger("gateway.transport")

SESSION_HEADER: Final = "Mcp-Session-Id"
VERSION_HEADER: Final = "MCP-Protocol-Version"
LAST_EVENT_HEADER: Final = "Last-Event-ID"
# Protocol versions whose clients use sessions over this transport.
LEGACY_VERSIONS: Final = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
BATCH_VERSION: Final = "2025-03-26"  # the only version whose clients may POST batches
PRIMING_VERSION: Final = "2025-11-25"  # the first whose POST streams start with a priming event
# Versions without sessions: their clients never GET or DELETE (there is no stream to open nor
# session to end), and are told so.
SESSIONLESS_VERSIONS: Final = frozenset({"2026-07-28"})
# An event id this gateway writes: "<stream>.<sequence>", both decimal (ASCII digits only) and
# small enough to be ids of this process's streams.
_EVENT_ID: Final = re.compile(r"([0-9]{1,15})\.([0-9]{1,15})")
# Bodies larger than this are parsed on a worker thread: the interpreter switches threads every
# few milliseconds, so the event loop keeps turning while a multi-megabyte body is parsed.
PARSE_IN_THREAD_BYTES: Final = 256 * 1024


def add_routes(app: web.Application, path: str) -> None:
    app.router.add_post(path, handle_post)
    # HEAD would be a GET that streams forever with nothing to show for it: 405, with `Allow`.
    app.router.add_get(path, handle_get, allow_head=False)
    app.router.add_delete(path, handle_delete)


# --- POST ------------------------------------------------------------------------------------


async def handle_post(request: web.Request) -> web.StreamResponse:
    try:
        return await _post(request)
    except GatewayError as error:
        # Refusals name the request they answer whenever its id could be read.
        if error.request_id is None and (request_id := request.get(keys.ANSWERING)) is not None:
            error.request_id = request_id
        raise


async def _post(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[keys.SETTINGS]
    check_origin(request, app[keys.ORIGINS])
    json_ok, sse_ok = check_post_headers(request)
    body = await read_body(request, settings.max_message_bytes)
    messages, is_batch = await _parse(body, settings.max_batch_size)
    first = messages[0]
    request_id = first.id if not is_batch else None
    request[keys.ANSWERING] = request_id
    # The era is the request's: the 2026-07-28 envelope is a modern request (even an `initialize`,
    # which that era does not have), unless it names a live session of the caller's.
    if not is_batch and is_modern(first.params) and _live_session(request) is None:
        return await modern.serve(request, first, body, json_ok=json_ok, sse_ok=sse_ok)
    if any(m.method == "initialize" for m in messages):
        if is_batch:
            raise GatewayError("invalid_message", "initialize must not be part of a batch")
        if SESSION_HEADER in request.headers:
            raise GatewayError("already_initialized", "This session is already initialized")
        return await _initialize(request, first, json_ok, sse_ok, body_size=len(body))
    session = _session_for(request)
    if is_batch and session.protocol_version != BATCH_VERSION:
        raise GatewayError("batch_not_allowed", "JSON-RPC batches require protocol version 2025-03-26")
    translated = session.translated
    own: Screening | None = None
    if translated is not None:  # a child of 2026-07-28 only: the facade's translation
        messages, own = translated.screen(messages)
        await translated.settled()  # a subscription it changed is the child's before it is answered
        if not messages:
            return web.Response(status=202)
    session.enter()
    exchange = None
    try:
        tool_filter = app[keys.TOOL_FILTER]
        screening = (
            None if tool_filter is None else await tool_filter.screen(session.router, messages, request[keys.PRINCIPAL])
        )
        screening = merged(screening, own)
        exchange = exchanges.submit(
            session,
            messages,
            raw=None if is_batch or translated is not None else body,
            is_batch=is_batch,
            sse_ok=sse_ok,
            screening=screening,
        )
        await exchanges.drain(session)
        if exchange is None:
            return web.Response(status=202)
        return await _answer(
            request,
            session=session,
            exchange=exchange,
            json_ok=json_ok,
            sse_ok=sse_ok,
            keepalive=settings.sse_keepalive,
        )
    finally:
        session.leave()
        if exchange is not None:
            exchanges.audit_requests(request, session, messages, exchange, body_size=None if is_batch else len(body))


async def _parse(body: bytes, max_batch: int) -> tuple[list[Message], bool]:
    """The POST's messages, parsed strictly before anything is done with them (a large body on a
    worker thread, so that other requests keep being served while it is parsed)."""
    try:
        value = (
            await asyncio.to_thread(jsonrpc.decode, body) if len(body) > PARSE_IN_THREAD_BYTES else jsonrpc.decode(body)
        )
    except jsonrpc.StrictJsonError as exc:
        raise GatewayError("invalid_message", f"Invalid Request: {exc}") from None
    except ValueError:
        raise GatewayError("parse_error", "Parse error: the body is not valid JSON") from None
    is_batch = isinstance(value, list)
    items = value if is_batch else [value]
    if not items:
        raise GatewayError("invalid_message", "Invalid Request: empty batch")
    if len(items) > max_batch:
        raise GatewayError("batch_too_large", f"Invalid Request: a batch holds at most {max_batch} messages")
    try:
        return [jsonrpc.classify(item) for item in items], is_batch
    except jsonrpc.InvalidMessage as exc:
        # Raised before the id is recorded for handle_post: name it here when it can be read.
        request_id = value.get("id") if isinstance(value, dict) else None
        rid = request_id if jsonrpc.is_request_id(request_id) else None
        raise GatewayError("invalid_message", f"Invalid Request: {exc}", request_id=rid) from None


def _primes(session: Session) -> bool:
    """Whether the session's POST streams start with the priming event (2025-11-25 and later)."""
    version = session.protocol_version
    return version is not None and version >= PRIMING_VERSION


def _live_session(request: web.Request) -> Session | None:
    """The caller's live session the request names, if it names one."""
    session_id = request.headers.get(SESSION_HEADER)
    if session_id is None:
        return None
    return request.app[keys.SESSIONS].get(session_id, request[keys.PRINCIPAL].key)


def _session_for(request: web.Request) -> Session:
    """The session named by the request, checked against its negotiated protocol version."""
    session_id = request.headers.get(SESSION_HEADER)
    if session_id is None:
        raise GatewayError("session_required", "Bad Request: Mcp-Session-Id header is required")
    session = request.app[keys.SESSIONS].get(session_id, request[keys.PRINCIPAL].key)
    if session is None:
        raise GatewayError("session_not_found", "Session not found")
    # Any version this gateway serves is accepted, the negotiated one or another: the spec asks for
    # 400 only when the header names a version that is invalid or unsupported.
    version = request.headers.get(VERSION_HEADER)
    if version is not None and version != session.protocol_version and version not in LEGACY_VERSIONS:
        raise GatewayError("unsupported_protocol_version", "Bad Request: unsupported MCP-Protocol-Version")
    return session


async def _answer(
    request: web.Request,
    *,
    session: Session,
    exchange: Exchange,
    json_ok: bool,
    sse_ok: bool,
    keepalive: float,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Answer with JSON while only responses come, else stream; release the exchange at the end."""
    router = session.router
    streamed = False
    try:
        if json_ok:
            # The router sends a JSON-only client nothing but responses; it waits for the answer
            # or the request's deadline, whichever comes first.
            entries = await exchanges.responses_alone(exchange, keepalive, sse_ok=sse_ok)
            if entries:
                payloads = [payload for _, payload, _ in entries]
                body = b"[" + b",".join(payloads) + b"]" if exchange.is_batch else payloads[0]
                return web.Response(body=body, content_type=JSON, headers=headers)
        streamed = True
        response = await sse.open_response(request, headers)
        await sse.pump(exchange, response, keepalive, prime=_primes(session))
        return response
    finally:
        router.release(exchange, streamed=streamed)


async def _initialize(
    request: web.Request, message: Message, json_ok: bool, sse_ok: bool, *, body_size: int
) -> web.StreamResponse:
    """Spawn a child for a new session and answer its `initialize` (the session exists only on success)."""
    app = request.app
    book = app[keys.PRINCIPAL_CHILDREN].book
    await ratelimit.session_creation(request)
    if book.handshake is False:
        return await _initialize_translated(request, message, body_size=body_size)
    answered = await _handshake(request, message, json_ok, sse_ok, body_size=body_size)
    if isinstance(answered, bytes):  # refused: perhaps a server of 2026-07-28 only, asked again that way
        return await _initialize_translated(request, message, body_size=body_size, refusal=answered)
    return answered


async def _handshake(
    request: web.Request, message: Message, json_ok: bool, sse_ok: bool, *, body_size: int
) -> web.StreamResponse | bytes:
    """Forward `initialize` to a new child; the answer, or the child's refusal (its JSON-RPC error)
    when the command might be of 2026-07-28 only."""
    app = request.app
    store = app[keys.SESSIONS]
    book = app[keys.PRINCIPAL_CHILDREN].book
    client_ip = request[keys.CLIENT_IP]
    session = await store.open(
        request[keys.PRINCIPAL], request.get(keys.BEARER), client_ip, ratelimit.address_key(client_ip)
    )
    exchange: Exchange | None = None
    published = False
    try:
        exchange = exchanges.submit(session, [message], raw=None, is_batch=False, sse_ok=sse_ok)
        if exchange is None:  # pragma: no cover - an initialize request always opens an exchange
            raise GatewayError("internal_error", "Internal error")
        await exchanges.drain(session)
        # Wait for the whole answer before choosing: the session id is issued only on success.
        while not exchange.finished:
            await exchange.wait(app[keys.SETTINGS].request_timeout, after=exchange.next_seq - 1)
        entries = exchange.take()
        answer = entries[-1][1]
        error = jsonrpc.decode(answer).get("error")
        if error is not None:
            # The server refused (200, like any JSON-RPC error), or the gateway gave up on it (502).
            gave_up = session.router.closed or error.get("code") == jsonrpc.REQUEST_TIMEOUT
            if gave_up or book.era == "legacy":
                return web.Response(status=502 if gave_up else 200, body=answer, content_type=JSON)
            return answer
        store.publish(session)
        published = True
        headers = {SESSION_HEADER: session.id}
        if exchange.only_responses and json_ok:
            return web.Response(body=answer, content_type=JSON, headers=headers)
        response = await sse.open_response(request, headers)
        if _primes(session):
            await response.write(sse.priming(exchange.event_id(0)))
        for seq, payload, _ in entries:
            await response.write(sse.frame(exchange.event_id(seq), payload))
        return response
    finally:
        if exchange is not None:
            session.router.release(exchange, streamed=False)
            exchanges.audit_requests(request, session, [message], exchange, body_size=body_size)
        if not published:
            await store.close(session, "initialize_failed")


async def _initialize_translated(
    request: web.Request, message: Message, *, body_size: int, refusal: bytes | None = None
) -> web.StreamResponse:
    """A session whose child speaks 2026-07-28 only: `initialize` is answered from the child's
    `DiscoverResult` (asked as its first message), and the session translated from then on.
    `refusal` is another child's answer to `initialize`, given when this one is not modern."""
    app = request.app
    store, pool = app[keys.SESSIONS], app[keys.PRINCIPAL_CHILDREN]
    client_ip = request[keys.CLIENT_IP]
    session = await store.open(
        request[keys.PRINCIPAL], request.get(keys.BEARER), client_ip, ratelimit.address_key(client_ip)
    )
    published = False
    started = asyncio.get_running_loop().time()
    try:
        try:
            discovery = await pool.probe(session.router)
        except ChildGone:
            discovery = None
        if discovery is None:
            pool.book.learn("legacy")  # its first message was the probe, and it is not modern
            if refusal is not None:
                return web.Response(body=refusal, content_type=JSON)  # the server's own answer
            raise GatewayError("upstream_failed", "The MCP server answers neither initialize nor server/discover")
        pool.book.learn_modern_only()
        facade = Facade(discovery)
        result = facade.initialize(message.params)
        session.translated = Translated(session.router, facade, input_timeout=app[keys.SETTINGS].input_request_timeout)
        session.router.protocol_version = str(result["protocolVersion"])
        session.translated.relisten()
        store.publish(session)
        published = True
        body = jsonrpc.encode({"jsonrpc": "2.0", "id": message.id, "result": result})
        audit = app[keys.AUDIT]
        audit.record(
            "mcp.request",
            session=session,
            method="initialize",
            outcome="ok",
            duration_ms=round((asyncio.get_running_loop().time() - started) * 1000, 3),
            bytes_in=body_size,
            bytes_out=len(body),
            era=session.era,
        )
        return web.Response(body=body, content_type=JSON, headers={SESSION_HEADER: session.id})
    finally:
        if not published:
            await store.close(session, "initialize_failed")


# --- GET and DELETE --------------------------------------------------------------------------


async def handle_get(request: web.Request) -> web.StreamResponse:
    app = request.app
    check_origin(request, app[keys.ORIGINS])
    _refuse_sessionless(request)
    _, sse_ok = accepted(request.headers.get("Accept"))
    if not sse_ok:
        raise GatewayError("not_acceptable", "Accept must include text/event-stream")
    session = _session_for(request)
    router = session.router
    last_event = request.headers.get(LAST_EVENT_HEADER)
    stream = router.get_stream if last_event is None else _resume(router, last_event)
    session.enter()
    try:
        response = await sse.open_response(request)
        await sse.pump(stream, response, app[keys.SETTINGS].sse_keepalive)
        return response
    finally:
        if isinstance(stream, Exchange):
            router.release(stream, streamed=True)
        session.leave()


def _refuse_sessionless(request: web.Request) -> None:
    """405 (`Allow: POST`) for a GET or DELETE of a version without sessions (2026-07-28): the
    method does not exist there, whatever session id or event id came with it."""
    if request.headers.get(VERSION_HEADER) in SESSIONLESS_VERSIONS:
        raise GatewayError(
            "method_not_allowed",
            "Method Not Allowed: this protocol version has neither GET nor DELETE; use POST",
            headers={"Allow": "POST"},
        )


def _resume(router: Router, last_event: str) -> Stream:
    """The stream a `Last-Event-ID` names, rewound to just after that event.

    The standalone stream always resumes, with whatever it still holds. A POST's stream resumes
    only when every message after the event is still held; otherwise 410, so that the client
    gives up on that request instead of waiting for a response that cannot come.
    """
    match = _EVENT_ID.fullmatch(last_event.strip())
    if match is None:
        raise GatewayError("bad_last_event_id", "Bad Request: Last-Event-ID is not an event id this gateway sent")
    stream_id, seq = int(match.group(1)), int(match.group(2))
    stream = router.stream_for(stream_id)
    if stream is None or not (stream.rewind(seq) or stream is router.get_stream):
        raise GatewayError("stream_gone", "That event stream can no longer be resumed")
    return stream


async def handle_delete(request: web.Request) -> web.StreamResponse:
    app = request.app
    check_origin(request, app[keys.ORIGINS])
    _refuse_sessionless(request)
    session = _session_for(request)
    await app[keys.SESSIONS].close(session, "client")
    return web.Response(status=204)
