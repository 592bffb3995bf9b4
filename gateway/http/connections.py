"""What a connection may cost: caps on open connections, deadlines for reading a request and for
the client reading its response, the process's descriptor budget, and accept errors logged
without a flood.

The limiter wraps the HTTP server's protocol factory, so it sees every connection before aiohttp
sets anything up for it, and one sweep task checks every deadline.

Invariants:
- At most `max_connections` connections are open at once, and at most `max_per_address` from one
  TCP peer (an IPv6 peer counted per /64, as the rate limits count). Peers inside
  `trusted_proxies` are exempt from the per-address cap, never from the total: every client of a
  proxy arrives from the proxy's address, the proxy caps its own clients, and the request-level
  limits see each real client. A connection over a cap gets a fixed 503 before any HTTP parsing
  exists for it; it is then half-closed and whatever the client still sends is discarded for at
  most `REFUSAL_LINGER` (so the client reads the 503 instead of a reset), and at most
  `MAX_LINGERING` refused connections linger at once (beyond that they are closed at once).
- A request head is complete within `header_timeout` of the connection opening, or of the first
  byte that follows a handled request; a request body is wholly received within `body_timeout` of
  its head. A missed read deadline gets a fixed 408 and the connection is closed.
  (A partial head pipelined behind a request being handled, rare and harmless, is left to the
  keep-alive timer.)
- A connection whose unsent output makes no progress (its buffer neither shrinks nor empties, and
  the transport does not resume writing) for `write_timeout` is aborted. Nothing else bounds a
  response: a stream the client keeps reading may last for hours.
- An idle keep-alive connection is closed after `http_keepalive_timeout`: aiohttp's own timer,
  which `serve` sets.
- Deadlines fire late by at most one sweep interval, never early.
- Nothing is logged per connection: closures and refusals are summed up at most once per
  `SUMMARY_INTERVAL`, and an `accept()` that fails for lack of descriptors or memory (EMFILE,
  ENFILE, ENOBUFS, ENOMEM) at most once per `ACCEPT_ERROR_LOG_INTERVAL`, without a traceback.

While the gateway drains for shutdown, `working` counts the requests still being handled, the
session streams (GET on the MCP path) excepted: those are not work that can finish, and end when
their sessions are closed.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import os
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_protocol import RequestHandler

from gateway import jsonrpc
from gateway.http.clientip import parse_address
from gateway.http.ratelimit import address_key

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger("gateway.connections")

# Descriptors one session holds: its child's stdin, stdout and stderr pipes and its pidfd.
FDS_PER_SESSION: Final = 4
# Descriptors the gateway needs besides sessions and connections: listeners, the event loop, log,
# audit and storage files, the orphan watchdog's pipe, outbound HTTP clients.
RESERVED_DESCRIPTORS: Final = 64
# The soft limit asked for when the hard limit is unlimited (Linux's default fs.nr_open).
NOFILE_CEILING: Final = 1 << 20
# The sweep runs at this fraction of the shortest deadline, within these bounds (seconds): often
# enough that a deadline is never much late, rarely enough to cost nothing.
SWEEP_FRACTION: Final = 0.25
SWEEP_MIN_INTERVAL: Final = 0.05
SWEEP_MAX_INTERVAL: Final = 1.0
# At most one summary of closed and refused connections per this many seconds.
SUMMARY_INTERVAL: Final = 60.0
# At most one log line about failing accept() calls per this many seconds.
ACCEPT_ERROR_LOG_INTERVAL: Final = 10.0
ACCEPT_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# The status of the placeholder returned for a client whose connection is gone (never written;
# nginx's name for it, in the access log).
CLIENT_GONE: Final = 499
# A refused connection is half-closed after its 503 and read (and discarded) this long, so that the
# request the client already sent does not turn the close into a reset that loses the 503; at most
# this many at once, so that refusals cost few descriptors even in a flood.
REFUSAL_LINGER: Final = 1.0
MAX_LINGERING: Final = 32
# Retry-After of a refused connection: other connections end within a deadline or two.
REFUSAL_RETRY_AFTER: Final = 5

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _canned(status: int, reason: str, code: int, message: str, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, with a JSON-RPC error body."""
    body = json.dumps(jsonrpc.error_response(None, code, message)).encode()
    retry = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{retry}Connection: close\r\n\r\n"
    )
    return head.encode() + body


