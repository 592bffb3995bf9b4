"""`mcp-gateway connect URL`: a stdio MCP server that is really a remote Streamable HTTP one.

For desktop clients that only launch stdio servers. Newline-delimited JSON-RPC read from stdin
is POSTed to URL (legacy era, protocol 2025-03-26 … 2025-11-25); every message the server sends
back (a JSON body, any number of SSE events on a POST's stream, or the standalone GET stream) is
written to stdout as one line. The bridge keeps the `Mcp-Session-Id` and the negotiated
`MCP-Protocol-Version`, re-initializes transparently when the server forgets the session (404),
and ends the session with DELETE when stdin ends or on SIGTERM/SIGINT.

A server of 2026-07-28 only refuses `initialize` (a JSON-RPC error, alone or in a 4xx); the
bridge then asks it `server/discover`, and when that names 2026-07-28 it translates as the
gateway does for such children, with the same facade (`gateway.eras.facade`, driven by
`gateway.client.modern`): `initialize` answered from the discovery, every request enveloped and
routed by its headers, `ping`/`logging/setLevel`/`resources/(un)subscribe` answered here,
requests for input (`input_required`) turned into requests to the client and retried with its
answers, cancellation by closing the request's stream, list changes and resource updates from a
`subscriptions/listen` held on the server. Any other answer to the probe relays the refusal.

Invariants:
- stdout carries JSON-RPC lines only, each written whole by one call under one lock; logs go to
  stderr. Every client request gets exactly one answer: the server's, or a JSON-RPC error that
  says why there is none (unless the client cancelled it).
- The bearer token comes from the environment, never from argv, and is never logged (its
  fingerprint may be).
- No message larger than `max_message_bytes` is held in memory, in either direction, and an
  oversized one never desynchronises a stream.
- Every task is owned by one TaskGroup and cancelled at shutdown; every wait on the network that
  can end has a deadline from a named constant (the exceptions are documented where they are).

Exit status: 0 after stdin EOF or a signal, 2 for invalid options (a missing variable included).
The bridge does not contact the server before the client's `initialize`: a desktop client
starts it at launch, maybe before the network or the server is up, and it shows an error
*answer* to `initialize` (which names the cause) far better than a server that exited.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import io
import itertools
import logging
import os
import re
import signal
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp import ClientResponse, ClientSession, ClientTimeout

from gateway import jsonrpc, logline
from gateway.client.modern import ModernRemote, discover
from gateway.client.sse import OVERSIZE_HEAD_BYTES, SseDecoder
from gateway.eras.facade import Facade
from gateway.framing import LineFramer
from gateway.jsonrpc import JsonObject, Kind, Message, RequestId
from gateway.logline import fingerprint

log = logging.getLogger("gateway.bridge")  # the name operators already filter on

EXIT_OK: Final = 0
EXIT_CONFIG: Final = 2

# The gateway's own default request body cap, so a message that fits one fits the other.
DEFAULT_MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
READ_CHUNK: Final = 64 * 1024
# Larger bodies are streamed from a file object: aiohttp writes raw bytes in one blocking step.
STREAMED_BODY_BYTES: Final = 512 * 1024

# Establishing a TCP (and TLS) connection: a reachable server does it in well under a second;
# past this the server is down or unreachable, and the client deserves an answer saying so.
CONNECT_TIMEOUT: Final = 10.0
# A notification or a response POSTed to the server is answered 202 as soon as it is accepted.
ACCEPT_TIMEOUT: Final = 30.0
# Replaying `initialize` after the session expired: the server spawns and initializes its MCP
# server again, which may include a cold start.
REINITIALIZE_TIMEOUT: Final = 60.0
# Ending the session at shutdown is a courtesy (servers also expire idle sessions): never let
# an unresponsive server hold the exit up for long.
DELETE_TIMEOUT: Final = 5.0
# After stdin ends, requests still in flight get this long to be answered (a client that closes
# stdin may still read stdout); MCP clients escalate to SIGTERM after about two seconds.
SHUTDOWN_GRACE: Final = 1.0
# Connection attempts that never reached the server are safe to repeat for any message.
CONNECT_ATTEMPTS: Final = 3
CONNECT_RETRY_DELAY: Final = 0.25  # doubled after each failed attempt
# The standalone GET stream reconnects after it drops: first after this long, doubling after
# every failure up to the cap, back to the start once a connection succeeds. A `retry:` field
# from the server takes precedence.
LISTEN_RETRY_INITIAL: Final = 0.5
LISTEN_RETRY_MAX: Final = 30.0
# A POST's event stream that ends before the response is resumed with GET + Last-Event-ID.
RESUME_ATTEMPTS: Final = 3
RESUME_RETRY_DELAY: Final = 0.5
# Client requests handled at once; past this, reading stdin waits (backpressure on the client).
MAX_IN_FLIGHT: Final = 256
# Server→client requests remembered until the client answers (to answer for it when its answer
# is too large); the oldest is forgotten first.
MAX_REMEMBERED_SERVER_REQUESTS: Final = 1024
# POSTs that are safe to send again after the connection broke mid-request: they change nothing.
IDEMPOTENT_METHODS: Final = frozenset(
    {
        "ping",
        "tools/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
        "prompts/get",
        "completion/complete",
    }
)

SESSION_HEADER: Final = "Mcp-Session-Id"
VERSION_HEADER: Final = "MCP-Protocol-Version"
LAST_EVENT_HEADER: Final = "Last-Event-ID"
ACCEPT_BOTH: Final = "application/json, text/event-stream"
# Headers the bridge sets itself; `--header` may not override them.
MANAGED_HEADERS: Final = frozenset(
    name.lower()
    for name in (SESSION_HEADER, VERSION_HEADER, LAST_EVENT_HEADER, "Accept", "Content-Type", "Content-Length", "Host")
)

_TOKEN_CHARS = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token (a header name)
_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_AUTH_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


# --- configuration -------------------------------------------------------------------------------


class ConfigError(ValueError):
    """Invalid options; `problems` lists every one of them."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclasses.dataclass(frozen=True)
