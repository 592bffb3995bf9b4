"""What both eras' POST handlers do alike with a session's router: hand it a POST's messages
(its failures turned into refusals), wait until the child has taken them, wait for answers a
JSON body can carry, and audit each request once its answer is sent or abandoned (with the era
of the client that sent it).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway import jsonrpc, keys
from gateway.jsonrpc import Kind, Message
from gateway.observe.audit import describe_request
from gateway.sessions import failures
from gateway.sessions.child import ChildGone, StdinStalled
from gateway.sessions.router import Exchange, Overloaded, Screening
from gateway.sessions.store import Session
from gateway.sessions.streams import Entry

log = logging.getLogger("gateway.transport")


async def responses_alone(exchange: Exchange, keepalive: float, *, sse_ok: bool) -> list[Entry]:
    """The answers of `exchange` when only responses came (a JSON body can carry them), once its
    current round is answered; empty when something else came first, or when it was quiet for a
    whole keep-alive period and the client takes streams (then it streams, so keep-alives flow)."""
    while exchange.only_responses and not exchange.answered:
        seen = exchange.next_seq - 1
        await exchange.wait(keepalive, after=seen)
        if sse_ok and exchange.next_seq - 1 == seen and not exchange.answered:
            return []
    if exchange.answered and exchange.only_responses:
        return exchange.take()
    return []


def audit_requests(
    request: web.Request, session: Session, messages: list[Message], exchange: Exchange, *, body_size: int | None
) -> None:
    """Audit the requests of a POST; a failure to audit is logged, never turned into the answer
    (the requests have run by now, and a client told they failed would run them again)."""
    try:
        record_requests(request, session, messages, exchange, body_size=body_size)
    except Exception:
        log.exception("audit of %d requests failed", len(exchange.gateway_ids), extra={"session": session.id[:8]})


def record_requests(
    request: web.Request, session: Session, messages: list[Message], exchange: Exchange, *, body_size: int | None
) -> None:
    """One `mcp.request` audit event per request of a POST, once its answer is sent (or abandoned)."""
    audit = request.app[keys.AUDIT]
    if not audit.active:
        return
    now = asyncio.get_running_loop().time()
    requests = [message for message in messages if message.kind is Kind.REQUEST]
    for message, gateway_id in zip(requests, exchange.gateway_ids, strict=False):
        # No outcome: the client went away before the answer came.
        outcome, bytes_out, answered = exchange.outcomes.get(gateway_id, ("abandoned", 0, now))
        audit.record(
            "mcp.request",
            session=session,
            **describe_request(message.method or "", message.params, with_arguments=audit.tool_arguments),
            outcome=outcome,
            duration_ms=round((answered - exchange.started) * 1000, 3),
            bytes_in=body_size if body_size is not None else len(jsonrpc.encode(message.body)),
            bytes_out=bytes_out,
            era=session.era,
        )


def submit(
    session: Session,
    messages: list[Message],
    *,
    raw: bytes | None,
    is_batch: bool,
    sse_ok: bool,
    screening: Screening | None = None,
) -> Exchange | None:
    try:
        return session.router.submit(messages, raw=raw, is_batch=is_batch, streamable=sse_ok, screening=screening)
    except (ChildGone, Overloaded) as failure:
        raise failures.refusal(failure) from None


async def drain(session: Session) -> None:
    try:
        await session.router.drain()
    except StdinStalled as failure:
        raise failures.refusal(failure) from None
    except ChildGone:
        pass  # the exchange is failed by the router with the exit reason
