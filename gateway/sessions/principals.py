"""The children of 2026-07-28 requests: shared by each principal's requests, never by two principals.

A modern request has no session: the gateway finds it a child by who sent it. Each principal
(for anonymous clients: the principal and the client's address bucket, an IPv6 /64, so anonymous
clients of two addresses never share a process; those of one address do) has up to
`children_per_principal` children, started on first use, each a `Session` of the store that no
one knows the id of. They count against the session caps, give way and are reaped after the
idle TTL like every session (a request in flight or an open listen stream keeps one alive), and
stop like every child. A principal's requests go to its least busy child; a new one
starts only while every child it has is busy and it may have another.

Invariants:
- A child's era is learned once for the configured command (`EraBook`): the first child that
  serves modern requests is sent `server/discover` as its very first message, and a
  `DiscoverResult` naming 2026-07-28 makes the command modern; any error, a timeout or an exit
  makes it legacy (a child that exited is replaced, one that did not is initialized). No modern
  request ever reaches a child that was not probed: later children of a modern command are
  probed too (which also gives each principal its own discovery), those of a legacy command are
  initialized at once.
- A legacy child serving modern clients is initialized once, by the gateway, as a client that
  declares only the capabilities the gateway can bridge.
- Two requests starting a principal's first child at once start one child, not two.
- A child that ended is forgotten here at once (with the requestStates it handed out): a
  principal that never comes back costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Literal

from gateway import _version, jsonrpc
from gateway.auth import ANONYMOUS, Principal
from gateway.eras import translate
from gateway.eras.envelope import (
    CLIENT_CAPABILITIES_KEY,
    CLIENT_INFO_KEY,
    MODERN_VERSION,
    PROTOCOL_VERSION_KEY,
    SERVER_INFO_KEY,
)
from gateway.errors import GatewayError
from gateway.jsonrpc import JsonObject, RequestId
from gateway.sessions import listen
from gateway.sessions.child import ChildGone, StdinStalled
from gateway.sessions.listen import Listener, Listeners
from gateway.sessions.mrtr import InputBridge, StateSigner
from gateway.sessions.router import Router
from gateway.sessions.store import Session, SessionStore

log = logging.getLogger("gateway.principals")

Era = Literal["legacy", "modern"]
# Who the gateway says it is to a child it probes or initializes.
CLIENT_INFO: Final[JsonObject] = {"name": "mcp-gateway", "version": _version.__version__}
# A child that exits during its probe is replaced this many times before the request fails.
PROBE_RESPAWNS: Final = 1
STARTING_FAILED: Final = "The MCP server could not be started"
# requestStates of modern children remembered for their retries (the oldest forgotten first).
MAX_NOTED_STATES: Final = 4096


class EraBook:
    """The era of the configured command's children: forced by configuration, or learned once."""

    def __init__(self, setting: Literal["auto", "legacy", "modern"]) -> None:
        self.forced: Era | None = None if setting == "auto" else setting
        self.era: Era | None = self.forced
        # Whether its children accept `initialize` (None: not known yet). A modern child may, or
        # may not (a server of 2026-07-28 only): then legacy sessions are translated.
        self.handshake: bool | None = None if self.era != "legacy" else True

    def learn(self, era: Era) -> None:
        if self.era is None:
            self.era = era
            log.info("the MCP server speaks the %s era", era)

    def learn_modern_only(self) -> None:
        """Its children refuse `initialize` and answer `server/discover`."""
        self.learn("modern")
        if self.handshake is None:
            self.handshake = False
            log.info("the MCP server serves 2026-07-28 only: handshake-era clients are translated")


@dataclass(slots=True, eq=False)
class Backend:
    """A child serving a principal's modern requests, and what it says about itself."""

    session: Session
    era: Era
    discovery: JsonObject  # what `server/discover` answers: the child's own, or synthesised
    discovered: float  # when (monotonic seconds)
    server_info: JsonObject | None
    # A legacy child's requests to its clients, carried to them as requests for input.
    bridge: InputBridge | None = None
    # What its principal's listeners ask of it: the resources a legacy child is subscribed to, the
    # filter of the listen a modern child holds open for the gateway (and the task that holds it).
    subscribed: frozenset[str] = frozenset()
    listening: JsonObject | None = None
    listen_task: asyncio.Task[None] | None = None

    @property
    def capabilities(self) -> JsonObject:
        capabilities = self.discovery.get("capabilities")
        return capabilities if isinstance(capabilities, dict) else {}

    @property
    def router(self) -> Router:
        return self.session.router

    @property
    def fresh(self) -> bool:
        """Whether its discovery may still be answered without asking the child again."""
        if self.era == "legacy":
            return True  # a handshake-era server's InitializeResult holds for the life of its process
        ttl = self.discovery.get("ttlMs")
        return isinstance(ttl, int) and (time.monotonic() - self.discovered) * 1000 < ttl