class BridgeConfig:
    url: str
    headers: Mapping[str, str]
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    token_source: str | None = None  # the variable the token came from, for error messages


def expand(value: str, environ: Mapping[str, str]) -> str:
    """`value` with each `${NAME}` replaced by that environment variable; `KeyError` names a
    missing one, `ValueError` a malformed reference."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if not _VARIABLE_NAME.match(name):
            raise ValueError(f"${{{name}}} is not a variable reference")
        if name not in environ:
            raise KeyError(name)
        return environ[name]

    return _VARIABLE.sub(substitute, value)


def parse_header(spec: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """`Name: value` → (name, expanded value); `ValueError` with the reason when invalid."""
    name, colon, raw = spec.partition(":")
    name = name.strip()
    if not colon or not _TOKEN_CHARS.match(name):
        raise ValueError("expected 'Name: value' with a valid header name")
    if name.lower() in MANAGED_HEADERS:
        raise ValueError(f"{name} is set by the bridge itself")
    try:
        value = expand(raw.strip(), environ)
    except KeyError as missing:
        raise ValueError(f"environment variable {missing.args[0]} is not set") from None
    if any(char in value for char in "\r\n\0"):
        raise ValueError("header values may not contain CR, LF or NUL")
    return name, value


def build_config(
    url: str,
    header_specs: Sequence[str],
    bearer_env: str | None,
    max_message_bytes: int,
    environ: Mapping[str, str],
) -> BridgeConfig:
    """Validate every option at once; `ConfigError` lists all problems found."""
    problems: list[str] = []
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"URL must be an http:// or https:// URL with a host, got {url!r}")
    headers: dict[str, str] = {}
    for spec in header_specs:
        try:
            name, value = parse_header(spec, environ)
        except ValueError as error:
            problems.append(f"--header {spec.partition(':')[0].strip()!r}: {error}")
            continue
        headers[name] = value
    if bearer_env is not None:
        token = environ.get(bearer_env, "").strip()
        if not token:
            problems.append(f"--bearer-env: environment variable {bearer_env} is not set or empty")
        elif any(char in token for char in "\r\n\0 "):
            problems.append(f"--bearer-env: the token in {bearer_env} contains whitespace or control characters")
        elif any(name.lower() == "authorization" for name in headers):
            problems.append("--bearer-env and an Authorization --header are mutually exclusive")
        else:
            headers["Authorization"] = f"Bearer {token}"
    if max_message_bytes < 1024:
        problems.append("--max-message-bytes must be at least 1024")
    if problems:
        raise ConfigError(problems)
    return BridgeConfig(url=url, headers=headers, max_message_bytes=max_message_bytes, token_source=bearer_env)


# --- stdio ---------------------------------------------------------------------------------------


class StdoutClosed(Exception):
    """The client stopped reading our stdout: nobody is left to answer."""


class LineWriter:
    """Writes whole lines to stdout, one at a time: lines never interleave."""

    def __init__(self, writer: asyncio.StreamWriter | None, fallback: int) -> None:
        # stdout stays open until the process exits: the client reads it to its end.
        self._writer = writer  # None: stdout is a regular file, written with blocking writes
        self._fd = fallback
        self._lock = asyncio.Lock()

    async def write(self, line: bytes) -> None:
        async with self._lock:
            try:
                if self._writer is None:
                    os.write(self._fd, line + b"\n")
                    return
                self._writer.write(line + b"\n")
                await self._writer.drain()
            except (BrokenPipeError, ConnectionResetError) as error:
                raise StdoutClosed from error

    async def write_message(self, message: JsonObject) -> None:
        await self.write(jsonrpc.encode(message))


async def open_stdio() -> tuple[Callable[[], Awaitable[bytes]], LineWriter]:
    """A chunk reader for stdin and a line writer for stdout, non-blocking where the OS allows
    (pipes, sockets, terminals); regular files are read and written with plain calls."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK)
    read: Callable[[], Awaitable[bytes]]
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        read = functools.partial(reader.read, READ_CHUNK)
    except ValueError:  # a regular file: reads never block for long
        read = functools.partial(asyncio.to_thread, os.read, sys.stdin.fileno(), READ_CHUNK)
    try:
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
        writer: asyncio.StreamWriter | None = asyncio.StreamWriter(transport, protocol, None, loop)
    except ValueError:  # a regular file: written with plain blocking writes
        writer = None
    return read, LineWriter(writer, sys.stdout.fileno())


