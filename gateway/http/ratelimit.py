"""Rate limits: `limits`' moving window, keyed by client address or principal, refused with 429.

Each limit has a stable name and is checked at one place:
- `requests_ip` (every MCP request) and the `auth_failures_ip` gate, before authentication, so
  an address that keeps presenting bad tokens is refused without the verifier being asked (a
  token that verified lately still passes: strangers behind the same address cannot lock its
  users out; see `RecentlyVerified`);
- `public_ip` for discovery, health and metrics (the unauthenticated paths);
- `oauth_ip` for the built-in authorization server's endpoints (`/oauth/…`), and its sign-in
  form shares the failed-authentication gate: a pasted token that is refused counts as one;
- `requests_principal` once the caller is known (not for the anonymous principal);
- `sessions_ip`, `sessions_principal` and the global `spawn` rate when `initialize` would start
  a child (the expensive part).
IPv6 clients are counted per /64 (one host owns a whole /64), IPv4-mapped addresses as IPv4.

Storage is this process's memory by default (`LocalMovingWindow`: no background task and no
thread per hit, which `limits`' own async memory storage costs) or any `limits` async storage
with moving-window support, e.g. `async+redis://` shared by several replicas. Every storage call
has a deadline; when the storage fails, the configured policy decides: open (serve, log a
warning at most every `FAILURE_LOG_INTERVAL`) or closed (503). Every refusal passes through
`RateLimiter.refuse`, which audits it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import ipaddress
import logging
import math
import time
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Literal, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from limits import RateLimitItem
from limits.aio.storage import MovingWindowSupport, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from gateway import keys
from gateway.auth import ANONYMOUS
from gateway.auth.bearer import RecentlyVerified
from gateway.errors import GatewayError
from gateway.observe.audit import Audit
from gateway.paths import HEALTH_PATH, METRICS_PATH, OAUTH_PREFIX, READY_PATH, WELL_KNOWN_PREFIX

log = logging.getLogger("gateway.ratelimit")

LimitName = Literal[
    "requests_ip",
    "requests_principal",
    "auth_failures_ip",
    "sessions_ip",
    "sessions_principal",
    "public_ip",
    "oauth_ip",
    "spawn",
]
LIMIT_NAMES: Final[tuple[LimitName, ...]] = typing.get_args(LimitName)
# A storage call slower than this counts as a storage failure: a hanging Redis must not hang requests.
STORAGE_TIMEOUT: Final = 0.5
# Retry-After when the storage is down and the policy is closed.
STORAGE_RETRY_AFTER: Final = 5
# At most one "storage failing open" warning per this many seconds.
FAILURE_LOG_INTERVAL: Final = 30.0
# The local storage sweeps keys whose windows emptied every this many hits (bounded memory for
# addresses seen once, without a background task).
SWEEP_EVERY: Final = 4096
PUBLIC_PREFIXES: Final = (WELL_KNOWN_PREFIX, HEALTH_PATH, READY_PATH, METRICS_PATH)

Clock = Callable[[], float]
T = TypeVar("T")


def wall_clock() -> float:
    """Seconds since the epoch, as `limits` counts them (tests replace this module's `time`)."""
    return time.time()


def address_key(address: str) -> str:
    """The bucket of a client address: IPv6 by /64, IPv4-mapped IPv6 as IPv4, else as given."""
    if ":" not in address:
        return address  # IPv4 (or the test client's "127.0.0.1"): its own bucket
    try:
        parsed = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(parsed) >> 64 << 64, 64)))