TOO_MANY_CONNECTIONS: Final = _canned(
    503, "Service Unavailable", jsonrpc.INTERNAL_ERROR, "Too many connections; try again later", REFUSAL_RETRY_AFTER
)
REQUEST_TIMEOUT: Final = _canned(
    408, "Request Timeout", jsonrpc.INVALID_REQUEST, "The request was not received in time"
)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The caps and deadlines of the main listener (seconds, counts)."""

    max_connections: int
    max_per_address: int
    header_timeout: float
    body_timeout: float
    write_timeout: float
    trusted: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_connections=settings.max_connections,
            max_per_address=settings.max_connections_per_ip,
            header_timeout=settings.http_header_timeout,
            body_timeout=settings.http_body_timeout,
            write_timeout=settings.http_write_timeout,
            trusted=tuple(settings.proxy_networks()),
        )

    @property
    def sweep_interval(self) -> float:
        shortest = min(self.header_timeout, self.body_timeout, self.write_timeout)
        return min(max(shortest * SWEEP_FRACTION, SWEEP_MIN_INTERVAL), SWEEP_MAX_INTERVAL)


class Connection(asyncio.Protocol):
    """One TCP connection: admitted or refused, then passed on to aiohttp's handler with clocks."""

    __slots__ = (
        "_handler",
        "_limiter",
        "_server",
        "address",
        "body_since",
        "head_since",
        "payload",
        "streaming",
        "transport",
        "write_since",
        "write_size",
    )

    def __init__(self, limiter: ConnectionLimiter, server: web.Server) -> None:
        self._limiter = limiter
        self._server = server
        self._handler: RequestHandler | None = None
        self.transport: asyncio.Transport | None = None
        self.address: str | None = None  # the bucket counted against max_per_address
        self.head_since: float | None = None  # a request head is awaited since then
        self.payload: StreamReader | None = None  # the body of the request being handled
        self.body_since = 0.0
        self.streaming = False  # the request being handled is a session stream
        self.write_size = 0
        self.write_since = 0.0

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self._limiter.admit(self):
            self.transport.write(TOO_MANY_CONNECTIONS)
            if self._limiter.linger(self):
                self.transport.write_eof()
            else:
                self.transport.close()
            return
        self.head_since = self.write_since = self._limiter.now()
        self._handler = self._server()
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        handler = self._handler
        if handler is None:
            return  # refused: the canned answer is on its way
        if self.head_since is None and self.payload is None:
            self.head_since = self._limiter.now()
        handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self._handler is not None:
            self._handler.eof_received()
        return None  # as aiohttp's handler (and a refused connection): the transport closes itself

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self.write_since = self._limiter.now()  # the client read enough to drain the buffer
            self._handler.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        handler = self._handler
        if handler is None:
            self._limiter.unlinger(self)
            return
        self._limiter.release(self)
        self._handler = None
        self.payload = None
        handler.connection_lost(exc)
        self._limiter.request_ended()

    # --- what the request middleware and the sweep see --------------------------------------

    def begin(self, payload: StreamReader, *, streaming: bool) -> None:
        self.head_since = None
        self.payload = payload
        self.body_since = self._limiter.now()
        self.streaming = streaming

    def end(self) -> None:
        self.payload = None
        self.streaming = False
        self._limiter.request_ended()

    @property
    def handling(self) -> bool:
        return self.payload is not None

    def check(self, now: float, limits: ConnectionLimits) -> str | None:
        """Close the connection if it missed a deadline; the deadline's name if it did."""
        transport = self.transport
        if transport is None or self._handler is None:
            return None
        missed = None
        if transport.is_closing():
            pass  # already closing: only the write deadline below still applies
        elif self.head_since is not None and now - self.head_since >= limits.header_timeout:
            missed = "header"
        elif self.payload is not None and not self.payload.is_eof() and now - self.body_since >= limits.body_timeout:
            missed = "body"
        if missed is not None:
            self.head_since = None
            self.payload = None
            transport.write(REQUEST_TIMEOUT)
            self._handler.force_close()  # the 408 is flushed, then the socket closed
            self._limiter.request_ended()
            return missed
        size = transport.get_write_buffer_size()
        if size == 0 or size < self.write_size:
            self.write_since = now
        elif now - self.write_since >= limits.write_timeout:
            transport.abort()
            return "write"
        self.write_size = size
        return None


