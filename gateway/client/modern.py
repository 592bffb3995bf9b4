"""The bridge's modern mode: a handshake-era stdio client's session with a remote server that
speaks only 2026-07-28, driving the era facade (`gateway.eras.facade`) over HTTP.

The bridge enters it when the server refuses the client's `initialize` and its `server/discover`
(`discover`) names 2026-07-28; the client's `initialize` is then answered from the server's
`DiscoverResult`. From then on, `ModernRemote`:
- answers here what 2026-07-28 removed (`ping`, `logging/setLevel`, `resources/subscribe` and
  `resources/unsubscribe`), and POSTs every other request with the envelope and the routing
  headers (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`) and no session;
- writes the notifications of a request's stream (progress, log messages) to stdout as they
  come, then its result, shaped for the handshake era, under the client's id;
- turns a result `input_required` into requests to the client (with ids of the bridge's own),
  and the client's answers into a retry of the same request, under a new id;
- closes a request's response stream when the client cancels it: that is the cancellation of
  2026-07-28;
- holds a `subscriptions/listen` open on the server while the facade's filter asks for anything
  (list changes, updates of the subscribed resources), and writes what it carries to stdout.

Invariants:
- Every client request gets exactly one answer: the server's result or error, or an error that
  says why there is none. The client has `INPUT_TIMEOUT` for each answer it owes the server, and
  one request is asked about at most `MAX_ROUNDS` times.
- The listen held asks for what the facade's filter says now: a change of subscription is
  answered once the listen carrying it is acknowledged (or has failed, or `LISTEN_ACK_TIMEOUT`
  passed), so the client's next request never overtakes it. The listen reconnects with a
  backoff when it drops and is cancelled with the bridge.
- Failures of HTTP itself (the server unreachable, an HTTP error) are the bridge's: raised as
  the exceptions its `post` and `failure` give, and answered by the bridge like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import ClientResponse, ClientSession

from gateway import jsonrpc
from gateway._version import __version__
from gateway.client.sse import SseDecoder
from gateway.eras.envelope import (
    METHOD_HEADER,
    MODERN_VERSION,
    NAME_HEADER,
    NAMED_BY,
    VERSION_HEADER,
    encode_header_value,
)
from gateway.eras.facade import ACKNOWLEDGED, Facade, InputNeeded
from gateway.eras.translate import discover_request, modern_discovery
from gateway.jsonrpc import JsonObject, Kind, Message, RequestId

if TYPE_CHECKING:
    from gateway.client.connect import LineWriter

log = logging.getLogger("gateway.bridge")

# One POST with the bridge's connection retries and its own headers: (body, method, the routing
# headers) → the response.
Post = Callable[[bytes, str, Mapping[str, str]], AbstractAsyncContextManager[ClientResponse]]
# The exception an HTTP error answer (status 300 and up) ends a client request with.
HttpFailure = Callable[[ClientResponse], Awaitable[Exception]]

# The probe is one small answer from a server that is up (it just refused `initialize`); the
# SDK clients give it the same bound. Past it the client gets the server's refusal.
DISCOVER_TIMEOUT: Final = 10.0
# A person may be answering a form (elicitation) or a model a prompt (sampling): minutes, not
# hours. Past this the client's request is answered with an error and the server holds nothing
# (a 2026-07-28 server keeps no state between rounds but the requestState it handed out).
INPUT_TIMEOUT: Final = 300.0
# Rounds of one request the server may ask the client for input before it is refused: a server
# that keeps asking would otherwise hold the client's request forever (the SDK clients stop at 10).
MAX_ROUNDS: Final = 10
# A round that asks nothing (only a requestState) is retried after this long, doubling to the cap:
# the server is waiting for something of its own, and must not be asked again in a tight loop.
STATE_ONLY_DELAY: Final = 0.05
STATE_ONLY_DELAY_MAX: Final = 0.25
# A server acknowledges a listen as the first message of its stream; a subscription's answer
# waits this long for it at most (then the client goes on, and the listen keeps trying).
LISTEN_ACK_TIMEOUT: Final = 10.0
# A listen that drops is opened again: first after this long, doubling after every failure up to
# the cap, back to the start once one is acknowledged (as the bridge's standalone GET stream).
LISTEN_RETRY_INITIAL: Final = 0.5
LISTEN_RETRY_MAX: Final = 30.0
# Notifications of a request's stream written to stdout as they are (the others are the facade's).
RELAYED_AS_THEY_ARE: Final = frozenset({"notifications/progress", "notifications/message"})
SUBSCRIPTION_METHODS: Final = frozenset({"resources/subscribe", "resources/unsubscribe"})
# Who asks `server/discover` when the client's `initialize` named nobody.
BRIDGE_INFO: Final[JsonObject] = {"name": "mcp-gateway-connect", "version": __version__}
EVENT_STREAM: Final = "text/event-stream"


class Unanswered(Exception):
    """A client request the server's answers cannot complete; `error` is its JSON-RPC error (the
    server's own, when it gave one)."""

    def __init__(self, code: int, message: str, error: JsonObject | None = None) -> None:
        super().__init__(message)
        self.error: JsonObject = error if error is not None else {"code": code, "message": message}