class LocalMovingWindow(Storage, MovingWindowSupport):
    """`limits`' moving-window storage in this process's memory: a deque of hit times per key,
    pruned as it is used. Registers no URI scheme; the gateway builds it for `memory://`."""

    def __init__(self, clock: Clock = wall_clock) -> None:
        super().__init__(None, wrap_exceptions=False)
        self._clock = clock
        self._events: dict[str, collections.deque[float]] = {}
        self._expiry: dict[str, float] = {}
        self._counters: dict[str, tuple[int, float]] = {}
        self._hits = 0

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def _window(self, key: str, expiry: float, now: float) -> collections.deque[float]:
        events = self._events.get(key)
        if events is None:
            events = self._events[key] = collections.deque()
            self._expiry[key] = expiry
        cutoff = now - expiry
        while events and events[0] <= cutoff:
            events.popleft()
        return events

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.acquire_now(key, limit, expiry, amount)

    def acquire_now(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """`acquire_entry` without the coroutine: the gateway's own checks call this directly."""
        now = self._clock()
        self._hits += 1
        if self._hits % SWEEP_EVERY == 0:
            self._sweep(now)
        events = self._window(key, expiry, now)
        if amount > limit or len(events) + amount > limit:
            return False
        events.extend([now] * amount)
        return True

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return self.window_now(key, expiry)

    def window_now(self, key: str, expiry: int) -> tuple[float, int]:
        """The oldest hit in `key`'s window (now, when empty) and how many hits it holds."""
        now = self._clock()
        events = self._window(key, expiry, now)
        return (events[0] if events else now), len(events)

    def _sweep(self, now: float) -> None:
        for key in [key for key, events in self._events.items() if not events or events[-1] <= now - self._expiry[key]]:
            del self._events[key]
            del self._expiry[key]

    # Counters for `limits`' fixed-window strategies: part of the storage interface, small enough
    # to keep correct rather than refuse.
    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = self._clock()
        count, until = self._counters.get(key, (0, now + expiry))
        if until <= now:
            count, until = 0, now + expiry
        self._counters[key] = (count + amount, until)
        return count + amount

    async def get(self, key: str) -> int:
        count, until = self._counters.get(key, (0, 0.0))
        return count if until > self._clock() else 0

    async def get_expiry(self, key: str) -> float:
        return self._counters.get(key, (0, self._clock()))[1]

    async def check(self) -> bool:
        return True

    async def reset(self) -> int | None:
        cleared = len(self._events) + len(self._counters)
        self._events.clear()
        self._expiry.clear()
        self._counters.clear()
        return cleared

    async def clear(self, key: str) -> None:
        self._events.pop(key, None)
        self._expiry.pop(key, None)
        self._counters.pop(key, None)


def _local_check(local: LocalMovingWindow, item: RateLimitItem, name: str, key: str, *, count: bool) -> bool:
    """What `limits`' moving-window `hit` (count) and `test` answer, asked of local memory
    directly: the same storage keys, so `refuse` reads the same window through `limits`."""
    storage_key, expiry = item.key_for(name, key), item.get_expiry()
    if count:
        return local.acquire_now(storage_key, item.amount, expiry)
    return local.window_now(storage_key, expiry)[1] <= item.amount - 1


def build_storage(uri: str | None, clock: Clock = wall_clock) -> Storage:
    """The storage at `uri` (`Settings.ratelimit_shared_storage`); this process's memory for None."""
    if uri is None:
        return LocalMovingWindow(clock)
    storage = storage_from_string(uri, wrap_exceptions=True)
    if not isinstance(storage, Storage) or not isinstance(storage, MovingWindowSupport):
        raise ValueError(f"rate-limit storage {uri.split('://', maxsplit=1)[0]!r} has no async moving window")
    return storage


class RateLimiter:
    """The gateway's limits over one storage; `hit` refuses through `refuse`, in one place."""

    def __init__(
        self,
        storage: Storage,
        limits: Mapping[LimitName, list[RateLimitItem]],
        *,
        fail_open: bool,
        audit: Audit,
        clock: Clock = wall_clock,
    ) -> None:
        self.storage = storage
        self._strategy = MovingWindowRateLimiter(storage)
        self._limits = limits
        self._fail_open = fail_open
        self._audit = audit
        self._clock = clock
        self._last_failure_log = -math.inf
        # This process's memory answers within the call and cannot fail or hang: it is asked
        # directly, with no deadline to arm.
        self._local = storage if isinstance(storage, LocalMovingWindow) else None
        self._deadline = None if self._local is not None else STORAGE_TIMEOUT

    def configured(self, name: LimitName) -> bool:
        return bool(self._limits.get(name))

    async def hit(self, name: LimitName, key: str, *, always_open: bool = False) -> None:
        """Count one event against limit `name` for `key`; raise the refusal when it is spent.

        `always_open` serves the request when the storage fails, whatever the policy (health and
        discovery must answer while the storage is down: readiness reports it).
        """
        await self._check(name, key, count=True, always_open=always_open)

    async def spent(self, name: LimitName, key: str, *, unless: Callable[[], bool] | None = None) -> None:
        """Refuse now if limit `name` is already spent for `key`, without counting anything, unless
        `unless` (asked only then) exempts this request."""
        await self._check(name, key, count=False, always_open=False, unless=unless)

    async def _check(
        self, name: LimitName, key: str, *, count: bool, always_open: bool, unless: Callable[[], bool] | None = None
    ) -> None:
        check = self._strategy.hit if count else self._strategy.test
        for item in self._limits.get(name, ()):
            if self._local is not None:
                allowed = _local_check(self._local, item, name, key, count=count)
            else:
                try:
                    allowed = await self._ask(check(item, name, key))
                except (StorageError, TimeoutError, OSError) as exc:
                    self._storage_failed(exc, always_open=always_open)
                    return
            if not allowed:
                if unless is not None and unless():
                    return
                await self.refuse(name, key, item)

    async def _ask(self, call: Awaitable[T]) -> T:
        """The storage's answer, within the storage deadline when it has one."""
        if self._deadline is None:
            return await call
        async with asyncio.timeout(self._deadline):
            return await call

    async def refuse(self, name: LimitName, key: str, item: RateLimitItem) -> None:
        """Audit the block and raise the 429 (503 for the global spawn rate) that reports it."""
        reset_in = float(item.get_expiry())
        try:
            stats = await self._ask(self._strategy.get_window_stats(item, name, key))
            reset_in = max(stats.reset_time - self._clock(), 0.0)
        except (StorageError, TimeoutError, OSError):
            pass  # the window's full length is a safe upper bound
        retry_after = max(math.ceil(reset_in), 1)
        log.info("rate limit reached", extra={"limit": name, "key": key})
        self._audit.record("ratelimit.block", limit=name, policy=str(item), retry_after=retry_after)
        headers = {
            "RateLimit-Limit": str(item.amount),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(retry_after),
            "RateLimit-Policy": f"{item.amount};w={item.get_expiry()}",
        }
        if name == "spawn":
            raise GatewayError(
                "spawn_rate_limited",
                "The gateway is starting too many sessions; try again shortly",
                retry_after=retry_after,
                headers=headers,
            )
        raise GatewayError(
            "rate_limited", f"Rate limit reached ({name}); try again later", retry_after=retry_after, headers=headers
        )

    def _storage_failed(self, exc: BaseException, *, always_open: bool = False) -> None:
        if not (self._fail_open or always_open):
            log.error("rate-limit storage failed; refusing (fail closed): %s", type(exc).__name__)
            raise GatewayError(
                "ratelimit_unavailable",
                "Rate limiting is unavailable; try again later",
                retry_after=STORAGE_RETRY_AFTER,
            ) from None
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL:
            self._last_failure_log = now
            log.warning("rate-limit storage failed; serving without limits (fail open): %s", type(exc).__name__)

    async def healthy(self) -> bool:
        try:
            async with asyncio.timeout(STORAGE_TIMEOUT):
                return bool(await self.storage.check())
        except Exception:  # any failure to answer is "not healthy"
            return False

    @property
    def fails_closed(self) -> bool:
        return not self._fail_open


def ip_middleware(mcp_path: str, verified: RecentlyVerified | None = None) -> Middleware:
    """Per-address limits, before authentication: requests, the failed-authentication gate (which
    a token in `verified` passes), and the public paths. Counts a failed authentication when a
    presented credential is refused."""

    @web.middleware
    async def limit_by_address(request: web.Request, handler: Handler) -> web.StreamResponse:
        limiter = request.app[keys.LIMITER]
        if request.method == "OPTIONS":
            return await handler(request)
        address = address_key(request[keys.CLIENT_IP])
        if request.path == mcp_path:
            verifying = request.app[keys.VERIFIER] is not None
            if verifying:
                recognised = None if verified is None else functools.partial(verified.recognises, request)
                await limiter.spent("auth_failures_ip", address, unless=recognised)
            await limiter.hit("requests_ip", address)
            try:
                return await handler(request)
            except GatewayError as error:
                presented = "Authorization" in request.headers
                if verifying and presented and error.code in ("unauthorized", "bad_authorization"):
                    await _count_failure(limiter, address)
                raise
        if request.path.startswith(PUBLIC_PREFIXES):
            await limiter.hit("public_ip", address, always_open=True)
        elif request.path.startswith(OAUTH_PREFIX):
            await limiter.hit("oauth_ip", address)
        return await handler(request)

    return limit_by_address


async def _count_failure(limiter: RateLimiter, address: str) -> None:
    # The refusal being answered is the 401; reaching the limit shows on the next request.
    with contextlib.suppress(GatewayError):
        await limiter.hit("auth_failures_ip", address)


def principal_middleware(mcp_path: str) -> Middleware:
    """Per-principal request limit, once authentication has named the caller."""

    @web.middleware
    async def limit_by_principal(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == mcp_path and request.method != "OPTIONS":
            principal = request[keys.PRINCIPAL]
            if principal is not ANONYMOUS:
                await request.app[keys.LIMITER].hit("requests_principal", principal.key)
        return await handler(request)

    return limit_by_principal


async def session_creation(request: web.Request) -> None:
    """The limits on starting a session: per address, per principal, then the global spawn rate."""
    limiter = request.app[keys.LIMITER]
    await limiter.hit("sessions_ip", address_key(request[keys.CLIENT_IP]))
    principal = request[keys.PRINCIPAL]
    if principal is not ANONYMOUS:
        await limiter.hit("sessions_principal", principal.key)
    await limiter.hit("spawn", "gateway")