class ConnectionLimiter:
    """Admits connections under the caps and enforces their deadlines (see the module docstring)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._loop = asyncio.get_running_loop()
        self._live: set[Connection] = set()
        self._per_address: Counter[str] = Counter()
        self._sweeper: asyncio.Task[None] | None = None
        self.events: Counter[str] = Counter()  # closed (by deadline) and refused (by cap), ever
        self._reported: Counter[str] = Counter()
        self._next_summary = 0.0
        self._ended: asyncio.Event | None = None  # set when a request ends, while `quiet` waits
        self._lingering: dict[Connection, float] = {}  # refused connections, since when
        self.accept_errors: AcceptErrorLog | None = None  # counted in the summaries when set

    def __len__(self) -> int:
        return len(self._live)

    def now(self) -> float:
        return self._loop.time()

    def protocol_factory(self, server: web.Server) -> Callable[[], Connection]:
        return lambda: Connection(self, server)

    @property
    def working(self) -> int:
        """Requests being handled, session streams excepted."""
        return sum(1 for connection in self._live if connection.handling and not connection.streaming)

    @property
    def handling(self) -> int:
        """Requests being handled, session streams included."""
        return sum(1 for connection in self._live if connection.handling)

    def request_ended(self) -> None:
        if self._ended is not None:
            self._ended.set()

    async def quiet(self, *, streams: bool) -> None:
        """Return once no request is being handled (session streams too when `streams`)."""
        while self.handling if streams else self.working:
            self._ended = asyncio.Event()
            await self._ended.wait()
        self._ended = None

    def admit(self, connection: Connection) -> bool:
        limits = self.limits
        if len(self._live) >= limits.max_connections:
            self.events["refused_total"] += 1
            return False
        address = self._address_of(connection)
        if address is not None:
            if self._per_address[address] >= limits.max_per_address:
                self.events["refused_address"] += 1
                return False
            self._per_address[address] += 1
            connection.address = address
        self._live.add(connection)
        return True

    def linger(self, connection: Connection) -> bool:
        """Whether a refused connection may linger (see `REFUSAL_LINGER`)."""
        if len(self._lingering) >= MAX_LINGERING:
            return False
        self._lingering[connection] = self._loop.time()
        return True

    def unlinger(self, connection: Connection) -> None:
        self._lingering.pop(connection, None)

    def _address_of(self, connection: Connection) -> str | None:
        """The bucket the peer is counted in; None when the cap does not apply to it."""
        transport = connection.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        host = peer[0] if isinstance(peer, tuple) and peer and isinstance(peer[0], str) else None
        if host is None:
            return None  # not TCP (a Unix socket): nothing to count by
        if self.limits.trusted:
            parsed = parse_address(host)
            if parsed is not None and any(parsed in network for network in self.limits.trusted):
                return None
        return address_key(host)

    def release(self, connection: Connection) -> None:
        self._live.discard(connection)
        if connection.address is not None:
            self._per_address[connection.address] -= 1
            if self._per_address[connection.address] <= 0:
                del self._per_address[connection.address]
            connection.address = None

    def sweep(self) -> None:
        """One pass: close every connection that missed a deadline."""
        now = self._loop.time()
        for connection in list(self._live):
            missed = connection.check(now, self.limits)
            if missed is not None:
                self.events[missed] += 1
        for connection, since in list(self._lingering.items()):
            if now - since >= REFUSAL_LINGER and connection.transport is not None:
                connection.transport.abort()
                del self._lingering[connection]
        if self.accept_errors is not None and self.accept_errors.count:
            self.events["accept_failed"] = self.accept_errors.count
        if self.events != self._reported and now >= self._next_summary:
            self._summarise(now)

    def _summarise(self, now: float) -> None:
        since = self.events - self._reported
        self._reported = self.events.copy()
        self._next_summary = now + SUMMARY_INTERVAL
        log.warning(
            "connections closed for missed deadlines or refused over the caps",
            extra={"counts": dict(since), "open_connections": len(self._live)},
        )

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.limits.sweep_interval)
            try:
                self.sweep()
            except Exception:  # the sweep must outlive any one connection
                log.exception("connection sweep failed")

    def start(self) -> None:
        self._sweeper = self._loop.create_task(self._sweep_forever())

    async def aclose(self) -> None:
        """Stop the sweep and abort what is left (the server has shut down: nothing is answered)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        for connection in [*self._live, *self._lingering]:
            if connection.transport is not None:
                connection.transport.abort()
        if self.events != self._reported:
            self._summarise(self._loop.time())  # what the last interval did not report yet