def routing_headers(method: str, params: JsonObject) -> dict[str, str]:
    """The headers of a 2026-07-28 POST: the version, the method, and the name it names (if any)."""
    headers = {VERSION_HEADER: MODERN_VERSION, METHOD_HEADER: method}
    named_by = NAMED_BY.get(method)
    name = params.get(named_by) if named_by is not None else None
    if isinstance(name, str):
        headers[NAME_HEADER] = encode_header_value(name)
    return headers


async def discover(post: Post, limit: int, client_info: JsonObject | None) -> JsonObject | None:
    """The server's `DiscoverResult` when it speaks 2026-07-28; None for any other answer (an
    HTTP error, a JSON-RPC error, no answer within `DISCOVER_TIMEOUT`, other versions only).
    A server out of reach is the bridge's failure, raised by `post`."""
    probe_id = f"mcp-gateway-discover-{secrets.token_hex(8)}"
    params = discover_request(client_info if client_info is not None else BRIDGE_INFO)
    raw = jsonrpc.encode({"jsonrpc": "2.0", "id": probe_id, "method": "server/discover", "params": params})
    try:
        async with (
            asyncio.timeout(DISCOVER_TIMEOUT),
            post(raw, "server/discover", routing_headers("server/discover", params)) as response,
        ):
            if response.status >= 300:
                return None
            answer = await _answer(response, probe_id, limit, None)
    except (Unanswered, TimeoutError, aiohttp.ClientError) as error:
        log.debug("server/discover: %s", error)
        return None
    return modern_discovery(answer)


Relay = Callable[[Message, bytes], Awaitable[None]]


async def _answer(response: ClientResponse, answer_id: RequestId, limit: int, relay: Relay | None) -> JsonObject:
    """The response to `answer_id` in a JSON or SSE body; the notifications before it to `relay`."""
    if response.status == 202 or response.content_type not in ("application/json", EVENT_STREAM):
        raise Unanswered(
            jsonrpc.CONNECTION_CLOSED, f"the MCP server answered HTTP {response.status} without a JSON-RPC response"
        )
    if response.content_type == "application/json":
        try:
            body = await _read_bounded(response, limit)
        except aiohttp.ClientError as error:
            raise Unanswered(jsonrpc.CONNECTION_CLOSED, f"reading the MCP server's answer failed: {error}") from None
        if body is None:
            raise Unanswered(jsonrpc.INTERNAL_ERROR, _too_large(limit))
        answer = await _take(body, answer_id, relay)
        if answer is None:
            raise Unanswered(jsonrpc.CONNECTION_CLOSED, "the MCP server's answer did not contain the response")
        return answer
    decoder = SseDecoder(limit)
    with contextlib.suppress(aiohttp.ClientPayloadError, ConnectionError):
        async for chunk in response.content.iter_any():
            for event in decoder.feed(chunk):
                if event.oversize:
                    if jsonrpc.leading_id(event.data) == answer_id:
                        raise Unanswered(jsonrpc.INTERNAL_ERROR, _too_large(limit))
                    log.warning("dropped %s", _too_large(limit))
                elif event.data and event.event_type in ("", "message"):
                    answer = await _take(event.data, answer_id, relay)
                    if answer is not None:
                        return answer
    # 2026-07-28 streams are not resumable: the request is lost with its stream.
    raise Unanswered(jsonrpc.CONNECTION_CLOSED, "the MCP server closed the stream before answering")


