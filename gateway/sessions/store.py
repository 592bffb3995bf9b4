"""The session store: creation under caps, lookup by id, closing, and the idle reaper.

Invariants:
- A session id is 256 bits from the OS CSPRNG in URL-safe base64: visible ASCII only.
- A session is findable by id only after its child answered `initialize` successfully, and stops
  being findable before its child is stopped, so no request ever reaches a stopping child.
- The idle clock of a session runs only while nothing is in flight and none of its HTTP
  responses is open. One reaper task ends sessions past their idle TTL or absolute lifetime
  (a lifetime ends a session even while a stream holds it open).
- Sessions never exceed `max_sessions`, nor `max_per_principal` for one principal, nor
  `max_per_address` for one client address (an IPv6 /64), counting the
  ones still starting.
- At a cap an idle session gives way rather than lock out a newcomer (most clients never send
  DELETE): at the caller's own caps its least recently active idle session ends (at the address
  cap another principal's only once idle `evict_idle_after`), at the global cap the least
  recently active session idle `evict_idle_after`. Ended as `evicted`, chosen among the
  caller's own sessions (the global cap alone looks at all); a busy session (a request in
  flight, a stream open) or one still starting never gives way, and only when no session may
  is the caller refused, told when the soonest one could.
- A session belongs to the principal that created it: presented by anyone else, its id is
  answered as unknown.
- Every child started is audited once as `child.spawn` and once as `child.exit`; every published
  session once as `session.open` and once as `session.close`, with the reason it ended.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import secrets
import signal
import subprocess
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from gateway.auth import ANONYMOUS, Principal
from gateway.auth.identity import IdentityIssuer
from gateway.errors import ErrorCode, GatewayError
from gateway.observe.audit import Audit
from gateway.sessions.child import Child, ChildSpec
from gateway.sessions.router import Router
from gateway.sessions.sandbox import Cell, NoFreeUser, Sandbox

if TYPE_CHECKING:
    from gateway.sessions.translated import Translated
from gateway.sessions.watchdog import OrphanWatchdog

log = logging.getLogger("gateway.sessions")

SESSION_ID_BYTES = 32
# The reaper wakes this often relative to the idle TTL, within these bounds (seconds).
REAP_FRACTION = 0.25
REAP_INTERVAL_MIN = 0.05
REAP_INTERVAL_MAX = 5.0
# Retry-After while shutting down, and at a cap when no session can tell when it frees (none
# to wait for: only sessions that are starting, or ending right now).
CAPACITY_RETRY_AFTER = 5
# What requests still in flight when a shutdown's drain ends are told (in their JSON-RPC error).
SHUTDOWN_MESSAGE = "the gateway is shutting down"


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_sessions: int
    max_per_principal: int
    max_per_address: int
    idle_ttl: float
    max_lifetime: float | None
    request_timeout: float
    violation_limit: int
    max_in_flight: int = 256
    # Idle seconds after which a session may give way to a newcomer that is not its principal.
    evict_idle_after: float = 60.0


class Session:
    """One client session: its child process, its router, its clocks."""

    __slots__ = (
        "active",
        "address",
        "cell",
        "child",
        "client_ip",
        "closing",
        "created",
        "id",
        "idle_since",
        "last_active",
        "owner",
        "principal",
        "router",
        "serves",
        "translated",
    )

    def __init__(
        self,
        session_id: str,
        principal: Principal,
        router: Router,
        client_ip: str,
        address: str,
        *,
        serves: str | None = None,
    ) -> None:
        self.id = session_id
        # For the child of a principal's 2026-07-28 requests: the key they share it under. Such a
        # child has no session id anyone knows; it is found by that key, never by its id.
        self.serves = serves
        # For a session whose child speaks 2026-07-28 only: the translation between the two.
        self.translated: Translated | None = None
        self.client_ip = client_ip
        self.address = address  # the bucket counted against max_per_address
        self.principal = principal
        self.owner = principal.key  # sessions are never credentials: each belongs to one principal
        self.router = router
        self.child: Child | None = None
        self.cell: Cell | None = None  # where its child runs, with isolation
        self.created = time.monotonic()
        self.idle_since: float | None = None
        # When a request or stream last began or ended here: the order in which sessions give way.
        self.last_active = self.created
        self.active = 0  # open HTTP responses
        self.closing = False

    @property
    def protocol_version(self) -> str | None:
        return self.router.protocol_version

    @property
    def era(self) -> str:
        """The era of the clients it serves: "modern" (2026-07-28 requests) or "legacy" (a session)."""
        return "legacy" if self.serves is None else "modern"

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    @property
    def busy(self) -> bool:
        return self.active > 0 or self.router.in_flight

    def enter(self) -> None:
        self.active += 1
        self.idle_since = None
        self.last_active = time.monotonic()

    def leave(self) -> None:
        self.active -= 1
        self.last_active = time.monotonic()
        if not self.busy:
            self.idle_since = self.last_active

    def __repr__(self) -> str:
        return f"Session({self.id[:8]}…, pid={self.child.pid if self.child else None})"


class SessionStore:
    """All live sessions of this gateway process."""

    def __init__(
        self,
        spec: ChildSpec,
        limits: SessionLimits,
        watchdog: OrphanWatchdog | None,
        identity: IdentityIssuer | None = None,
        audit: Audit | None = None,
        *,
        sandbox: Sandbox | None = None,
    ) -> None:
        self._spec = spec
        self._sandbox = sandbox
        self._audit = audit if audit is not None else Audit(None)
        self._identity = identity
        self._limits = limits
        self._watchdog = watchdog
        self._sessions: dict[str, Session] = {}
        # Live and starting sessions of each principal, and of each client address bucket: the
        # caps count them, and a session that gives way is found among them, not among all.
        self._by_owner: dict[str, set[Session]] = {}
        self._by_address: dict[str, set[Session]] = {}
        # Sessions admitted under the caps and not yet ended: spawning, initializing or live.
        self._admitted = 0
        self._children = 0  # started and not yet stopped
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self.accepting = True

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def children(self) -> int:
        """Child processes started and not yet stopped, of sessions in any state."""
        return self._children

    def requests_in_flight(self) -> int:
        """Requests sent to the children of live sessions and not yet answered (a scrape's cost)."""
        return sum(session.router.pending for session in self._sessions.values())

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def get(self, session_id: str, owner: str) -> Session | None:
        """The session, if it is live and belongs to `owner` (anyone else is told it does not exist)."""
        session = self._sessions.get(session_id)
        if session is None or session.closing or session.serves is not None:
            return None
        if not hmac.compare_digest(session.owner, owner):
            return None
        return session

    async def open(
        self,
        principal: Principal,
        token: str | None = None,
        client_ip: str = "",
        address: str | None = None,
        *,
        serves: str | None = None,
    ) -> Session:
        """Spawn the child of a new, not yet published session for `principal`.

        `token` is the bearer token it authenticated with, for configured token-to-environment;
        `address` the bucket the client's address is counted in (default: the address itself);
        `serves` the key of the principal's 2026-07-28 requests, for a child that serves them.
        """
        if not self.accepting:
            raise GatewayError("shutting_down", "The gateway is shutting down", retry_after=CAPACITY_RETRY_AFTER)
        address = client_ip if address is None else address
        self._make_room(principal, address)
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        label = session_id[:8]
        session: Session | None = None

        def on_close(reason: str) -> None:
            if session is not None:
                self.close_soon(session, reason)

        def on_violation(kind: str, sample: str | None) -> None:
            if session is not None:
                self._audit.record(
                    "child.violation",
                    session=session,
                    kind=kind,
                    count=router.violations,
                    limit=self._limits.violation_limit,
                    sample=sample,
                )

        router = Router(
            label=label,
            request_timeout=self._limits.request_timeout,
            violation_limit=self._limits.violation_limit,
            max_in_flight=self._limits.max_in_flight,
            on_close=on_close,
            on_violation=on_violation,
        )
        session = Session(session_id, principal, router, client_ip, address, serves=serves)
        self._admitted += 1
        self._by_owner.setdefault(session.owner, set()).add(session)
        self._by_address.setdefault(address, set()).add(session)
        try:
            spec = self._spec
            if self._identity is not None:
                spec = replace(spec, env={**spec.env, **self._identity.environment(principal, token)})
            started = time.monotonic()
            session.cell = await self._new_cell()
            child = await Child.spawn(spec, router, self._watchdog, label, session.cell)
        except (OSError, subprocess.SubprocessError) as exc:  # the latter: its pre-exec hook failed
            self._release(session)
            self._release_cell_soon(session)
            log.error("cannot start the MCP server %r: %s", self._spec.argv[0], exc, extra={"session": label})
            raise GatewayError("upstream_failed", "The MCP server could not be started") from None
        except BaseException:
            self._release(session)  # cancelled while spawning: the place is not kept
            self._release_cell_soon(session)
            raise
        session.child = child
        router.child = child
        self._children += 1
        spawn_ms = round((time.monotonic() - started) * 1000, 3)
        self._audit.record(
            "child.spawn",
            session=session,
            command=self._spec.argv[0],
            spawn_ms=spawn_ms,
            isolation=self._sandbox.mode if self._sandbox is not None else "none",
            uid=session.cell.uid if session.cell is not None else None,
        )
        log.info("session starting", extra={"session": label, "pid": child.pid})
        return session

    async def _new_cell(self) -> Cell | None:
        """Where the next child runs, with isolation; 503 when the user IDs are used up, or its
        directory or lock cannot be made (a full disk, no descriptor to spare)."""
        if self._sandbox is None:
            return None
        try:
            return await self._sandbox.new_cell(self._spec.cwd)
        except NoFreeUser as exc:
            log.error("%s", exc)
            raise GatewayError("too_many_sessions", "The gateway is at its session limit; try again later") from None
        except OSError as exc:
            log.error("cannot prepare a child's private directory or user: %s", exc)
            raise GatewayError("no_room_for_child", "The gateway cannot start a session now; try again later") from None

    def _release_cell_soon(self, session: Session) -> None:
        """Give back the cell of a child that never started (its directories may exist already)."""
        cell, session.cell = session.cell, None
        if cell is not None and self._sandbox is not None:
            task = asyncio.get_running_loop().create_task(self._sandbox.release(cell))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _make_room(self, principal: Principal, address: str) -> None:
        """Admit one more session for `principal` from `address`, ending idle sessions that must
        give way for it; refuse when the caps are reached by sessions that may not."""
        limits = self._limits
        now = time.monotonic()
        owner = principal.key
        victims: list[Session] = []
        # Without authentication every client is the same anonymous principal: only the address
        # and global caps can tell them apart.
        mine = self._by_owner.get(owner, set())
        if principal is not ANONYMOUS and len(mine) >= limits.max_per_principal:
            victims.append(
                self._giving_way(
                    mine,
                    now,
                    owner,
                    victims,
                    code="too_many_sessions_for_principal",
                    message="Too many open sessions for this principal, all in use; "
                    "end one (DELETE) or try again later",
                )
            )
        here = self._by_address.get(address, set())
        if len(here) - sum(victim.address == address for victim in victims) >= limits.max_per_address:
            victims.append(
                self._giving_way(
                    here,
                    now,
                    owner,
                    victims,
                    code="too_many_sessions_for_address",
                    message="Too many open sessions from this address, all in use; end one (DELETE) or try again later",
                )
            )
        if self._admitted - len(victims) >= limits.max_sessions:
            # Scans every live session, but only when the gateway is full. Everyone is "anonymous"
            # without authentication: there, no session is the caller's own.
            known = owner if principal is not ANONYMOUS else None
            victims.append(
                self._giving_way(
                    self._sessions.values(),
                    now,
                    known,
                    victims,
                    code="too_many_sessions",
                    message="The gateway is at its session limit; try again later",
                )
            )
        for victim in victims:
            self._evict(victim)

    def _giving_way(
        self,
        sessions: Collection[Session],
        now: float,
        owner: str | None,
        chosen: Collection[Session],
        *,
        code: ErrorCode,
        message: str,
    ) -> Session:
        """The session of `sessions` that gives way for `owner` (not one already `chosen`), or the
        refusal `code`, told when the soonest could."""
        victim = self._least_recently_active(sessions, now, owner=owner, exclude=chosen)
        if victim is None:
            raise GatewayError(code, message, retry_after=self._retry_after(sessions, now, owner=owner))
        return victim

    def _may_give_way(self, session: Session, now: float, owner: str | None) -> bool:
        """Whether `session` may end to admit a session of `owner` (None: of anyone)."""
        if session.busy or session.closing or self._sessions.get(session.id) is not session:
            return False  # in use, ending already, or still starting
        if session.owner == owner:
            return True  # the caller's own idle session: theirs to give up
        return now - session.last_active >= self._limits.evict_idle_after

    def _least_recently_active(
        self, sessions: Iterable[Session], now: float, *, owner: str | None, exclude: Collection[Session] = ()
    ) -> Session | None:
        """The session that gives way: the caller's own before another's, least recently active first."""
        best: Session | None = None
        best_key = (True, math.inf)
        for session in sessions:
            if session in exclude or not self._may_give_way(session, now, owner):
                continue
            key = (session.owner != owner, session.last_active)
            if key < best_key:
                best, best_key = session, key
        return best

    def _retry_after(self, sessions: Iterable[Session], now: float, *, owner: str | None) -> int:
        """Whole seconds until the soonest of `sessions` (none of which may give way now) could:
        an idle one when it has been idle long enough, or ends at its idle TTL; a busy one when its
        lifetime ends, or, without an open stream, once its requests time out (`request_timeout`
        without progress) and it then sits idle as long; one still starting, likewise. A request
        may finish any moment; this is the soonest a slot is certain to be offered."""
        limits = self._limits
        soonest = math.inf
        for session in sessions:
            if session.closing:
                continue
            mine = session.owner == owner
            wait = min(0.0 if mine else limits.evict_idle_after, limits.idle_ttl)
            published = self._sessions.get(session.id) is session
            if published and not session.busy:
                bound = wait - (now - session.last_active)
            else:
                bound = math.inf if published and session.router.get_stream.attached else limits.request_timeout + wait
                if limits.max_lifetime is not None:
                    bound = min(bound, session.created + limits.max_lifetime - now)
            soonest = min(soonest, bound)
        return max(1, math.ceil(soonest)) if soonest != math.inf else CAPACITY_RETRY_AFTER

    @property
    def full(self) -> bool:
        """At the global cap with no session that could give way: a new client would get 503."""
        if self._admitted < self._limits.max_sessions:
            return False
        now = time.monotonic()
        return self._least_recently_active(self._sessions.values(), now, owner=None) is None

    def _evict(self, session: Session) -> None:
        """End an idle session now, so its slot is free at once; its child stops in the background."""
        log.info("session gives way at a cap", extra={"session": session.id[:8], "client_ip": session.client_ip})
        self._end(session, "evicted")
        task = asyncio.get_running_loop().create_task(self._stop_child(session, "evicted"))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def publish(self, session: Session) -> None:
        session.last_active = session.idle_since = time.monotonic()
        self._sessions[session.id] = session
        self._audit.record("session.open", session=session, protocol_version=session.protocol_version, era=session.era)
        log.info(
            "session open",
            extra={
                "session": session.id[:8],
                "pid": session.child.pid if session.child else None,
                "protocol_version": session.protocol_version,
                "client_ip": session.client_ip,
            },
        )

    async def close(self, session: Session, reason: str) -> None:
        """End a session: unpublish it, fail what is in flight, stop its child."""
        if self._end(session, reason):
            await self._stop_child(session, reason)

    def _end(self, session: Session, reason: str) -> bool:
        """Unpublish a session, free its place under the caps, fail what is in flight; False when
        it was ending already."""
        if session.closing:
            return False
        session.closing = True
        published = self._sessions.pop(session.id, None) is not None
        self._release(session)
        session.router.close(reason)
        if published:
            lasted = round(time.monotonic() - session.created, 3)
            self._audit.record("session.close", session=session, reason=reason, duration_s=lasted, era=session.era)
        return True

    async def _stop_child(self, session: Session, reason: str) -> None:
        code = None
        if session.child is not None:
            try:
                code = await session.child.stop()
            finally:
                self._children -= 1
                cell, session.cell = session.cell, None
                if cell is not None and self._sandbox is not None:
                    await self._sandbox.release(cell)  # its processes ended, its files removed
            exit_code, signal_name = exit_status(code)
            self._audit.record("child.exit", session=session, reason=reason, exit_code=exit_code, signal=signal_name)
        log.info("session closed", extra={"session": session.id[:8], "reason": reason, "exit_code": code})

    def _release(self, session: Session) -> None:
        self._admitted -= 1
        for index, key in ((self._by_owner, session.owner), (self._by_address, session.address)):
            members = index.get(key)
            if members is not None:
                members.discard(session)
                if not members:
                    del index[key]

    def close_soon(self, session: Session, reason: str) -> None:
        """Close from a synchronous context (the router's callbacks); the task is owned here."""
        if session.closing:
            return
        task = asyncio.get_running_loop().create_task(self.close(session, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def reap(self, now: float | None = None) -> None:
        """One reaper pass: end sessions past their lifetime or idle TTL."""
        now = time.monotonic() if now is None else now
        limits = self._limits
        for session in list(self._sessions.values()):
            if limits.max_lifetime is not None and now - session.created >= limits.max_lifetime:
                self.close_soon(session, "lifetime")
            elif session.busy:
                session.idle_since = None
                session.last_active = now  # busy with a request that no open response waits for
            elif session.idle_since is None:
                session.idle_since = now
            elif now - session.idle_since >= limits.idle_ttl:
                self.close_soon(session, "idle_ttl")

    async def _reap_forever(self) -> None:
        interval = min(max(self._limits.idle_ttl * REAP_FRACTION, REAP_INTERVAL_MIN), REAP_INTERVAL_MAX)
        if self._limits.max_lifetime is not None:
            interval = min(interval, max(self._limits.max_lifetime * REAP_FRACTION, REAP_INTERVAL_MIN))
        while True:
            await asyncio.sleep(interval)
            try:
                self.reap()
            except Exception:  # the reaper must outlive any one bad session
                log.exception("session reaper pass failed")

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    @property
    def draining(self) -> bool:
        """Shutting down: no new session is taken, the live ones are served until they are ended."""
        return not self.accepting

    def begin_drain(self) -> None:
        """Shutdown, first step: refuse new sessions (503 shutting_down); live ones keep working."""
        self.accepting = False

    def end_sessions(self) -> None:
        """Shutdown, once the drain is over: every request still in flight is answered with an
        error saying the gateway is shutting down, every stream ends after its last event, and
        every child starts stopping (in parallel; `aclose` waits for them)."""
        self.accepting = False
        for session in self._admitted_sessions():
            session.router.close(SHUTDOWN_MESSAGE)
            if session.id in self._sessions:  # one still initializing is closed by its handler (its answer: 502)
                self.close_soon(session, "shutdown")

    def _admitted_sessions(self) -> list[Session]:
        """Every session counted under the caps: live ones and those still starting."""
        return [session for sessions in self._by_owner.values() for session in sessions]

    def end_streams(self) -> None:
        """Shutdown without a drain (the app alone): refuse new sessions, end every GET stream."""
        self.accepting = False
        for session in self._sessions.values():
            session.router.get_stream.finish()

    async def aclose(self) -> None:
        """Shutdown, last step: stop the reaper and every child, in parallel."""
        self.accepting = False
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        # One still spawning is left to its handler, which stops the child it gets back.
        admitted = [session for session in self._admitted_sessions() if session.child is not None]
        closing = [self.close(session, "shutdown") for session in admitted]
        await asyncio.gather(*closing, *self._closing, return_exceptions=True)


def exit_status(returncode: int | None) -> tuple[int | None, str | None]:
    """How a child ended: its exit code, or the name of the signal that ended it."""
    if returncode is None or returncode >= 0:
        return returncode, None
    try:
        return None, signal.Signals(-returncode).name
    except ValueError:
        return None, str(-returncode)
