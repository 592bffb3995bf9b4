"""Server-sent events: the headers every SSE response carries, event framing (the priming event
of 2025-11-25 streams included), and the pump that moves a `Stream`'s messages onto one HTTP
response with keep-alives.

Every SSE response carries `Cache-Control: no-cache` and `X-Accel-Buffering: no` (so nginx
passes events through unbuffered) and a comment line whenever the stream has been quiet for the
keep-alive interval (so no proxy read timeout fires on a healthy idle stream). A client that
stops reading is dropped after `WRITE_TIMEOUT` rather than holding its session open forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final

from aiohttp import web

from gateway.sessions.streams import Stream

SSE_HEADERS: Final[Mapping[str, str]] = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
KEEPALIVE: Final = b": keep-alive\n\n"
# A write (one event, or a keep-alive) that makes no progress for this long means the client
# has stopped reading; the response is abandoned and the stream keeps its backlog.
WRITE_TIMEOUT: Final = 30.0


# How long a client waits before it reconnects to a stream whose connection closed (the `retry`
# of the priming event); the gateway itself never closes a stream's connection early.
RECONNECT_MS: Final = 1000


def frame(event_id: str | None, payload: bytes) -> bytes:
    """One event: its id (none on the streams of 2026-07-28, which cannot be resumed) and message."""
    if event_id is None:
        return b"data: " + payload + b"\n\n"
    return b"id: " + event_id.encode() + b"\ndata: " + payload + b"\n\n"


def priming(event_id: str) -> bytes:
    """The event a 2025-11-25 POST stream starts with: an id before any message (where a client
    that loses the connection resumes, with `Last-Event-ID`), how long to wait before it
    reconnects, and no data (nothing for the client to handle)."""
    return b"id: " + event_id.encode() + b"\nretry: %d\ndata:\n\n" % RECONNECT_MS


async def open_response(request: web.Request, headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    if headers:
        response.headers.update(headers)
    await response.prepare(request)
    return response


async def pump(
    stream: Stream, response: web.StreamResponse, keepalive: float, *, prime: bool = False, event_ids: bool = True
) -> bool:
    """Write `stream` to `response` until it finishes, first the priming event with `prime`, each
    event with its id unless not `event_ids`; False when the client went away first.

    The caller has attached to the stream; a newer consumer attaching ends this pump.
    """
    token = stream.attach()
    try:
        if prime:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await response.write(priming(stream.event_id(0)))
        while stream.consumer == token:
            entries = stream.take()
            for seq, payload, _ in entries:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.write(frame(stream.event_id(seq) if event_ids else None, payload))
            if stream.answered and not stream.has_pending:
                return True
            if stream.consumer != token:
                break  # a newer consumer took over while this one wrote: its wait is its own
            if not entries:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.write(KEEPALIVE)
            await stream.wait(keepalive)
        return False
    except (ConnectionError, TimeoutError):
        return False
    finally:
        if stream.consumer == token:
            stream.detach()