# --- failures ------------------------------------------------------------------------------------


class Failure(Exception):
    """A client request that got no usable answer; `error` becomes the JSON-RPC error object."""

    def __init__(self, message: str, code: int = jsonrpc.CONNECTION_CLOSED, error: JsonObject | None = None) -> None:
        super().__init__(message)
        self.error: JsonObject = error if error is not None else {"code": code, "message": message}


class Refused(Failure):
    """The server answered HTTP `status` with a JSON-RPC error in the body (`error` is it)."""

    def __init__(self, message: str, error: JsonObject, status: int) -> None:
        super().__init__(message, error=error)
        self.status = status


class SessionGone(Exception):
    """404 for a request that carried a session id: the server no longer knows the session."""

    def __init__(self, session_id: str) -> None:
        super().__init__("session not found")
        self.session_id = session_id


def _session_gone(response: ClientResponse) -> SessionGone | None:
    sent = response.request_info.headers.get(SESSION_HEADER)
    return SessionGone(sent) if response.status == 404 and sent is not None else None


@dataclasses.dataclass
class StreamOutcome:
    answer: JsonObject | None = None
    last_event_id: str | None = None
    retry_ms: int | None = None
    delivered: int = 0


def _same_id(left: object, right: object) -> bool:
    return left == right and type(left) is type(right)


def _challenge_details(header: str | None) -> str:
    if not header:
        return ""
    params = {key.lower(): quoted or bare for key, quoted, bare in _AUTH_PARAM.findall(header)}
    details = [params[key] for key in ("error", "error_description") if params.get(key)]
    return f" ({': '.join(details)})" if details else ""


# --- the bridge ----------------------------------------------------------------------------------