class LimitedSite(web.BaseSite):
    """A TCP listener whose connections pass through a `ConnectionLimiter`."""

    __slots__ = ("_host", "_limiter", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limiter: ConnectionLimiter) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._limiter = limiter

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        if server is None:  # pragma: no cover - BaseSite refuses a runner that was not set up
            raise RuntimeError("the runner is not set up")
        self._server = await asyncio.get_running_loop().create_server(
            self._limiter.protocol_factory(server), self._host, self._port, backlog=self._backlog
        )


def request_tracking(stream_path: str) -> Middleware:
    """Tell the connection when one of its requests is being handled (outermost middleware).

    A handler that fails because its client's connection is gone (a deadline closed it, or the
    client left) has no one to answer: that is not an error to log, and the placeholder returned
    here is never written.
    """

    @web.middleware
    async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        connection = transport.get_protocol() if transport is not None else None
        if isinstance(connection, Connection):  # not so with aiohttp's test client
            connection.begin(request.content, streaming=request.method == "GET" and request.path == stream_path)
        try:
            return await handler(request)
        except ConnectionError:
            if request.transport is not None:
                raise
            return web.Response(status=CLIENT_GONE)
        finally:
            if isinstance(connection, Connection):
                connection.end()

    return track


# --- descriptors -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DescriptorLimit:
    """RLIMIT_NOFILE of this process: soft and hard, and the soft value before it was raised."""

    soft: int
    hard: int
    raised_from: int | None = None


def _target(soft: int, hard: int) -> int:
    """The soft limit to run with: the hard limit (a ceiling when that is unlimited), never lower."""
    if soft == resource.RLIM_INFINITY:
        return soft
    target = NOFILE_CEILING if hard == resource.RLIM_INFINITY else hard
    return max(soft, target)


def raise_descriptor_limit() -> DescriptorLimit:
    """Raise the soft open-file limit toward the hard one, as far as the kernel allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _target(soft, hard)
    if target == soft:
        return DescriptorLimit(soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # e.g. a hard limit above fs.nr_open
        return DescriptorLimit(soft, hard)
    return DescriptorLimit(target, hard, raised_from=soft)


def reachable_descriptor_limit() -> int:
    """The soft open-file limit `serve` would run with, once it has raised it."""
    return _target(*resource.getrlimit(resource.RLIMIT_NOFILE))


def descriptors_needed(settings: Settings) -> int:
    return FDS_PER_SESSION * settings.max_sessions + settings.max_connections + MAX_LINGERING + RESERVED_DESCRIPTORS


def descriptor_problem(settings: Settings, limit: int) -> str | None:
    """Why `max_sessions` and `max_connections` do not fit in `limit` descriptors; None when they do."""
    needed = descriptors_needed(settings)
    if limit == resource.RLIM_INFINITY or needed <= limit:
        return None
    return (
        f"the open-file limit ({limit}) is below what max_sessions={settings.max_sessions} "
        f"({FDS_PER_SESSION} descriptors each) and max_connections={settings.max_connections} need, "
        f"with {MAX_LINGERING + RESERVED_DESCRIPTORS} reserved: {needed}. At the limit, new connections and "
        "sessions fail with EMFILE. Raise the hard limit (ulimit -Hn, docker --ulimit nofile=N:N, "
        "systemd LimitNOFILE=N) or lower max_sessions / max_connections"
    )


# --- accept() errors -------------------------------------------------------------------------


class AcceptErrorLog:
    """The event loop's exception handler: an `accept()` that fails for lack of resources is
    logged at most once per interval, with a count and no traceback (asyncio would log every
    attempt, and it retries many times a second); anything else goes to the previous handler."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = ACCEPT_ERROR_LOG_INTERVAL) -> None:
        self._loop = loop
        self._interval = interval
        self._previous = loop.get_exception_handler()
        self._next = 0.0
        self.count = 0  # failed accepts, ever
        self._unreported = 0

    def install(self) -> None:
        self._loop.set_exception_handler(self)

    def uninstall(self) -> None:
        self._loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if (
            isinstance(error, OSError)
            and error.errno in ACCEPT_RESOURCE_ERRNOS
            and "accept" in str(context.get("message", ""))
        ):
            self.count += 1
            self._unreported += 1
            now = time.monotonic()
            if now >= self._next:
                self._next = now + self._interval
                soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
                log.error(
                    "cannot accept connections: %s (%d failed attempts since the last report; open-file limit %d)",
                    os.strerror(error.errno or 0),
                    self._unreported,
                    soft,
                )
                self._unreported = 0
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)