async def _take(data: bytes, answer_id: RequestId, relay: Relay | None) -> JsonObject | None:
    """The response to `answer_id` if `data` is it; a notification goes to `relay`."""
    try:
        message = jsonrpc.classify(jsonrpc.decode(data))
    except (ValueError, jsonrpc.InvalidMessage) as error:
        log.warning("dropped a message from the MCP server that is not JSON-RPC: %s", error)
        return None
    if message.kind is Kind.RESPONSE:
        if message.id == answer_id:
            return message.body
        log.debug("dropped a response to %r, which nobody asked", message.id)
    elif message.kind is Kind.NOTIFICATION:
        if relay is not None:
            await relay(message, data)
    else:  # 2026-07-28 has no requests from the server: it asks for input in its results
        log.warning("dropped a %s request from the MCP server", message.method)
    return None


async def _read_bounded(response: ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None when it is larger than `limit`."""
    if (response.content_length or 0) > limit:
        return None
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _too_large(limit: int) -> str:
    return f"a message from the MCP server is larger than --max-message-bytes ({limit} bytes)"


def _result(msg_id: RequestId | None, result: JsonObject) -> JsonObject:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


class ModernRemote:
    """One legacy stdio client ⇄ a remote server of 2026-07-28 only, through the facade."""

    def __init__(
        self,
        facade: Facade,
        out: LineWriter,
        *,
        http: ClientSession,
        url: str,
        headers: Mapping[str, str],
        post: Post,
        failure: HttpFailure,
        limit: int,
    ) -> None:
        self._facade = facade
        self._out = out
        self._http = http
        self._url = url
        self._headers = headers  # the bridge's own (Accept, Content-Type, the configured ones)
        self._post = post
        self._failure = failure
        self._limit = limit
        # Ids the bridge chooses (its POSTs, its requests to the client): unpredictable, and
        # never one the client chose, whose requests the bridge answers under their own ids.
        self._prefix = f"mcp-gateway-{secrets.token_hex(8)}-"
        self._ids = itertools.count(1)
        self._asked: dict[str, asyncio.Future[JsonObject]] = {}  # the client's answers awaited
        self._holds: asyncio.TaskGroup | None = None
        self._held: asyncio.Task[None] | None = None
        self._listening: JsonObject | None = None
        self._ready = asyncio.Event()  # the held listen was acknowledged, or failed
        self._ready.set()

    def _new_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    # --- the client's requests -----------------------------------------------------------------

    async def request(self, message: Message) -> JsonObject:
        """The response to one client request, under its id. Cancelling the call closes the
        request's stream (the server's cancellation)."""
        method = message.method or ""
        here = self._facade.answer_here(method, message.params)
        if here is not None:
            if method in SUBSCRIPTION_METHODS:
                await self.relisten()
            return _result(message.id, here)
        params = self._facade.request_params(message.params)
        delay = STATE_ONLY_DELAY
        try:
            for asked in itertools.count(1):
                shaped = self._facade.result(await self._round(method, params))
                if not isinstance(shaped, InputNeeded):
                    return _result(message.id, shaped)
                if asked > MAX_ROUNDS:
                    raise Unanswered(jsonrpc.INTERNAL_ERROR, "The MCP server kept asking for input")
                if shaped.requests:
                    answers = await self._ask(shaped)
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, STATE_ONLY_DELAY_MAX)
                    answers = {}
                params = self._facade.retry_params(params, answers, shaped.state)
        except Unanswered as unanswered:
            return {"jsonrpc": "2.0", "id": message.id, "error": unanswered.error}
        raise AssertionError("unreachable")

    async def _round(self, method: str, params: JsonObject) -> JsonObject:
        """POST the request once (a new id each time); its result, or `Unanswered`."""
        post_id = self._new_id()
        raw = jsonrpc.encode({"jsonrpc": "2.0", "id": post_id, "method": method, "params": params})
        async with self._post(raw, method, routing_headers(method, params)) as response:
            if response.status >= 300:
                raise await self._failure(response)
            try:
                answer = await _answer(response, post_id, self._limit, self._relay)
            except asyncio.CancelledError:
                response.close()  # the client cancelled: closing the stream tells the server
                raise
        result = answer.get("result")
        if isinstance(result, dict):
            return result
        error = answer.get("error")  # the answer was classified: an error is a valid one
        if isinstance(error, dict):
            raise Unanswered(error["code"], str(error["message"]), error)
        raise Unanswered(jsonrpc.INTERNAL_ERROR, "the MCP server answered with a result that is not an object")

    async def _relay(self, message: Message, data: bytes) -> None:
        """A notification of a request's stream, to stdout."""
        if message.method in RELAYED_AS_THEY_ARE and b"\n" not in data and b"\r" not in data:
            await self._out.write(data)
            return
        shaped = self._facade.notification(message.method or "", message.params)
        if shaped is not None:
            await self._out.write_message(shaped)

    # --- requests for input --------------------------------------------------------------------

    async def _ask(self, needed: InputNeeded) -> JsonObject:
        """The client's answers to what the server asks, one request at a time."""
        answers: JsonObject = {}
        for key, (method, params) in needed.requests.items():
            ask_id = self._new_id()
            future: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
            self._asked[ask_id] = future
            try:
                await self._out.write_message({"jsonrpc": "2.0", "id": ask_id, "method": method, "params": params})
                try:
                    async with asyncio.timeout(INPUT_TIMEOUT):
                        answer = await future
                except TimeoutError:
                    reason = "The client did not answer the server's request in time"
                    await self._out.write_message(
                        jsonrpc.notification("notifications/cancelled", {"requestId": ask_id, "reason": reason})
                    )
                    raise Unanswered(jsonrpc.REQUEST_TIMEOUT, reason) from None
            finally:
                del self._asked[ask_id]
            result = answer.get("result")
            if not isinstance(result, dict):
                error = answer.get("error")
                text = error.get("message") if isinstance(error, dict) else None
                raise Unanswered(jsonrpc.INTERNAL_ERROR, f"The client refused {method}: {text or 'no answer'}")
            answers[key] = result
        return answers

    def settle(self, msg_id: RequestId | None, answer: JsonObject) -> bool:
        """Hand the client's response to the request of the bridge's that waits for it; False
        when none does (an unknown id, or one answered already)."""
        future = self._asked.get(msg_id) if isinstance(msg_id, str) else None
        if future is None or future.done():
            return False
        future.set_result(answer)
        return True

    # --- the listen held on the server ---------------------------------------------------------

    async def listen(self) -> None:
        """Own the listen streams until cancelled (the bridge's shutdown): the first one opened
        now, each later one by `relisten`."""
        async with asyncio.TaskGroup() as holds:
            self._holds = holds
            try:
                self._hold_for(self._facade.listen_filter())
                await asyncio.Event().wait()  # no deadline: held for the life of the bridge
            finally:
                self._holds = None

    async def relisten(self) -> None:
        """Hold a listen asking for what the facade's filter says now; return once it is
        acknowledged (or failed, or `LISTEN_ACK_TIMEOUT` passed)."""
        ready = self._hold_for(self._facade.listen_filter())
        try:
            async with asyncio.timeout(LISTEN_ACK_TIMEOUT):
                await ready.wait()
        except TimeoutError:
            log.warning("the MCP server did not acknowledge subscriptions/listen in time")

    def _hold_for(self, wanted: JsonObject | None) -> asyncio.Event:
        """The event set once the listen asking for `wanted` is acknowledged (the one held
        already, if it asks for that)."""
        if wanted == self._listening and (self._held is not None or wanted is None):
            return self._ready
        if self._held is not None:
            self._held.cancel()  # its stream is closed: the server ends that listen
            self._held = None
        self._listening = wanted
        self._ready = asyncio.Event()
        if wanted is None or self._holds is None:
            self._ready.set()
        else:
            self._held = self._holds.create_task(self._hold(wanted, self._ready))
        return self._ready

    async def _hold(self, wanted: JsonObject, ready: asyncio.Event) -> None:
        """One listen, opened again whenever it drops."""
        delay = LISTEN_RETRY_INITIAL
        while True:
            listen_id = self._new_id()
            params = self._facade.request_params({"notifications": wanted})
            raw = jsonrpc.encode(
                {"jsonrpc": "2.0", "id": listen_id, "method": "subscriptions/listen", "params": params}
            )
            headers = {**self._headers, **routing_headers("subscriptions/listen", params)}
            try:
                async with self._http.post(self._url, data=raw, headers=headers, allow_redirects=False) as response:
                    if response.status == 200 and response.content_type == EVENT_STREAM:
                        if await self._relay_listen(response, listen_id, ready):
                            delay = LISTEN_RETRY_INITIAL
                    elif await self._refused(response):
                        return  # asked again, it would be refused again: until the filter changes
            except (aiohttp.ClientError, TimeoutError) as error:
                log.debug("listen stream failed: %s", str(error) or type(error).__name__)
            ready.set()
            log.debug("listen stream ended; reopening in %.2fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_RETRY_MAX)

    async def _refused(self, response: ClientResponse) -> bool:
        """Whether a listen's answer other than a stream refuses it (a 4xx, or a JSON-RPC error)."""
        body = await _read_bounded(response, self._limit) if response.content_type == "application/json" else None
        answer: object = None
        with contextlib.suppress(ValueError):
            answer = jsonrpc.decode(body) if body is not None else None
        error = answer.get("error") if isinstance(answer, dict) else None
        if error is not None or 400 <= response.status < 500:
            log.warning("the MCP server refused subscriptions/listen (HTTP %d): %s", response.status, error)
            return True
        return False

    async def _relay_listen(self, response: ClientResponse, listen_id: str, ready: asyncio.Event) -> bool:
        """Write a listen stream's notifications to stdout until it ends; whether it was acknowledged."""
        decoder = SseDecoder(self._limit)
        acknowledged = False
        with contextlib.suppress(aiohttp.ClientPayloadError, ConnectionError):
            async for chunk in response.content.iter_any():
                for event in decoder.feed(chunk):
                    if event.oversize:
                        log.warning("dropped %s", _too_large(self._limit))
                        continue
                    if not event.data or event.event_type not in ("", "message"):
                        continue
                    try:
                        message = jsonrpc.classify(jsonrpc.decode(event.data))
                    except (ValueError, jsonrpc.InvalidMessage) as error:
                        log.warning("dropped a message from the MCP server that is not JSON-RPC: %s", error)
                        continue
                    if message.kind is Kind.RESPONSE and message.id == listen_id:
                        return acknowledged  # the server ended the listen
                    if message.kind is not Kind.NOTIFICATION:
                        continue
                    if message.method == ACKNOWLEDGED:
                        acknowledged = True
                        ready.set()
                    shaped = self._facade.notification(message.method or "", message.params)
                    if shaped is not None:
                        await self._out.write_message(shaped)
        return acknowledged