Admission = Callable[[], Awaitable[None]]


class PrincipalChildren:
    """Every principal's children for modern requests."""

    def __init__(
        self,
        store: SessionStore,
        book: EraBook,
        *,
        per_principal: int,
        probe_timeout: float,
        request_timeout: float,
        input_timeout: float,
        signer: StateSigner | None = None,
    ) -> None:
        self._store = store
        self.book = book
        self._input_timeout = input_timeout
        self.signer = signer if signer is not None else StateSigner()
        self.per_principal = per_principal
        self._probe_timeout = probe_timeout
        self._request_timeout = request_timeout
        self._children: dict[str, list[Backend]] = {}
        self._starting: dict[str, asyncio.Future[Backend]] = {}
        self.listeners = Listeners()
        # The child that handed out each recent `requestState` of a modern child's own: its retry
        # goes there (with one child per principal there is nowhere else, and nothing is kept).
        self._issuers: OrderedDict[str, tuple[str, Backend]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def key_of(principal: Principal, address: str) -> str:
        """Whose children a request uses: its principal's, and an anonymous client's address bucket's."""
        if principal is ANONYMOUS:
            return f"{principal.key}\x1e{address}"
        return principal.key

    def live(self, key: str) -> list[Backend]:
        """The principal's children still serving (those that ended are forgotten here)."""
        children = self._children.get(key)
        if not children:
            return []
        alive = [backend for backend in children if not backend.session.closing and not backend.router.closed]
        if len(alive) != len(children):
            if alive:
                self._children[key] = alive
            else:
                del self._children[key]
        return alive

    async def acquire(
        self, principal: Principal, token: str | None, client_ip: str, address: str, admit: Admission
    ) -> Backend:
        """The child for the principal's next request: its least busy one, or a new one when all
        are busy and it may have another (`admit` is awaited first: the rate limits on starting)."""
        key = self.key_of(principal, address)
        while True:
            alive = self.live(key)
            best = min(alive, key=lambda backend: backend.router.pending, default=None)
            if best is not None and (best.router.pending == 0 or len(alive) >= self.per_principal):
                return best
            starting = self._starting.get(key)
            if starting is None:
                break
            # Someone is starting the principal's child already: use that one (or, if it failed,
            # try again, which may start another).
            with contextlib.suppress(GatewayError):
                return await asyncio.shield(starting)
        future: asyncio.Future[Backend] = asyncio.get_running_loop().create_future()
        self._starting[key] = future
        try:
            await admit()
            backend = await self._start(key, principal, token, client_ip, address)
        except BaseException as exc:
            # Those waiting for this child are told why it did not come (a cancelled start, as a
            # failure: they try again themselves).
            failure = exc if isinstance(exc, GatewayError) else GatewayError("upstream_failed", STARTING_FAILED)
            future.set_exception(failure)
            future.exception()  # retrieved: a failure no one else awaited is not reported as lost
            raise
        else:
            future.set_result(backend)
            return backend
        finally:
            del self._starting[key]

    async def _start(self, key: str, principal: Principal, token: str | None, client_ip: str, address: str) -> Backend:
        for _ in range(PROBE_RESPAWNS + 1):
            session = await self._store.open(principal, token, client_ip, address, serves=key)
            try:
                backend = await self._prepare(session)
            except BaseException:
                await self._store.close(session, "initialize_failed")
                raise
            if backend is None:  # it exited during its probe: another one is initialized
                await self._store.close(session, "probe_exit")
                continue
            if backend.era == "legacy":
                backend.bridge = InputBridge(
                    session.router, self.signer, child=session.id, principal=key, input_timeout=self._input_timeout
                )
            self._wire(key, backend)
            self._store.publish(session)
            self._children.setdefault(key, []).append(backend)
            self._resync(key)  # what its principal's listeners already ask for
            return backend
        raise GatewayError("upstream_failed", STARTING_FAILED)

    async def _prepare(self, session: Session) -> Backend | None:
        """Probe (or not) and initialize (or not) a new child; None when it exited while probed."""
        router = session.router
        if self.book.era != "legacy":
            try:
                discovery = await self.probe(router)
            except ChildGone:
                self.book.learn("legacy")
                if self.book.forced == "modern":
                    raise GatewayError("upstream_failed", "The MCP server exited when asked server/discover") from None
                return None
            if discovery is not None:
                self.book.learn("modern")
                router.protocol_version = MODERN_VERSION
                router.ask_meta = _envelope()
                meta = discovery.get("_meta")
                info = meta.get(SERVER_INFO_KEY) if isinstance(meta, dict) else None
                return Backend(session, "modern", discovery, time.monotonic(), info if isinstance(info, dict) else None)
            if self.book.forced == "modern":
                raise GatewayError("upstream_failed", "The MCP server does not answer server/discover")
            self.book.learn("legacy")
        result = await self._initialize(router)
        info = result.get("serverInfo")
        return Backend(
            session,
            "legacy",
            translate.discovery_from_initialize(result),
            time.monotonic(),
            info if isinstance(info, dict) else None,
        )

    async def probe(self, router: Router) -> JsonObject | None:
        """The child's `DiscoverResult` when it is modern; None when it is not (any error, an
        answer of another shape, or no answer in time). Raises `ChildGone` when it exited."""
        try:
            async with asyncio.timeout(self._probe_timeout):
                answer = await router.ask("server/discover", translate.discover_request(CLIENT_INFO))
        except TimeoutError:
            log.info("no answer to server/discover in %g s: taken as a legacy server", self._probe_timeout)
            return None
        except StdinStalled:
            raise GatewayError("upstream_stalled", "The MCP server is not reading its input") from None
        return translate.modern_discovery(answer)

    async def _initialize(self, router: Router) -> JsonObject:
        """Initialize a legacy child on behalf of its modern clients; its `InitializeResult`."""
        params = translate.initialize_request(CLIENT_INFO, bridged_capabilities())
        answer = await ask_child(router, "initialize", params, self._request_timeout)
        child = router.child
        try:
            if child is None:
                raise ChildGone("the session has ended")
            child.send(jsonrpc.encode(jsonrpc.notification("notifications/initialized", {})))
        except ChildGone:
            raise GatewayError("upstream_failed", "The MCP server exited before it was initialized") from None
        result = answer.get("result")
        if not isinstance(result, dict):
            log.warning("the MCP server refused initialize: %s", listen.quoted(answer.get("error")))
            raise GatewayError("upstream_failed", "The MCP server refused to initialize")
        version = result.get("protocolVersion")
        router.protocol_version = version if isinstance(version, str) else translate.LEGACY_VERSION
        return result

    # --- listen streams ----------------------------------------------------------------------

    def _wire(self, key: str, backend: Backend) -> None:
        """What the child announces goes to its principal's listeners; its end ends theirs."""
        router = backend.router
        child = backend.session.id

        def announced(message: jsonrpc.Message) -> None:
            self.listeners.announce(key, message)

        def closed() -> None:
            self.listeners.child_ended(key, child)
            if backend.listen_task is not None:
                backend.listen_task.cancel()
            self._forget(key, backend)

        router.on_unrelated = announced
        router.on_closed = closed

    def _forget(self, key: str, backend: Backend) -> None:
        """An ended child is nobody's any more: nothing here keeps it (or its process's state)."""
        children = self._children.get(key)
        if children is not None and backend in children:
            children.remove(backend)
            if not children:
                del self._children[key]
        for state in [state for state, (_, noted) in self._issuers.items() if noted is backend]:
            del self._issuers[state]

    def listen(self, backend: Backend, key: str, subscription: RequestId, requested: object) -> Listener:
        """Open a listen stream kept alive by `backend`; its acknowledgement is queued on it."""
        if self.listeners.count(key) >= listen.MAX_PER_PRINCIPAL:
            raise GatewayError(
                "too_many_in_flight",
                f"Too many listen streams open for this principal ({listen.MAX_PER_PRINCIPAL}); close one first",
                retry_after=1,
            )
        granted = listen.honored(requested, backend.capabilities)
        listener = self.listeners.open(key, backend.session.id, subscription, granted)
        self._resync(key)
        return listener

    def unlisten(self, listener: Listener) -> None:
        self.listeners.close(listener)
        self._resync(listener.key)

    def _resync(self, key: str) -> None:
        """Subscribe the principal's children to what its listeners now ask about."""
        wanted = self.listeners.uris(key)
        anyone = any(True for _ in self.listeners.of(key))
        for backend in self.live(key):
            if backend.era == "legacy":
                for uri in sorted(wanted - backend.subscribed):
                    self._ask_soon(backend, "resources/subscribe", {"uri": uri})
                for uri in sorted(backend.subscribed - wanted):
                    self._ask_soon(backend, "resources/unsubscribe", {"uri": uri})
                backend.subscribed = wanted
                continue
            notifications: JsonObject | None = None
            if anyone:
                notifications = {flag: True for flag, _ in listen.LIST_CHANGES.values()}
                if wanted:
                    notifications["resourceSubscriptions"] = sorted(wanted)
            if notifications == backend.listening:
                continue
            if backend.listen_task is not None:
                backend.listen_task.cancel()  # the child is told (notifications/cancelled)
                backend.listen_task = None
            backend.listening = notifications
            if notifications is not None:
                backend.listen_task = self._spawn(self._hold_listen(backend, notifications))

    async def _hold_listen(self, backend: Backend, notifications: JsonObject) -> None:
        """Hold a modern child's listen stream open for its principal's listeners (asked for
        again, after a pause, when the child ends it)."""
        if await listen.hold(backend.router, notifications) and backend.listening is notifications:
            await asyncio.sleep(listen.RELISTEN_DELAY)
            if backend.listening is notifications:
                backend.listening = None
                backend.listen_task = None
                self._resync(backend.session.serves or "")

    def _ask_soon(self, backend: Backend, method: str, params: JsonObject) -> None:
        async def ask() -> None:
            try:
                async with asyncio.timeout(self._request_timeout):
                    answer = await backend.router.ask(method, params)
            except (ChildGone, StdinStalled, TimeoutError):
                return
            if "error" in answer:
                log.warning("the MCP server refused %s: %s", method, listen.quoted(answer["error"]))

        self._spawn(ask())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def note_state(self, state: str, backend: Backend) -> None:
        self._issuers[state] = (backend.session.serves or "", backend)
        self._issuers.move_to_end(state)
        while len(self._issuers) > MAX_NOTED_STATES:
            self._issuers.popitem(last=False)

    def issuer_of(self, principal: Principal, address: str, state: str) -> Backend | None:
        """The principal's live child that handed out `state`, if one did."""
        noted = self._issuers.get(state)
        if noted is None:
            return None
        key, backend = noted
        if key != self.key_of(principal, address) or backend.session.closing or backend.router.closed:
            return None
        return backend

    def find(self, principal: Principal, address: str, child: str) -> Backend | None:
        """The principal's live child whose (secret) session id is `child`."""
        for backend in self.live(self.key_of(principal, address)):
            if backend.session.id == child:
                return backend
        return None


async def ask_child(router: Router, method: str, params: JsonObject, wait: float) -> JsonObject:
    """The child's answer to a request of the gateway's own, within `wait` seconds; each way it
    can fail as the refusal of the client's request that needed it."""
    try:
        async with asyncio.timeout(wait):
            return await router.ask(method, params)
    except TimeoutError:
        raise GatewayError("upstream_stalled", f"The MCP server did not answer {method} in time") from None
    except StdinStalled:
        raise GatewayError("upstream_stalled", "The MCP server is not reading its input") from None
    except ChildGone:
        raise GatewayError("upstream_failed", "The MCP server exited") from None


def bridged_capabilities() -> JsonObject:
    """What the gateway declares to a legacy child it initializes for modern clients: what it
    carries to them as requests for input (each asked only of a client that declared it)."""
    return {"elicitation": {}, "sampling": {}, "roots": {}}


def _envelope() -> JsonObject:
    """The `_meta` of the gateway's own requests to a modern child (its tool listing, say)."""
    return {PROTOCOL_VERSION_KEY: MODERN_VERSION, CLIENT_CAPABILITIES_KEY: {}, CLIENT_INFO_KEY: CLIENT_INFO}