class Bridge:
    """One stdio client ⇄ one remote MCP session."""

    def __init__(self, config: BridgeConfig, http: ClientSession, out: LineWriter) -> None:
        self._config = config
        self._http = http
        self._out = out
        self._limit = config.max_message_bytes
        self._base_headers = {**config.headers, "Accept": ACCEPT_BOTH, "Content-Type": "application/json"}
        self.session_id: str | None = None
        self._version: str | None = None
        self._initialize: JsonObject | None = None  # the client's own, replayed on expiry
        self._generation = 0  # bumped on every (re-)initialize
        self._session_changed = asyncio.Condition()
        self._reinit_lock = asyncio.Lock()
        self._bridge_ids = itertools.count(1)
        self._tasks: asyncio.TaskGroup | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._in_flight: dict[RequestId, asyncio.Task[None]] = {}  # by the client's id, for cancellation
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._listener: asyncio.Task[None] | None = None
        self._server_requests: OrderedDict[tuple[type, RequestId], None] = OrderedDict()
        self._modern: ModernRemote | None = None  # a server of 2026-07-28 only, through the facade

    # -- the main loop ---------------------------------------------------------------------------

    async def run(self, read: Callable[[], Awaitable[bytes]], stop: asyncio.Event) -> None:
        """Serve until stdin ends or `stop` is set; then finish in-flight work briefly and end
        the session."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                reader = tasks.create_task(self._read_stdin(read, stop))
                await stop.wait()
                reader.cancel()
                if self._requests:
                    await asyncio.wait(set(self._requests), timeout=SHUTDOWN_GRACE)
                for task in list(self._requests):
                    task.cancel()
                if self._listener is not None:
                    self._listener.cancel()
        finally:
            self._tasks = None
            await self._end_session()

    async def _read_stdin(self, read: Callable[[], Awaitable[bytes]], stop: asyncio.Event) -> None:
        # (line, False) or (head of an oversized line, True), in arrival order.
        framed: list[tuple[bytes, bool]] = []
        framer = LineFramer(
            self._limit, lambda line: framed.append((bytes(line), False)), lambda _, head: framed.append((head, True))
        )
        try:
            while True:
                chunk = await read()
                if chunk:
                    framer.feed(chunk)
                else:
                    framer.close()
                for data, oversize in framed:
                    if oversize:
                        await self._reject_oversize(data)
                    else:
                        await self._handle_line(data)
                framed.clear()
                if not chunk:
                    log.info("stdin closed")
                    return
        except StdoutClosed:
            log.info("stdout closed")
        finally:
            stop.set()

    async def _reject_oversize(self, head: bytes) -> None:
        msg_id = jsonrpc.leading_id(head)
        reason = f"message larger than --max-message-bytes ({self._limit} bytes)"
        if self._modern is not None and self._modern.settle(
            msg_id, jsonrpc.error_response(msg_id, jsonrpc.INTERNAL_ERROR, reason)
        ):
            log.warning("the client's response to %r is too large; its request fails", msg_id)
            return
        if msg_id is not None and (type(msg_id), msg_id) in self._server_requests:
            del self._server_requests[type(msg_id), msg_id]
            # The client's answer to a server request: tell the server it will not come.
            log.warning("the client's response to %r is too large; answering the server with an error", msg_id)
            await self._post_quietly(jsonrpc.encode(jsonrpc.error_response(msg_id, jsonrpc.INTERNAL_ERROR, reason)))
            return
        log.warning("stdin: dropped a %s", reason)
        if msg_id is not None:
            await self._out.write_message(jsonrpc.error_response(msg_id, jsonrpc.INVALID_REQUEST, reason))

    async def _handle_line(self, line: bytes) -> None:
        try:
            value = jsonrpc.decode(line)
        except ValueError as error:
            await self._out.write_message(jsonrpc.error_response(None, jsonrpc.PARSE_ERROR, f"Parse error: {error}"))
            return
        if isinstance(value, list):  # a 2025-03-26 batch: each message travels on its own
            if not value:
                await self._out.write_message(jsonrpc.error_response(None, jsonrpc.INVALID_REQUEST, "Empty batch"))
            for item in value:
                await self._handle_value(item, jsonrpc.encode(item))
            return
        await self._handle_value(value, line)

    async def _handle_value(self, value: object, raw: bytes) -> None:
        try:
            message = jsonrpc.classify(value)
        except jsonrpc.InvalidMessage as error:
            msg_id = value.get("id") if isinstance(value, dict) else None
            answer_id = msg_id if jsonrpc.is_request_id(msg_id) else None
            await self._out.write_message(jsonrpc.error_response(answer_id, jsonrpc.INVALID_REQUEST, str(error)))
            return
        if message.kind is Kind.REQUEST:
            if message.method == "initialize":
                await self._send_initialize(message, raw)
            else:
                await self._start_request(message, raw)
        elif message.kind is Kind.NOTIFICATION:
            await self._send_notification(message, raw)
        elif self._modern is not None:
            if not self._modern.settle(message.id, message.body):
                log.debug("dropped the client's response to %r: nothing waits for it", message.id)
        else:
            if message.id is not None:
                self._server_requests.pop((type(message.id), message.id), None)
            await self._post_quietly(raw)

    # -- requests --------------------------------------------------------------------------------

    async def _start_request(self, message: Message, raw: bytes) -> None:
        if self._tasks is None or message.id is None:
            return  # shutting down: the reader is being cancelled
        await self._slots.acquire()
        task = self._tasks.create_task(self._request(message, raw))
        self._requests.add(task)
        self._in_flight[message.id] = task
        task.add_done_callback(lambda done: self._finished(message.id, done))

    def _finished(self, msg_id: RequestId | None, task: asyncio.Task[None]) -> None:
        self._slots.release()
        self._requests.discard(task)
        if msg_id is not None and self._in_flight.get(msg_id) is task:
            del self._in_flight[msg_id]

    async def _request(self, message: Message, raw: bytes) -> None:
        try:
            if self._modern is not None:
                await self._out.write_message(await self._modern.request(message))
                return
            try:
                await self._exchange(message, raw)
            except SessionGone as gone:
                await self._reinitialize(gone.session_id)
                try:
                    await self._exchange(message, raw)
                except SessionGone:
                    raise Failure("the server ended the MCP session again right after re-initializing") from None
        except Failure as failure:
            await self._out.write_message({"jsonrpc": "2.0", "id": message.id, "error": failure.error})
        except StdoutClosed:
            return
        except Exception as error:  # a bug must cost one request, not the whole bridge
            log.exception("request %r failed", message.method)
            await self._out.write_message(
                jsonrpc.error_response(message.id, jsonrpc.INTERNAL_ERROR, f"mcp-gateway connect: {error!r}")
            )

    async def _send_initialize(self, message: Message, raw: bytes) -> None:
        """Sent and answered before stdin is read further: nothing may overtake it. A session
        the client started before is ended first: the server need not keep it until it expires."""
        await self._end_session()
        self._leave_modern()
        self._initialize = dict(message.body)
        self.session_id = None
        self._version = None
        try:
            answer = await self._exchange(message, raw, relay_answer=False)
        except Refused as refused:  # a 4xx with a JSON-RPC error: perhaps a server of 2026-07-28 only
            if not (400 <= refused.status < 500 and await self._enter_modern(message)):
                await self._out.write_message({"jsonrpc": "2.0", "id": message.id, "error": refused.error})
            return
        except Failure as failure:
            await self._out.write_message({"jsonrpc": "2.0", "id": message.id, "error": failure.error})
            return
        if answer is None:  # pragma: no cover - _exchange returns the response to a request or raises
            return
        if "error" in answer and await self._enter_modern(message):
            return
        await self._out.write_message(answer)
        if "result" in answer:  # an error answer: no session
            self._adopt(answer)
            await self._announce_session()

    async def _enter_modern(self, message: Message) -> bool:
        """Whether the server, which refused `initialize`, speaks 2026-07-28: then the client's
        `initialize` is answered from its `server/discover` and the session is translated."""
        info = message.params.get("clientInfo")
        log.info("the MCP server refused initialize; asking server/discover")
        try:
            discovery = await discover(self._post_modern, self._limit, info if isinstance(info, dict) else None)
        except Failure as failure:
            log.info("server/discover failed: %s", failure)
            return False
        if discovery is None:
            log.info("the MCP server does not speak 2026-07-28 either")
            return False
        facade = Facade(discovery)
        result = facade.initialize(message.params)
        self.session_id = None  # 2026-07-28 has none (nor a DELETE to end one)
        self._modern = ModernRemote(
            facade,
            self._out,
            http=self._http,
            url=self._config.url,
            headers=self._headers(with_session=False),
            post=self._post_modern,
            failure=self._http_failure,
            limit=self._limit,
        )
        log.info(
            "the MCP server speaks 2026-07-28 only: translating (protocol %s for the client)",
            result["protocolVersion"],
            extra={"url": self._config.url},
        )
        await self._out.write_message({"jsonrpc": "2.0", "id": message.id, "result": result})
        if self._listener is not None:
            self._listener.cancel()
            self._listener = None
        if self._tasks is not None:
            self._listener = self._tasks.create_task(self._hold_listen(self._modern))
        return True

    def _leave_modern(self) -> None:
        """A new `initialize`: the translated session ends with its listen."""
        if self._modern is None:
            return
        self._modern = None
        if self._listener is not None:
            self._listener.cancel()
            self._listener = None

    async def _hold_listen(self, modern: ModernRemote) -> None:
        try:
            await modern.listen()
        except* StdoutClosed:
            log.info("stdout closed")

    def _post_modern(
        self, raw: bytes, method: str, headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[ClientResponse]:
        return self._post(raw, method=method, sends_session=False, headers=headers)

    def _adopt(self, answer: JsonObject | None) -> None:
        result = answer.get("result") if answer is not None else None
        if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
            self._version = result["protocolVersion"]
        self._generation += 1
        log.info(
            "session %s, protocol %s",
            fingerprint(self.session_id) if self.session_id else "(none)",
            self._version,
            extra={"url": self._config.url},
        )

    async def _reinitialize(self, stale_session: str) -> None:
        """Replay the client's `initialize` (with an id of the bridge's own) and
        `notifications/initialized`, unless a concurrent caller already replaced `stale_session`."""
        async with self._reinit_lock:
            if self.session_id != stale_session:
                return
            if self._initialize is None:
                raise Failure("the server does not know this session and no initialize can be replayed")
            log.info("the server ended the session; initializing a new one")
            replay = {**self._initialize, "id": f"mcp-gateway-bridge-{next(self._bridge_ids)}"}
            message = jsonrpc.classify(replay)
            try:
                async with asyncio.timeout(REINITIALIZE_TIMEOUT):
                    answer = await self._exchange(message, jsonrpc.encode(replay), relay_answer=False)
            except (TimeoutError, SessionGone):
                raise Failure("the MCP session expired and could not be re-initialized") from None
            if answer is None or "error" in answer:
                raise Failure("the MCP session expired and re-initializing it failed", error=_error_of(answer))
            self._adopt(answer)
            await self._post_quietly(jsonrpc.encode({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        await self._announce_session()

    async def _announce_session(self) -> None:
        """Wake the standalone stream waiting for a session to replace the one that ended."""
        async with self._session_changed:
            self._session_changed.notify_all()

    # -- notifications and responses -------------------------------------------------------------

    async def _send_notification(self, message: Message, raw: bytes) -> None:
        if self._modern is not None and message.method != "notifications/cancelled":
            # 2026-07-28 has no notifications from the client over HTTP (the handshake is answered
            # here, roots are asked for in results); a cancellation closes the request's stream.
            log.debug("%s: nothing to send to a server of 2026-07-28", message.method)
            return
        if message.method == "notifications/cancelled":
            if self._modern is None:
                await self._post_quietly(raw)
            cancelled = message.params.get("requestId")
            task = self._in_flight.get(cancelled) if isinstance(cancelled, str | int) else None
            if task is not None:
                task.cancel()  # the client expects no answer any more
            return
        await self._post_quietly(raw, retry_after_reinit=True)
        established = self._generation > 0
        if message.method == "notifications/initialized" and established and self._listener is None and self._tasks:
            self._listener = self._tasks.create_task(self._listen())

    async def _post_quietly(self, raw: bytes, *, retry_after_reinit: bool = False) -> None:
        """POST a notification or a response; failures are logged (there is nobody to answer)."""
        for attempt in range(2):
            try:
                async with (
                    asyncio.timeout(ACCEPT_TIMEOUT),
                    self._post(raw, method=None, sends_session=self.session_id is not None) as response,
                ):
                    gone = _session_gone(response)
                    if gone is not None:
                        raise gone
                    if response.status >= 300:
                        log.warning("the server refused a message: HTTP %d", response.status)
                        return
                    if response.status != 202:  # some servers answer with a body anyway
                        await self._relay_body(response, answer_id=None, relay_answer=True)
                    return
            except SessionGone as gone:
                if not retry_after_reinit or attempt:
                    log.warning("a message was dropped: the session expired")
                    return
                try:
                    await self._reinitialize(gone.session_id)
                except Failure as failure:
                    log.warning("a message was dropped: %s", failure)
                    return
            except (Failure, TimeoutError) as failure:
                log.warning("a message could not be delivered: %s", str(failure) or "timed out")
                return

    # -- HTTP ------------------------------------------------------------------------------------

    def _headers(self, *, with_session: bool) -> dict[str, str]:
        headers = dict(self._base_headers)
        if with_session and self.session_id is not None:
            headers[SESSION_HEADER] = self.session_id
            if self._version is not None:
                headers[VERSION_HEADER] = self._version
        return headers

    @contextlib.asynccontextmanager
    async def _post(
        self, raw: bytes, *, method: str | None, sends_session: bool, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[ClientResponse]:
        """One POST (with `headers` added to the bridge's own); connection failures are retried
        when that is safe, else become `Failure`."""
        delay = CONNECT_RETRY_DELAY
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            try:
                response = await self._http.post(
                    self._config.url,
                    data=io.BytesIO(raw) if len(raw) > STREAMED_BODY_BYTES else raw,
                    headers={**self._headers(with_session=sends_session), **(headers or {})},
                    allow_redirects=False,
                )
            except aiohttp.ClientConnectorError as error:  # never reached the server: safe to repeat
                failure = Failure(f"cannot reach the MCP server at {self._config.url}: {_describe(error.os_error)}")
            except aiohttp.ServerDisconnectedError:
                if method not in IDEMPOTENT_METHODS:
                    raise Failure("the connection to the MCP server broke before it answered") from None
                failure = Failure("the connection to the MCP server broke before it answered")
            except (aiohttp.ClientError, TimeoutError) as error:
                raise Failure(f"request to the MCP server failed: {_describe(error)}") from None
            else:
                try:
                    yield response
                finally:
                    response.release()
                return
            if attempt == CONNECT_ATTEMPTS:
                raise failure
            log.debug("retrying in %.2fs: %s", delay, failure)
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    async def _exchange(self, message: Message, raw: bytes, *, relay_answer: bool = True) -> JsonObject | None:
        """POST a request and relay what comes back until its response; return that response."""
        is_initialize = message.method == "initialize"
        async with self._post(raw, method=message.method, sends_session=not is_initialize) as response:
            gone = _session_gone(response)
            if gone is not None:
                raise gone
            if is_initialize and response.status < 300:
                self.session_id = response.headers.get(SESSION_HEADER)
            if response.status >= 300:
                raise await self._http_failure(response)
            if response.status == 202 or response.content_type not in ("application/json", "text/event-stream"):
                raise Failure(f"the MCP server answered HTTP {response.status} without a JSON-RPC response")
            if response.content_type == "application/json":
                return await self._relay_body(response, answer_id=message.id, relay_answer=relay_answer)
            outcome = await self._relay_stream(response, message.id, relay_answer)
        attempts = 0
        while outcome.answer is None:
            if outcome.last_event_id is None or attempts == RESUME_ATTEMPTS:
                raise Failure("the MCP server closed the stream before answering")
            attempts += 1
            await asyncio.sleep(outcome.retry_ms / 1000 if outcome.retry_ms is not None else RESUME_RETRY_DELAY)
            outcome = await self._resume(outcome, message.id, relay_answer)
        return outcome.answer

    async def _resume(self, previous: StreamOutcome, answer_id: RequestId | None, relay: bool) -> StreamOutcome:
        headers = self._headers(with_session=True)
        headers["Accept"] = "text/event-stream"
        headers[LAST_EVENT_HEADER] = previous.last_event_id or ""
        try:
            async with self._http.get(self._config.url, headers=headers, allow_redirects=False) as response:
                if response.status >= 300 or response.content_type != "text/event-stream":
                    raise Failure(f"the MCP server could not resume the stream (HTTP {response.status})")
                outcome = await self._relay_stream(response, answer_id, relay)
        except aiohttp.ClientError:
            return previous  # counts as one attempt
        if outcome.last_event_id is None:
            outcome.last_event_id = previous.last_event_id
        return outcome

    async def _http_failure(self, response: ClientResponse) -> Failure:
        status = response.status
        if status in (401, 403):
            details = _challenge_details(response.headers.get("WWW-Authenticate"))
            source = (
                f"the token in ${self._config.token_source}" if self._config.token_source else "the configured headers"
            )
            what = "refused the credentials" if status == 401 else "denied access"
            return Failure(f"the MCP server {what} (HTTP {status}{details}): check {source}")
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            return Failure(f"the MCP server redirects (HTTP {status}) to {location}; connect to that URL instead")
        try:
            body = await self._read_bounded(response)
        except (aiohttp.ClientError, TimeoutError):
            body = None
        if body is not None and response.content_type == "application/json":
            with contextlib.suppress(ValueError):
                value = jsonrpc.decode(body)
                if isinstance(value, dict) and isinstance(value.get("error"), dict):
                    with contextlib.suppress(jsonrpc.InvalidMessage):
                        jsonrpc.classify({**value, "id": None})
                        return Refused(str(value["error"].get("message")), value["error"], status)
        return Failure(f"the MCP server answered HTTP {status} {response.reason or ''}".rstrip())

    async def _read_bounded(self, response: ClientResponse) -> bytes | None:
        """The whole body, or None when it is larger than the message limit."""
        if (response.content_length or 0) > self._limit:
            return None
        body = bytearray()
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > self._limit:
                return None
        return bytes(body)

    # -- relaying server messages ----------------------------------------------------------------

    async def _relay_body(
        self, response: ClientResponse, answer_id: RequestId | None, relay_answer: bool
    ) -> JsonObject | None:
        try:
            body = await self._read_bounded(response)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Failure(f"reading the MCP server's answer failed: {_describe(error)}") from None
        if body is None:
            raise Failure(f"the MCP server's answer is larger than --max-message-bytes ({self._limit} bytes)")
        answer = await self._relay(body, answer_id, relay_answer)
        if answer_id is not None and answer is None:
            raise Failure("the MCP server's answer did not contain the response")
        return answer

    async def _relay_stream(self, response: ClientResponse, answer_id: RequestId | None, relay: bool) -> StreamOutcome:
        """Relay an SSE body until the response to `answer_id` arrives or the stream ends."""
        decoder = SseDecoder(self._limit)
        outcome = StreamOutcome()
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            async for chunk in response.content.iter_any():
                for event in decoder.feed(chunk):
                    outcome.last_event_id = event.last_event_id
                    if event.retry_ms is not None:
                        outcome.retry_ms = event.retry_ms
                    if event.oversize:
                        self._oversize_from_server(event.data[:OVERSIZE_HEAD_BYTES], answer_id)
                    elif event.data and event.event_type in ("", "message"):
                        outcome.delivered += 1
                        answer = await self._relay(event.data, answer_id, relay)
                        if answer is not None:
                            outcome.answer = answer
                            return outcome
        return outcome

    def _oversize_from_server(self, head: bytes, answer_id: RequestId | None) -> None:
        msg_id = jsonrpc.leading_id(head)
        reason = f"a message from the MCP server is larger than --max-message-bytes ({self._limit} bytes)"
        if answer_id is not None and _same_id(msg_id, answer_id):
            raise Failure(reason, code=jsonrpc.INTERNAL_ERROR)
        log.warning("dropped %s", reason)

    async def _relay(self, data: bytes, answer_id: RequestId | None, relay_answer: bool) -> JsonObject | None:
        """Write each message in `data` (one, or a batch) to stdout; return the response to
        `answer_id` if it is among them."""
        try:
            value = jsonrpc.decode(data)
        except ValueError:
            log.warning("dropped a message from the MCP server that is not JSON")
            return None
        single = not isinstance(value, list)
        answer: JsonObject | None = None
        for item in [value] if single else value:
            try:
                message = jsonrpc.classify(item)
            except jsonrpc.InvalidMessage as error:
                log.warning("dropped an invalid message from the MCP server: %s", error)
                continue
            is_answer = message.kind is Kind.RESPONSE and answer_id is not None and _same_id(message.id, answer_id)
            if message.kind is Kind.REQUEST and message.id is not None:
                self._remember_server_request(message.id)
            if is_answer:
                answer = message.body
                if not relay_answer:
                    continue
            if single and b"\n" not in data and b"\r" not in data:
                await self._out.write(data)
            else:
                await self._out.write_message(message.body)
        return answer

    def _remember_server_request(self, msg_id: RequestId) -> None:
        self._server_requests[(type(msg_id), msg_id)] = None
        if len(self._server_requests) > MAX_REMEMBERED_SERVER_REQUESTS:
            self._server_requests.popitem(last=False)

    # -- the standalone GET stream ---------------------------------------------------------------

    async def _listen(self) -> None:
        """Relay the server's standalone stream (its requests and notifications) until shutdown."""
        delay = LISTEN_RETRY_INITIAL
        last_event_id: str | None = None
        generation = self._generation
        while True:
            if generation != self._generation:
                generation, last_event_id = self._generation, None
            headers = self._headers(with_session=True)
            headers["Accept"] = "text/event-stream"
            if last_event_id is not None:
                headers[LAST_EVENT_HEADER] = last_event_id
            outcome = StreamOutcome(last_event_id=last_event_id)
            try:
                async with self._http.get(self._config.url, headers=headers, allow_redirects=False) as response:
                    if response.status == 405:
                        log.info("the MCP server offers no standalone stream (405)")
                        return
                    if response.status == 404 and SESSION_HEADER in headers:
                        log.debug("standalone stream: session gone; waiting for a new one")
                        async with self._session_changed:
                            await self._session_changed.wait_for(functools.partial(self._replaced, generation))
                        delay = LISTEN_RETRY_INITIAL
                        continue
                    if response.status == 200 and response.content_type == "text/event-stream":
                        delay = LISTEN_RETRY_INITIAL
                        outcome = await self._relay_stream(response, None, True)
                    else:
                        log.warning("standalone stream refused: HTTP %d", response.status)
            except (aiohttp.ClientError, Failure) as error:
                log.debug("standalone stream failed: %s", error)
            except StdoutClosed:
                return
            last_event_id = outcome.last_event_id or last_event_id
            wait = outcome.retry_ms / 1000 if outcome.retry_ms is not None else delay
            log.debug("standalone stream ended; reconnecting in %.2fs", wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, LISTEN_RETRY_MAX)

    def _replaced(self, generation: int) -> bool:
        return self._generation != generation

    # -- shutdown --------------------------------------------------------------------------------

    async def _end_session(self) -> None:
        if self.session_id is None:
            return
        try:
            async with (
                asyncio.timeout(DELETE_TIMEOUT),
                self._http.delete(
                    self._config.url, headers=self._headers(with_session=True), allow_redirects=False
                ) as response,
            ):
                if response.status == 405:
                    log.debug("the MCP server does not support DELETE; the session will expire")
                elif response.status >= 300 and response.status != 404:
                    log.warning("ending the session failed: HTTP %d", response.status)
                else:
                    log.info("session ended")
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("ending the session failed: %s", _describe(error))
        self.session_id = None


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _error_of(answer: JsonObject | None) -> JsonObject | None:
    error = answer.get("error") if answer is not None else None
    return error if isinstance(error, dict) else None


# --- entry point ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="The MCP server's Streamable HTTP endpoint, e.g. https://mcp.example.com/mcp")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="Send this header with every request (repeatable); ${VAR} in the value is read from the environment.",
    )
    parser.add_argument(
        "--bearer-env",
        metavar="NAME",
        help="Send 'Authorization: Bearer <token>' with the token read from environment variable NAME.",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        metavar="N",
        help=f"Largest message accepted in either direction (default {DEFAULT_MAX_MESSAGE_BYTES}).",
    )
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default="info", help="Logging to stderr."
    )


