"""Per-session routing between HTTP exchanges and the session's one child.

Owns the id mapping, the destination of every child message, and per-request deadlines.

Invariants:
- Every request written to the child carries a gateway id: a random 53-bit integer, unique among
  the session's pending requests, that no client ever sees in a message (a signed requestState
  names one, which is no use to anyone else); the client's own id is restored on the
  response. Two POSTs may therefore use the same id at the same time, the child never sees an id
  it did not get from us, and no one can predict the id of the next request. The gateway's own
  requests (`ask`) use random string ids, a namespace of their own: no answer to a client's request
  can ever be taken for the answer to one of them.
- Pending state exists only for requests that were written to the child, and is indexed both by
  gateway id and by client id, so every per-message operation (a response, a cancellation) costs
  O(1) in the number pending. A session holds at most `max_in_flight` requests.
- Each child line is handled on its own: whatever is wrong with it costs that line alone (a
  violation), and a request whose answer was unusable is answered with an error, never forgotten.
- Each child message goes to exactly one place: a response to the exchange that sent its
  request; progress to the exchange that owns its `progressToken`; a server→client request or a
  log message to the only exchange in flight when there is exactly one that can stream, else to
  the standalone GET stream (which holds a bounded backlog until a GET drains it). Never broadcast.
  For the clients of 2026-07-28, which cannot be sent requests and have no GET stream, the
  session's hooks take over: `on_request` takes the child's requests (to become requests for
  input), `on_unrelated` what belongs to no request (for listen streams, where the listeners'
  filters decide), and a log message goes to a modern exchange only at the level it set.
- A call answered with a request for input (`end_round`) stays pending, parked: a response that
  comes meanwhile is held, and the retry that takes it over (`resume`) is answered with it under
  its own id. A `Continuation` may take a response over the same way and send the request again
  (`retry`), or answer it with an error (`fail`).
- A request whose deadline passes (no answer and no progress for `request_timeout` seconds) is
  answered with an error and cancelled at the child; a child that exits fails everything in flight.
- The gateway's own requests to the child (`ask`): their responses go to the waiting caller and
  to no stream.
- A policy reaches the traffic through one plug point, `Interceptor`, and the router knows
  nothing of what it enforces. A `Screening` of a POST may answer some of its requests here
  instead of by the child, and give others an interceptor that sees (and may rewrite) the child's
  response to them; a session's `interceptor` sees every message the child sends of its own
  accord. With no screening and no interceptor, the traffic pays nothing for either: no call, no
  allocation, one test of an attribute per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from gateway import jsonrpc
from gateway.eras import translate
from gateway.jsonrpc import JsonObject, Kind, Message, RequestId
from gateway.sessions.child import Child, ChildGone
from gateway.sessions.streams import Stream

log = logging.getLogger("gateway.router")

GET_STREAM_ID: Final = 0
# Finished SSE exchanges kept (with their bounded replay window) for a GET that resumes one:
# the server cannot know whether a client read the end of a stream before it disconnected.
MAX_RESUMABLE_EXCHANGES: Final = 4
# Bytes of a violating stdout line quoted in the log and the audit: enough to recognise it.
VIOLATION_SAMPLE: Final = 120

# Gateway request ids are random integers below 2**53: exact in every JSON parser, doubles included.
GATEWAY_ID_BITS: Final = 53
# The prefix of the gateway's own request ids (strings, unlike the ids of forwarded requests).
ASK_ID_PREFIX: Final = "mcp-gateway/"

CloseCallback = Callable[[str], None]
# Called with the kind of violation ("not_json", "not_jsonrpc", "oversize") and a sample of it.
ViolationCallback = Callable[[str, str | None], None]
# How each request of an exchange ended: the child answered (ok or error), or the gateway did.
Outcome = Literal["ok", "error", "timeout", "closed", "oversize", "invalid", "denied", "input_required"]
Pending = tuple["Exchange", RequestId | None]  # the exchange waiting, and the client's own id


class Overloaded(Exception):
    """The session already has as many requests in flight as it may hold."""


class Interceptor(Protocol):
    """Sees a message of the child before it is routed: the one plug point of a policy."""

    def intercept(self, message: Message) -> bool:
        """True when it changed `message.body` (then encoded anew; else the child's bytes go on)."""
        ...


class Continuation(Protocol):
    """Sees the child's response to one request before anything else does, and may take it over
    (the response is then neither delivered nor forgotten: the request stays pending until the
    continuation sends it again with `Router.retry`, or answers it with `Router.fail`)."""

    def resolve(self, message: Message, gateway_id: int, exchange: Exchange) -> bool:
        """True when it took the response over."""
        ...


@dataclass(slots=True)
class Screening:
    """What a policy decided for the requests of one POST, by index in the POST."""

    refused: dict[int, tuple[int, str]] = field(default_factory=dict)  # answered here: (code, message)
    answered: dict[int, JsonObject] = field(default_factory=dict)  # answered here: the result
    intercepted: dict[int, Interceptor] = field(default_factory=dict)  # see the child's response
    continued: dict[int, Continuation] = field(default_factory=dict)  # may take the response over


class _Both:
    """Two interceptors of one response, in order."""

    __slots__ = ("_first", "_second")

    def __init__(self, first: Interceptor, second: Interceptor) -> None:
        self._first, self._second = first, second

    def intercept(self, message: Message) -> bool:
        changed = self._first.intercept(message)
        return self._second.intercept(message) or changed


def merged_interceptors(first: Interceptor, second: Interceptor) -> Interceptor:
    """Both interceptors of one response, `first` first."""
    return _Both(first, second)


def merged(first: Screening | None, second: Screening | None) -> Screening | None:
    """Two screenings of one POST as one: the first's decisions before the second's."""
    if first is None or second is None:
        return first if second is None else second
    both = Screening(
        refused={**second.refused, **first.refused},
        answered={**second.answered, **first.answered},
        intercepted=dict(second.intercepted),
        continued={**second.continued, **first.continued},
    )
    for index, interceptor in first.intercepted.items():
        later = both.intercepted.get(index)
        both.intercepted[index] = interceptor if later is None else _Both(interceptor, later)
    return both


class Exchange(Stream):
    """The requests of one POST, as the stream that carries their answers."""

    __slots__ = (
        "asking",
        "client_ids",
        "deadline",
        "gateway_ids",
        "held",
        "initialize",
        "is_batch",
        "log_level",
        "modern",
        "outcomes",
        "parked",
        "rounds",
        "started",
        "streamable",
        "timer",
        "tokens",
        "waiting",
    )

    def __init__(self, stream_id: int, router: Router, *, is_batch: bool, streamable: bool, initialize: bool) -> None:
        super().__init__(stream_id, router._congestion)
        self.is_batch = is_batch
        self.streamable = streamable  # the client accepts text/event-stream
        self.initialize = initialize
        # A 2026-07-28 request: log messages reach it only at the level it set (none: no messages).
        self.modern = False
        self.log_level: str | None = None
        # The call's HTTP request was answered with a request for input and its retry has not come:
        # its response, if the child sends it meanwhile, is held for the retry (which has a new id).
        self.parked = False
        self.held: list[Message] = []
        self.rounds = 0  # how many of its HTTP requests were answered with a request for input
        # Requests of the gateway's own to the client, unanswered: the deadline waits for them.
        self.asking = 0
        self.waiting = 0
        self.gateway_ids: list[int] = []
        self.client_ids: list[RequestId | None] = []  # parallel to gateway_ids
        self.tokens: list[object] = []
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.started = asyncio.get_running_loop().time()
        # gateway id → how its request ended, the answer's size and when (loop time).
        self.outcomes: dict[int, tuple[Outcome, int, float]] = {}


class Router:
    """Routes one session's messages. It is the child's `ChildSink`."""

    def __init__(
        self,
        *,
        label: str,
        request_timeout: float,
        violation_limit: int,
        on_close: CloseCallback,
        max_in_flight: int = 256,
        on_violation: ViolationCallback | None = None,
    ) -> None:
        self.label = label
        self.child: Child | None = None
        self.protocol_version: str | None = None
        self.get_stream = Stream(GET_STREAM_ID, self._congestion)
        self._request_timeout = request_timeout
        self._violation_limit = violation_limit
        self._on_close = on_close
        self._on_violation = on_violation
        self._max_in_flight = max_in_flight
        self._pending: dict[int, Pending] = {}
        # Client id → the gateway id pending under it (a list when one client id is in flight twice).
        self._by_client: dict[RequestId, int | list[int]] = {}
        self._intercepted: dict[int, Interceptor] = {}  # by gateway id, for screened requests only
        self._asked: dict[str, asyncio.Future[JsonObject]] = {}  # the gateway's own requests
        self._continued: dict[int, Continuation] = {}  # by gateway id, for screened requests only
        # The gateway's own requests to the client (by their ids), whose responses it POSTs.
        self._client_asks: dict[RequestId, asyncio.Future[JsonObject]] = {}
        # Sees every request and notification of the child: one slot, the tool policy's (it sets it).
        self.interceptor: Interceptor | None = None
        # Takes the child's requests to the client instead of a stream, when the clients it serves
        # cannot be sent requests (those of 2026-07-28); True when it took one.
        self.on_request: Callable[[Message], bool] | None = None
        # The `_meta` every request of the gateway's own carries (a modern child's envelope).
        self.ask_meta: JsonObject | None = None
        # Takes what the child says that belongs to no request, instead of the standalone stream,
        # when the clients it serves have none (those of 2026-07-28: their listen streams do).
        self.on_unrelated: Callable[[Message], None] | None = None
        # Told once, when routing ends (the child exited, or the session was closed).
        self.on_closed: Callable[[], None] | None = None
        self._progress: dict[object, Exchange] = {}
        self._exchanges: dict[int, Exchange] = {}
        self._open = 0  # exchanges still waiting for a response
        self._next_stream = GET_STREAM_ID + 1
        self._congested = 0
        self.violations = 0
        self.closed = False

    @property
    def in_flight(self) -> bool:
        return bool(self._pending)

    @property
    def pending(self) -> int:
        """How many requests are waiting for the child's answer."""
        return len(self._pending)

    @property
    def output_paused(self) -> bool:
        """Whether the child's stdout is paused because a consumer is not keeping up."""
        return self._congested > 0

    # --- client → child ----------------------------------------------------------------------

    def submit(
        self,
        messages: list[Message],
        *,
        raw: bytes | None = None,
        is_batch: bool = False,
        streamable: bool = True,
        screening: Screening | None = None,
    ) -> Exchange | None:
        """Send a POST's messages to the child; returns the exchange when it holds requests.

        `raw` is the POST body when it is exactly one message: forwarded unchanged when no id
        needs rewriting and it is already one line. A policy's `screening` names the requests
        answered here with (code, message) and never sent, and those whose response its
        interceptor sees before it is delivered.
        """
        child = self.child
        if child is None or self.closed:
            raise ChildGone("the session has ended")
        refused = intercepted = answered = continued = None
        if screening is not None:
            refused, intercepted = screening.refused, screening.intercepted
            answered, continued = screening.answered or None, screening.continued or None
        requests = sum(1 for message in messages if message.kind is Kind.REQUEST)
        if requests and len(self._pending) + requests > self._max_in_flight:
            raise Overloaded(f"the session already has {len(self._pending)} requests in flight")
        exchange: Exchange | None = None
        lines: list[bytes] = []
        sent: list[tuple[int, RequestId | None, int]] = []  # (gateway id, client id, index) to register
        answers: list[tuple[int, RequestId | None, int, str]] | None = None  # refusals, allocated only for them
        results: list[tuple[int, RequestId | None, JsonObject]] | None = None  # answered here
        for index, message in enumerate(messages):
            body = message.body
            if message.kind is Kind.REQUEST:
                if exchange is None:
                    exchange = Exchange(
                        self._next_stream,
                        self,
                        is_batch=is_batch,
                        streamable=streamable,
                        initialize=message.method == "initialize",
                    )
                    self._next_stream += 1
                exchange.waiting += 1
                gateway_id = self._new_id()  # refused requests get one too: it names their outcome
                exchange.gateway_ids.append(gateway_id)
                exchange.client_ids.append(message.id)
                if refused is not None and index in refused:
                    answers = answers or []
                    answers.append((gateway_id, message.id, *refused[index]))
                    continue
                if answered is not None and index in answered:
                    results = results or []
                    results.append((gateway_id, message.id, answered[index]))
                    continue
                spliced = jsonrpc.replace_id(raw, message.id, gateway_id) if raw is not None else None
                if spliced is None:
                    body["id"] = gateway_id
                    spliced = jsonrpc.encode(body)
                    body["id"] = message.id
                lines.append(spliced)
                sent.append((gateway_id, message.id, index))
            elif message.kind is Kind.RESPONSE and self._client_asks and message.id in self._client_asks:
                waiter = self._client_asks.pop(message.id)
                if not waiter.done():
                    waiter.set_result(body)
            elif message.kind is Kind.NOTIFICATION and message.method == "notifications/cancelled":
                lines.extend(self._rewrite_cancellation(message))
            elif raw is not None and b"\n" not in raw and b"\r" not in raw:
                lines.append(raw)
            else:
                lines.append(jsonrpc.encode(body))
        # Everything is encoded: only now does any pending state exist.
        if exchange is not None:
            for gateway_id, client_id, index in sent:
                self._register(gateway_id, exchange, client_id)
                if intercepted is not None and index in intercepted:
                    self._intercepted[gateway_id] = intercepted[index]
                if continued is not None and index in continued:
                    self._continued[gateway_id] = continued[index]
                token = _progress_token(messages[index])
                if token is not None:
                    self._progress[token] = exchange
                    exchange.tokens.append(token)
        try:
            for line in lines:
                child.send(line)
        except ChildGone:
            if exchange is not None:  # nothing will answer these: forget them
                for gateway_id, _, _ in sent:
                    self._take(gateway_id)
                for token in exchange.tokens:
                    self._progress.pop(token, None)
            raise
        if exchange is not None:
            self._exchanges[exchange.id] = exchange
            self._open += 1
            loop = asyncio.get_running_loop()
            exchange.deadline = loop.time() + self._request_timeout
            exchange.timer = loop.call_at(exchange.deadline, self._check_deadline, exchange)
            for gateway_id, client_id, code, text in answers or ():
                self._answer_error((exchange, client_id), gateway_id, code, text, "denied")
            for gateway_id, client_id, result in results or ():
                payload = jsonrpc.encode({"jsonrpc": "2.0", "id": client_id, "result": result})
                self._deliver_response(exchange, gateway_id, payload, "ok")
        return exchange

    def _new_id(self) -> int:
        while True:
            gateway_id = secrets.randbits(GATEWAY_ID_BITS)
            if gateway_id not in self._pending:
                return gateway_id

    def _register(self, gateway_id: int, exchange: Exchange, client_id: RequestId | None) -> None:
        self._pending[gateway_id] = (exchange, client_id)
        if client_id is None:
            return
        held = self._by_client.get(client_id)
        if held is None:
            self._by_client[client_id] = gateway_id
        elif isinstance(held, list):
            held.append(gateway_id)
        else:
            self._by_client[client_id] = [held, gateway_id]

    def _take(self, gateway_id: int) -> Pending | None:
        """Remove a pending request (and its interceptor); None when it is not pending."""
        entry = self._pending.pop(gateway_id, None)
        if entry is None:
            return None
        if self._intercepted:
            self._intercepted.pop(gateway_id, None)
        if self._continued:
            self._continued.pop(gateway_id, None)
        client_id = entry[1]
        if client_id is not None:
            held = self._by_client.get(client_id)
            if isinstance(held, list):
                with contextlib.suppress(ValueError):
                    held.remove(gateway_id)
                if len(held) == 1:
                    self._by_client[client_id] = held[0]
            elif held == gateway_id:
                del self._by_client[client_id]
        return entry

    async def ask(self, method: str, params: JsonObject) -> JsonObject:
        """Send the gateway's own request to the child; its response (`result` or `error`).

        No client sees the request or its response. The caller bounds the wait: when it gives
        up (a timeout or a cancellation), the child is sent `notifications/cancelled`. Raises
        `ChildGone` when the child exits first, `StdinStalled` when it does not read.
        """
        child = self.child
        if child is None or self.closed:
            raise ChildGone("the session has ended")
        gateway_id = ASK_ID_PREFIX + secrets.token_urlsafe(12)
        if self.ask_meta is not None:
            meta = params.get("_meta")
            params = {**params, "_meta": {**(meta if isinstance(meta, dict) else {}), **self.ask_meta}}
        answer: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
        self._asked[gateway_id] = answer
        try:
            child.send(jsonrpc.encode({"jsonrpc": "2.0", "id": gateway_id, "method": method, "params": params}))
            await child.drain()
            return await answer
        except asyncio.CancelledError:
            if self._asked.pop(gateway_id, None) is not None and not self.closed:
                cancel = jsonrpc.notification(
                    "notifications/cancelled", {"requestId": gateway_id, "reason": "The gateway stopped waiting"}
                )
                with contextlib.suppress(ChildGone):
                    child.send(jsonrpc.encode(cancel))
            raise
        finally:
            self._asked.pop(gateway_id, None)

    def _rewrite_cancellation(self, message: Message) -> list[bytes]:
        target = message.params.get("requestId")
        if not jsonrpc.is_request_id(target):
            return []
        held = self._by_client.get(target)
        if held is None:
            return []  # nothing in flight under that id: the request already finished
        lines = []
        for gateway_id in held if isinstance(held, list) else (held,):
            params = dict(message.params, requestId=gateway_id)
            lines.append(jsonrpc.encode(jsonrpc.notification("notifications/cancelled", params)))
        return lines

    async def drain(self) -> None:
        if self.child is not None:
            await self.child.drain()

    def release(self, exchange: Exchange, *, streamed: bool) -> None:
        """The HTTP response that consumed `exchange` has ended (`streamed`: it was SSE)."""
        if exchange.finished and not exchange.has_pending and not streamed:
            self._exchanges.pop(exchange.id, None)  # a JSON answer is never resumed
            return
        if exchange.attached:
            exchange.detach()
        resumable = [ex for ex in self._exchanges.values() if ex.finished and not ex.attached]
        for stale in resumable[: max(0, len(resumable) - MAX_RESUMABLE_EXCHANGES)]:
            self._exchanges.pop(stale.id, None)

    def abandon(self, exchange: Exchange, reason: str) -> None:
        """The client of `exchange` went away before its answers came, which for a 2026-07-28
        request is its cancellation: what is still pending is cancelled at the child, and its
        answers, if they come, go nowhere."""
        if exchange.finished:
            return
        child = self.child
        for gateway_id in exchange.gateway_ids:
            if self._take(gateway_id) is None:
                continue
            if child is not None and not self.closed:
                cancel = jsonrpc.notification("notifications/cancelled", {"requestId": gateway_id, "reason": reason})
                with contextlib.suppress(ChildGone):
                    child.send(jsonrpc.encode(cancel))
        exchange.waiting = 0
        exchange.finish()
        self._complete(exchange)

    def end_round(self, exchange: Exchange, result: JsonObject) -> None:
        """Answer the HTTP request of `exchange` (one request, still running on the child) with
        `result`, and park the call until a retry takes it over (`resume`)."""
        gateway_id, client_id = exchange.gateway_ids[0], exchange.client_ids[0]
        payload = jsonrpc.encode({"jsonrpc": "2.0", "id": client_id, "result": result})
        exchange.outcomes[gateway_id] = ("input_required", len(payload), asyncio.get_running_loop().time())
        exchange.parked = True
        exchange.round_over = True
        exchange.rounds += 1
        exchange.push(payload, response=True)

    def resume(self, exchange: Exchange, client_id: RequestId) -> None:
        """A retry of a parked call takes it over: the call is answered under `client_id` now."""
        gateway_id = exchange.gateway_ids[0]
        interceptor = self._intercepted.get(gateway_id) if self._intercepted else None
        if self._take(gateway_id) is not None:
            self._register(gateway_id, exchange, client_id)
            if interceptor is not None:
                self._intercepted[gateway_id] = interceptor
        exchange.client_ids[0] = client_id
        exchange.parked = exchange.round_over = False
        exchange.outcomes.pop(gateway_id, None)
        exchange.started = asyncio.get_running_loop().time()
        exchange.deadline = exchange.started + self._request_timeout
        held, exchange.held = exchange.held, []
        for message in held:
            self._route_response(message, None)

    def reply(
        self, child_id: RequestId, *, result: JsonObject | None = None, error: tuple[int, str] | None = None
    ) -> None:
        """Answer a request the child sent (with `result`, else `error`)."""
        child = self.child
        if child is None or self.closed:
            return
        if error is not None:
            answer = jsonrpc.error_response(child_id, *error)
        else:
            answer = {"jsonrpc": "2.0", "id": child_id, "result": result if result is not None else {}}
        with contextlib.suppress(ChildGone):  # its exit fails everything anyway
            child.send(jsonrpc.encode(answer))

    async def ask_client(self, exchange: Exchange, method: str, params: JsonObject) -> JsonObject:
        """Send the gateway's own request to the client of `exchange` (on its stream when it can
        carry one, else the session's GET stream); the client's response (`result` or `error`)."""
        if self.closed:
            raise ChildGone("the session has ended")
        request_id = ASK_ID_PREFIX + "in-" + secrets.token_urlsafe(12)
        answer: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
        self._client_asks[request_id] = answer
        payload = jsonrpc.encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        stream = exchange if exchange.streamable and not exchange.finished else self.get_stream
        stream.push(payload)
        exchange.asking += 1
        try:
            return await answer
        finally:
            exchange.asking -= 1
            self._client_asks.pop(request_id, None)

    def retry(self, gateway_id: int, method: str, params: JsonObject) -> None:
        """Send a request again, taken over by its continuation, under a new gateway id: its
        answer goes to the same waiting client, under the client's own id."""
        continuation = self._continued.get(gateway_id)
        interceptor = self._intercepted.get(gateway_id)
        entry = self._take(gateway_id)
        child = self.child
        if entry is None or child is None or self.closed:
            return
        exchange, client_id = entry
        retried = self._new_id()
        self._register(retried, exchange, client_id)
        if continuation is not None:
            self._continued[retried] = continuation
        if interceptor is not None:
            self._intercepted[retried] = interceptor
        exchange.gateway_ids[exchange.gateway_ids.index(gateway_id)] = retried
        exchange.deadline = asyncio.get_running_loop().time() + self._request_timeout
        child.send(jsonrpc.encode({"jsonrpc": "2.0", "id": retried, "method": method, "params": params}))

    def fail(self, gateway_id: int, code: int, message: str) -> None:
        """Answer a pending request with an error instead of the child's answer."""
        entry = self._take(gateway_id)
        if entry is not None:
            self._answer_error(entry, gateway_id, code, message, "error")

    def forget(self, exchange: Exchange) -> None:
        """The HTTP response of a finished `exchange` that no one may resume has ended."""
        if exchange.attached:
            exchange.detach()
        self._exchanges.pop(exchange.id, None)

    def stream_for(self, stream_id: int) -> Stream | None:
        """The stream a `Last-Event-ID` names, if it is still held."""
        if stream_id == GET_STREAM_ID:
            return self.get_stream
        return self._exchanges.get(stream_id)

    # --- child → client (the ChildSink protocol) ---------------------------------------------

    def child_line(self, line: bytearray | bytes) -> None:
        try:
            value = jsonrpc.decode(line)
        except ValueError as exc:
            kind = "invalid_json" if isinstance(exc, jsonrpc.StrictJsonError) else "not_json"
            self._violation(kind, f"stdout line refused: {exc}", bytes(line[:VIOLATION_SAMPLE]))
            self._answer_unusable(_readable_id(line), "The MCP server's response is not valid JSON")
            return
        if isinstance(value, list):  # a 2025-03-26 server may answer with a batch: each item on its own
            for item in value:
                self._route_safely(item, None, line)
        else:
            self._route_safely(value, line, line)

    def _route_safely(self, value: object, line: bytearray | bytes | None, sample: bytearray | bytes) -> None:
        try:
            self._route(value, line)
        except Exception:  # one bad message must never take the pipe reader, or the lines after it, along
            log.exception("stdout message could not be routed", extra={"session": self.label})
            self._violation("unroutable", "stdout message could not be routed", bytes(sample[:VIOLATION_SAMPLE]))

    def child_oversize(self, size: int, head: bytes) -> None:
        self._violation("oversize", f"stdout line of {size} bytes exceeds the message limit", head[:VIOLATION_SAMPLE])
        message = f"The MCP server's response ({size} bytes) exceeds the gateway's message size limit"
        self._answer_unusable(jsonrpc.leading_id(head), message, outcome="oversize")

    def _answer_unusable(self, gateway_id: RequestId | None, message: str, outcome: Outcome = "invalid") -> None:
        """The child's answer to `gateway_id` came but cannot be used: its waiter gets an error."""
        if type(gateway_id) is str:
            asked = self._asked.pop(gateway_id, None)
            if asked is not None and not asked.done():
                asked.set_result(jsonrpc.error_response(gateway_id, jsonrpc.INTERNAL_ERROR, message))
            return
        if type(gateway_id) is not int:
            return
        entry = self._take(gateway_id)
        if entry is not None:
            self._answer_error(entry, gateway_id, jsonrpc.INTERNAL_ERROR, message, outcome)

    def child_exited(self, returncode: int | None) -> None:
        if self.child is not None and self.child.output_closed_early:
            reason = "the MCP server closed its output"
        elif returncode is None:
            reason = "the MCP server stopped"
        elif returncode < 0:
            try:
                reason = f"the MCP server was killed by {signal.Signals(-returncode).name}"
            except ValueError:
                reason = f"the MCP server was killed by signal {-returncode}"
        else:
            reason = f"the MCP server exited with code {returncode}"
        self._fail_all(reason)
        if not self.closed:
            self.closed = True
            self._on_close("child_exit")

    def _route(self, value: object, line: bytearray | bytes | None) -> None:
        try:
            message = jsonrpc.classify(value)
        except jsonrpc.InvalidMessage as exc:
            self._violation("not_jsonrpc", f"stdout message is not JSON-RPC: {exc}", None)
            msg_id = value.get("id") if isinstance(value, dict) and "method" not in value else None
            if jsonrpc.is_request_id(msg_id):  # meant as an answer: its request gets an error now
                self._answer_unusable(msg_id, "The MCP server's response is not valid JSON-RPC")
            return
        if message.kind is Kind.RESPONSE:
            self._route_response(message, line)
            return
        if message.method == "notifications/cancelled" and self._asked:
            # The child ends a request of the gateway's own this way (a listen it no longer holds).
            target = message.params.get("requestId")
            asked = self._asked.pop(target, None) if isinstance(target, str) else None
            if asked is not None:
                if not asked.done():
                    asked.set_result(
                        jsonrpc.error_response(target, jsonrpc.REQUEST_CANCELLED, "Cancelled by the server")
                    )
                return
        if self.interceptor is not None and self.interceptor.intercept(message):
            line = None  # changed: encoded anew
        payload = _forwardable(line) or jsonrpc.encode(message.body)
        if message.method == "notifications/progress":
            owner = self._progress.get(message.params.get("progressToken"))
            if owner is not None and owner.streamable and not owner.finished:
                owner.deadline = asyncio.get_running_loop().time() + self._request_timeout
                owner.push(payload)
                return
        elif message.kind is Kind.REQUEST and self.on_request is not None and self.on_request(message):
            return
        elif message.kind is Kind.REQUEST or message.method == "notifications/message":
            related = self._sole_open_exchange()
            if related is not None:
                if not related.modern or translate.log_wanted(related.log_level, message.params):
                    related.push(payload)
                return
        if self.on_unrelated is not None:
            self.on_unrelated(message)
            return
        self.get_stream.push(payload)

    def _route_response(self, message: Message, line: bytearray | bytes | None) -> None:
        gateway_id = message.id
        if type(gateway_id) is not int:
            asked = self._asked.pop(gateway_id, None) if type(gateway_id) is str and self._asked else None
            if asked is not None and not asked.done():
                asked.set_result(message.body)
            elif asked is None:
                log.debug("response to no request in flight (id %r)", gateway_id, extra={"session": self.label})
            return
        continuation = self._continued.get(gateway_id) if self._continued else None
        if continuation is not None:
            owner = self._pending.get(gateway_id)
            if owner is not None and continuation.resolve(message, gateway_id, owner[0]):
                return  # taken over: it stays pending until retried or failed
        held = self._pending.get(gateway_id)
        if held is not None and held[0].parked:
            if not held[0].held:  # for the retry, which answers it under its own id
                held[0].held.append(message)
            return  # (a second answer to one request is nobody's)
        interceptor = self._intercepted.get(gateway_id) if self._intercepted else None
        entry = self._take(gateway_id)
        if entry is None:
            log.debug("response to no request in flight (id %r)", gateway_id, extra={"session": self.label})
            return
        exchange, client_id = entry
        try:
            if exchange.initialize:
                self._record_version(message)
            if interceptor is not None and interceptor.intercept(message):
                line = None  # changed: encoded anew below
            payload = jsonrpc.replace_id(line, gateway_id, client_id) if line is not None else None
            if payload is None:
                message.body["id"] = client_id
                payload = jsonrpc.encode(message.body)
        except Exception:  # taken from pending above: it must still be answered
            log.exception("the MCP server's response could not be forwarded", extra={"session": self.label})
            self._violation("unroutable", "a response could not be forwarded", None)
            self._answer_error(
                entry, gateway_id, jsonrpc.INTERNAL_ERROR, "The MCP server's response is unusable", "invalid"
            )
            return
        self._deliver_response(exchange, gateway_id, payload, "error" if "error" in message.body else "ok")

    def _answer_error(self, entry: Pending, gateway_id: int, code: int, message: str, outcome: Outcome) -> None:
        """Answer a request the child will not answer (any more) with a JSON-RPC error."""
        exchange, client_id = entry
        payload = jsonrpc.encode(jsonrpc.error_response(client_id, code, message))
        self._deliver_response(exchange, gateway_id, payload, outcome)

    def _deliver_response(self, exchange: Exchange, gateway_id: int, payload: bytes, outcome: Outcome) -> None:
        exchange.outcomes[gateway_id] = (outcome, len(payload), asyncio.get_running_loop().time())
        exchange.waiting -= 1
        final = exchange.waiting == 0
        exchange.push(payload, response=True, final=final)
        if final:
            self._complete(exchange)

    def _complete(self, exchange: Exchange) -> None:
        self._open -= 1
        if exchange.timer is not None:
            exchange.timer.cancel()
            exchange.timer = None
        for token in exchange.tokens:
            if self._progress.get(token) is exchange:
                del self._progress[token]

    def _sole_open_exchange(self) -> Exchange | None:
        if self._open != 1:
            return None
        for exchange in self._exchanges.values():
            if not exchange.finished:
                return exchange if exchange.streamable and not exchange.initialize else None
        return None

    def _record_version(self, message: Message) -> None:
        result = message.body.get("result")
        if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
            self.protocol_version = result["protocolVersion"]

    # --- deadlines, violations, shutdown -----------------------------------------------------

    def _check_deadline(self, exchange: Exchange) -> None:
        loop = asyncio.get_running_loop()
        if exchange.finished:
            return
        if loop.time() < exchange.deadline:  # progress moved the deadline
            exchange.timer = loop.call_at(exchange.deadline, self._check_deadline, exchange)
            return
        if exchange.parked or exchange.asking:  # waiting for its client, which is bounded elsewhere
            exchange.deadline = loop.time() + self._request_timeout
            exchange.timer = loop.call_at(exchange.deadline, self._check_deadline, exchange)
            return
        exchange.timer = None
        message = f"Request timed out: no answer from the MCP server in {self._request_timeout:g} s"
        for gateway_id, client_id in zip(exchange.gateway_ids, exchange.client_ids, strict=True):
            entry = self._take(gateway_id)
            if entry is None:
                if gateway_id not in exchange.outcomes:  # lost on the way: the deadline still answers it
                    self._answer_error((exchange, client_id), gateway_id, jsonrpc.REQUEST_TIMEOUT, message, "timeout")
                continue
            # MCP forbids cancelling initialize; that session is discarded instead.
            if self.child is not None and not exchange.initialize:
                cancel = jsonrpc.notification("notifications/cancelled", {"requestId": gateway_id, "reason": message})
                with contextlib.suppress(ChildGone):  # a child that stopped reading is past cancelling
                    self.child.send(jsonrpc.encode(cancel))
            self._answer_error(entry, gateway_id, jsonrpc.REQUEST_TIMEOUT, message, "timeout")

    def _violation(self, kind: str, what: str, sample: bytes | None) -> None:
        self.violations += 1
        if self._on_violation is not None:
            self._on_violation(kind, sample.decode("utf-8", "replace") if sample else None)
        log.warning(
            "protocol violation by the MCP server: %s (%d of %d allowed)%s",
            what,
            self.violations,
            self._violation_limit,
            f"; starts {sample!r}" if sample else "",
            extra={"session": self.label},
        )
        if self.violations >= self._violation_limit and not self.closed:
            self.close("violation")
            self._on_close("violation")

    def _fail_all(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        self._by_client.clear()
        self._intercepted.clear()
        asked, self._asked = self._asked, {}
        asked_client, self._client_asks = self._client_asks, {}
        for answer in [*asked.values(), *asked_client.values()]:
            if not answer.done():
                answer.set_exception(ChildGone(reason))
        self._continued.clear()
        for gateway_id, entry in pending.items():
            self._answer_error(entry, gateway_id, jsonrpc.CONNECTION_CLOSED, f"Session ended: {reason}", "closed")
        self.get_stream.finish()
        closed, self.on_closed = self.on_closed, None
        if closed is not None:
            closed()

    def close(self, reason: str) -> None:
        """End routing: everything in flight is answered with an error naming `reason`."""
        if not self.closed:
            self.closed = True
            self._fail_all(f"the session was closed ({reason})")

    def _congestion(self, stream: Stream, congested: bool) -> None:
        child = self.child
        self._congested += 1 if congested else -1
        if child is None:
            return
        if congested and self._congested == 1:
            child.pause_output()
        elif not congested and self._congested == 0:
            child.resume_output()


def _progress_token(message: Message) -> object:
    meta = message.params.get("_meta")
    if isinstance(meta, dict):
        token = meta.get("progressToken")
        if isinstance(token, str | int) and not isinstance(token, bool):
            return token
    return None


def _readable_id(line: bytearray | bytes) -> RequestId | None:
    """The id of a line the strict parser refused, when a lenient reading can still find it: so
    that the request it answers gets an error now instead of waiting for its deadline."""
    found = jsonrpc.leading_id(line)
    if found is not None:
        return found
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    msg_id = value.get("id") if isinstance(value, dict) else None
    return msg_id if jsonrpc.is_request_id(msg_id) else None


def _forwardable(line: bytearray | bytes | None) -> bytes | None:
    """The child's own bytes, when they can be forwarded as one SSE data line unchanged."""
    if line is None or b"\r" in line:
        return None
    return bytes(line) if isinstance(line, bytearray) else line
