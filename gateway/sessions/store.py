"""The session store: creation under caps, lookup by id, closing, and the idle reaper.

Invariants:
- A session id is 256 bits from the OS CSPRNG in URL-safe base64: visible ASCII only.
- A session is findable by id only after its child answered `initialize` successfully, and stops
  being findable before its child is stopped, so no request ever reaches a stopping child.
- The idle clock of a session runs only while nothing is in flight and none of its HTTP
  responses is open. One reaper task ends sessions past their idle TTL or absolute lifetime.
- Sessions never exceed `max_sessions`, nor `max_per_principal` for one principal, nor
  `max_per_address` for one client address (an IPv6 /64), counting the
  ones still starting.
- A session belongs to the principal that created it: presented by anyone else, its id is
  answered as unknown.
- Every child started is audited once as `child.spawn` and once as `child.exit`; every published
  session once as `session.open` and once as `session.close`, with the reason it ended.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace

from gateway.audit import Audit
from gateway.auth import ANONYMOUS, Principal
from gateway.auth.identity import IdentityIssuer
from gateway.errors import GatewayError
from gateway.sessions.child import Child, ChildSpec
from gateway.sessions.guard import OrphanGuard
from gateway.sessions.router import Router

log = logging.getLogger("gateway.sessions")

SESSION_ID_BYTES = 32
# The reaper wakes this often relative to the idle TTL, within these bounds (seconds).
REAP_FRACTION = 0.25
REAP_INTERVAL_MIN = 0.05
REAP_INTERVAL_MAX = 5.0
# Retry-After for a refusal at the global cap: a session slot frees when any client leaves.
CAPACITY_RETRY_AFTER = 5


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_sessions: int
    max_per_principal: int
    max_per_address: int
    idle_ttl: float
    max_lifetime: float | None
    request_timeout: float
    violation_limit: int


class Session:
    """One client session: its child process, its router, its clocks."""

    __slots__ = (
        "active",
        "address",
        "child",
        "client_ip",
        "closing",
        "created",
        "id",
        "idle_since",
        "owner",
        "principal",
        "router",
    )

    def __init__(self, session_id: str, principal: Principal, router: Router, client_ip: str, address: str) -> None:
        self.id = session_id
        self.client_ip = client_ip
        self.address = address  # the bucket counted against max_per_address
        self.principal = principal
        self.owner = principal.key  # sessions are never credentials: each belongs to one principal
        self.router = router
        self.child: Child | None = None
        self.created = time.monotonic()
        self.idle_since: float | None = None
        self.active = 0  # open HTTP responses
        self.closing = False

    @property
    def protocol_version(self) -> str | None:
        return self.router.protocol_version

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    @property
    def busy(self) -> bool:
        return self.active > 0 or self.router.in_flight

    def enter(self) -> None:
        self.active += 1
        self.idle_since = None

    def leave(self) -> None:
        self.active -= 1
        if not self.busy:
            self.idle_since = time.monotonic()

    def __repr__(self) -> str:
        return f"Session({self.id[:8]}…, pid={self.child.pid if self.child else None})"


class SessionStore:
    """All live sessions of this gateway process."""

    def __init__(
        self,
        spec: ChildSpec,
        limits: SessionLimits,
        guard: OrphanGuard | None,
        identity: IdentityIssuer | None = None,
        audit: Audit | None = None,
    ) -> None:
        self._spec = spec
        self._audit = audit if audit is not None else Audit(None)
        self._identity = identity
        self._limits = limits
        self._guard = guard
        self._sessions: dict[str, Session] = {}
        self._per_owner: Counter[str] = Counter()  # live and starting sessions of each principal
        self._per_address: Counter[str] = Counter()  # … and of each client address bucket
        self._starting = 0
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

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def get(self, session_id: str, owner: str) -> Session | None:
        """The session, if it is live and belongs to `owner` (anyone else is told it does not exist)."""
        session = self._sessions.get(session_id)
        if session is None or session.closing or not hmac.compare_digest(session.owner, owner):
            return None
        return session

    async def open(
        self, principal: Principal, token: str | None = None, client_ip: str = "", address: str | None = None
    ) -> Session:
        """Spawn the child of a new, not yet published session for `principal`.

        `token` is the bearer token it authenticated with, for configured token-to-environment;
        `address` the bucket the client's address is counted in (default: the address itself).
        """
        owner = principal.key
        if not self.accepting:
            raise GatewayError("shutting_down", "The gateway is shutting down", retry_after=CAPACITY_RETRY_AFTER)
        if len(self._sessions) + self._starting >= self._limits.max_sessions:
            raise GatewayError(
                "too_many_sessions",
                "The gateway is at its session limit; try again later",
                retry_after=CAPACITY_RETRY_AFTER,
            )
        # Without authentication every client is the same anonymous principal: only the global
        # cap can tell them apart.
        if principal is not ANONYMOUS and self._per_owner[owner] >= self._limits.max_per_principal:
            raise GatewayError(
                "too_many_sessions_for_principal",
                "Too many open sessions for this principal; end one (DELETE) or try again later",
                retry_after=CAPACITY_RETRY_AFTER,
            )
        address = client_ip if address is None else address
        if self._per_address[address] >= self._limits.max_per_address:
            raise GatewayError(
                "too_many_sessions_for_address",
                "Too many open sessions from this address; end one (DELETE) or try again later",
                retry_after=CAPACITY_RETRY_AFTER,
            )
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
            on_close=on_close,
            on_violation=on_violation,
        )
        session = Session(session_id, principal, router, client_ip, address)
        self._starting += 1
        self._per_owner[owner] += 1
        self._per_address[address] += 1
        try:
            spec = self._spec
            if self._identity is not None:
                spec = replace(spec, env={**spec.env, **self._identity.environment(principal, token)})
            started = time.monotonic()
            child = await Child.spawn(spec, router, self._guard, label)
        except OSError as exc:
            self._release(session)
            log.error("cannot start the MCP server %r: %s", self._spec.argv[0], exc, extra={"session": label})
            raise GatewayError("upstream_failed", "The MCP server could not be started") from None
        finally:
            self._starting -= 1
        session.child = child
        router.child = child
        self._children += 1
        spawn_ms = round((time.monotonic() - started) * 1000, 3)
        self._audit.record("child.spawn", session=session, command=self._spec.argv[0], spawn_ms=spawn_ms)
        log.info("session starting", extra={"session": label, "pid": child.pid})
        return session

    def publish(self, session: Session) -> None:
        self._sessions[session.id] = session
        self._audit.record("session.open", session=session, protocol_version=session.protocol_version)
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
        if session.closing:
            return
        session.closing = True
        published = self._sessions.pop(session.id, None) is not None
        self._release(session)
        session.router.close(reason)
        if published:
            lasted = round(time.monotonic() - session.created, 3)
            self._audit.record("session.close", session=session, reason=reason, duration_s=lasted)
        code = None
        if session.child is not None:
            try:
                code = await session.child.stop()
            finally:
                self._children -= 1
            exit_code, signal_name = exit_status(code)
            self._audit.record("child.exit", session=session, reason=reason, exit_code=exit_code, signal=signal_name)
        log.info("session closed", extra={"session": session.id[:8], "reason": reason, "exit_code": code})

    def _release(self, session: Session) -> None:
        for counter, key in ((self._per_owner, session.owner), (self._per_address, session.address)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

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

    def end_streams(self) -> None:
        """Shutdown, first step: refuse new sessions and end every standalone GET stream."""
        self.accepting = False
        for session in self._sessions.values():
            session.router.get_stream.finish()

    async def aclose(self) -> None:
        """Shutdown, last step: stop the reaper and every child, in parallel."""
        self.accepting = False
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        closing = [self.close(session, "shutdown") for session in list(self._sessions.values())]
        await asyncio.gather(*closing, *self._closing, return_exceptions=True)


def exit_status(returncode: int | None) -> tuple[int | None, str | None]:
    """How a child ended: its exit code, or the name of the signal that ended it."""
    if returncode is None or returncode >= 0:
        return returncode, None
    try:
        return None, signal.Signals(-returncode).name
    except ValueError:
        return None, str(-returncode)