def main(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    try:
        config = build_config(
            args.url, args.header, args.bearer_env, args.max_message_bytes, os.environ if environ is None else environ
        )
    except ConfigError as error:
        print("mcp-gateway connect: invalid options:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    logline.to_stderr(logline.TextFormatter(), args.log_level)
    asyncio.run(serve(config))
    return EXIT_OK


async def serve(config: BridgeConfig) -> None:
    """Bridge this process's stdin/stdout to `config.url` until stdin ends or a signal comes."""
    authorization = config.headers.get("Authorization", "")
    log.info(
        "bridging stdio to %s",
        config.url,
        extra={"token": fingerprint(authorization.removeprefix("Bearer "))} if authorization else {},
    )
    if urlsplit(config.url).scheme == "http" and authorization and urlsplit(config.url).hostname not in _LOOPBACK:
        log.warning("sending a bearer token over plain http to %s: use https", urlsplit(config.url).hostname)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    read, out = await open_stdio()
    timeout = ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT)
    # No read deadline on responses: a tool call may legitimately run for many minutes, and MCP
    # clients time out their own requests and cancel them (which abandons the POST here).
    async with ClientSession(timeout=timeout) as http:
        await Bridge(config, http, out).run(read, stop)
    log.info("stopped")


_LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "::1"})
