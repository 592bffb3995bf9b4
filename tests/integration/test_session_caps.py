"""Session caps through the real app, on a store clock the test moves (no sleeps): abandoned idle
sessions give way to newcomers at every cap, least recently active first, audited and counted as
`evicted`; busy ones (a request in flight, a stream open) and starting ones never do, and the
refusal's `Retry-After` says when one certainly could; a full gateway reports it on `/ready`;
the absolute lifetime ends a session that holds its stream open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from aiohttp.web import Application

from gateway import keys
from gateway.auth.static import digest_of
from gateway.sessions import store as store_module
from gateway.sessions.store import SessionStore
from tests.support.mcp import LATEST, Mcp, read_event
from tests.support.types import Gateway
from tests.support.waits import WAIT, eventually

TOKENS: Final = {name: f"{name}-caps-token-0123456789" for name in ("alice", "bob", "carol")}
PUBLIC: Final = "https://mcp.example.com"
PROXY: Final = {"trusted_proxies": ["127.0.0.1/32"]}  # the test client is the proxy: X-Real-IP names the client
INIT: Final = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": LATEST}}
PING: Final = {"jsonrpc": "2.0", "id": "p", "method": "ping"}
DEFAULT_LIFETIME: Final = 86400
EVICT_IDLE_AFTER: Final = 60


class Clock:
    """Stands in for the `time` module the session store reads."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(store_module, "time", fake)
    return fake


class Caller(Mcp):
    """A client presenting its own token (if any) from its own address."""

    def __init__(self, client: TestClient[Any, Application], token: str | None, ip: str) -> None:
        super().__init__(client)
        self.token = token
        self.ip = ip

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        token = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return super().headers({**token, "X-Real-IP": self.ip, **(extra or {})})


def static_auth(**extra: Any) -> dict[str, Any]:
    tokens = [{"principal": name, "sha256": digest_of(token)} for name, token in TOKENS.items()]
    return {"auth": "static", "static_tokens": tokens, "public_url": PUBLIC, **PROXY, **extra}


def sessions_of(mcp: Mcp) -> SessionStore:
    assert mcp.http.app is not None
    return mcp.http.app[keys.SESSIONS]


async def opened(mcp: Mcp, principal: str | None = None, ip: str = "192.0.2.10") -> Caller:
    caller = Caller(mcp.http, TOKENS[principal] if principal else None, ip)
    await caller.initialize()
    return caller


async def try_initialize(mcp: Mcp, principal: str | None = None, ip: str = "192.0.2.10") -> ClientResponse:
    caller = Caller(mcp.http, TOKENS[principal] if principal else None, ip)
    async with mcp.http.post("/mcp", json=INIT, headers=caller.headers()) as response:
        await response.read()
        return response


async def is_live(caller: Caller) -> bool:
    status, _ = await caller.post(PING)
    assert status in (200, 404)
    return status == 200


@contextlib.asynccontextmanager
async def stream_open(caller: Caller) -> AsyncIterator[ClientResponse]:
    """The caller's GET stream, open (its session busy) for the block."""
    async with caller.http.get(caller.path, headers=caller.headers()) as stream:
        assert stream.status == 200
        yield stream


@contextlib.asynccontextmanager
async def call_in_flight(caller: Caller) -> AsyncIterator[None]:
    """A tool call waiting for the client to answer the server's ping, in flight (its session
    busy) for the block; answered, and its response read, at the end."""
    call = {"jsonrpc": "2.0", "id": "c", "method": "tools/call", "params": {"name": "ping_client"}}
    async with caller.http.post(caller.path, json=call, headers=caller.headers()) as stream:
        _, ping = await read_event(stream)
        yield
        assert (await caller.post({"jsonrpc": "2.0", "id": ping["id"], "result": {}}))[0] == 202
        _, response = await read_event(stream)
        assert response["id"] == "c"


async def ready(mcp: Mcp) -> tuple[int, dict[str, Any]]:
    async with mcp.http.get("/ready") as response:
        return response.status, await response.json()


def closes(log: Path, reason: str) -> list[str]:
    """The session labels of every `session.close` audit line with `reason`."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line]
    return [line["session"] for line in lines if line["event"] == "session.close" and line["reason"] == reason]


async def evicted_count(mcp: Mcp) -> float:
    async with mcp.http.get("/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith('mcp_gateway_sessions_closed_total{reason="evicted"}'):
                return float(line.split()[-1])
    return 0.0


# --- the caller's own caps ---------------------------------------------------------------------

# The settings, and who opens the n-th session: its principal (None: anonymous) and address.
Callers = Callable[[int], tuple[str | None, str]]
CALLER_CAPS: Final[dict[str, tuple[dict[str, Any], Callers]]] = {
    # One principal, from a new address each time: its own cap.
    "per-principal": (static_auth(max_sessions_per_principal=3), lambda n: ("alice", f"192.0.2.{n}")),
    # Anonymous callers from one /64: the address cap.
    "per-address": ({**PROXY, "max_sessions_per_ip": 3}, lambda n: (None, f"2001:db8:0:1::{n}")),
}


@pytest.mark.parametrize("cap", CALLER_CAPS)
async def test_abandoned_sessions_give_way_least_recently_active_first(
    gateway: Gateway, clock: Clock, tmp_path: Path, cap: str
) -> None:
    settings, caller = CALLER_CAPS[cap]
    log = tmp_path / "audit.jsonl"
    mcp = await gateway(audit_log=str(log), **settings)
    abandoned = []
    for n in range(1, 4):
        clock.now += 1
        abandoned.append(await opened(mcp, *caller(n)))
    clock.now += 1
    assert await is_live(abandoned[0])  # the oldest session was the most recently active one

    newcomer = await opened(mcp, *caller(4))  # at the cap: admitted all the same

    assert [await is_live(session) for session in abandoned] == [True, False, True]
    assert await is_live(newcomer)
    assert closes(log, "evicted") == [str(abandoned[1].session_id)[:8]]
    assert await evicted_count(mcp) == 1


@pytest.mark.parametrize("cap", CALLER_CAPS)
async def test_busy_sessions_never_give_way_and_retry_after_says_when_one_could(
    gateway: Gateway, clock: Clock, cap: str
) -> None:
    settings, caller = CALLER_CAPS[cap]
    mcp = await gateway(request_timeout=40, **{**settings, "max_sessions_per_principal": 2, "max_sessions_per_ip": 2})
    streaming, calling = await opened(mcp, *caller(1)), await opened(mcp, *caller(2))
    async with stream_open(streaming):
        async with call_in_flight(calling):
            refused = await try_initialize(mcp, *caller(3))
            assert refused.status == 429
            assert "all in use" in (await refused.json())["error"]["message"]
            # The stream may stay open for the whole lifetime; the call is answered or timed out
            # within the request timeout, and then its session is idle and gives way.
            assert refused.headers["Retry-After"] == "40"
        newcomer = await opened(mcp, *caller(3))  # the call ended: its session gave way
        assert (await is_live(streaming), await is_live(calling)) == (True, False)
        async with stream_open(newcomer):
            refused = await try_initialize(mcp, *caller(4))
            assert refused.status == 429
            assert refused.headers["Retry-After"] == str(DEFAULT_LIFETIME)  # two streams: their lifetime


async def test_a_session_still_starting_counts_and_never_gives_way(gateway: Gateway) -> None:
    silent = [sys.executable, "-c", "import time; time.sleep(60)"]
    mcp = await gateway(command=silent, request_timeout=3, max_sessions_per_ip=1, **PROXY)
    starting = asyncio.ensure_future(try_initialize(mcp))
    assert await eventually(lambda: sessions_of(mcp).children == 1)
    refused = await try_initialize(mcp)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "3"  # its initialize is answered (or given up) by then
    assert (await starting).status == 502


async def test_at_the_address_cap_a_neighbour_gives_way_only_once_idle_long_enough(
    gateway: Gateway, clock: Clock
) -> None:
    """Behind one NAT, other principals' sessions are not the caller's to end at once."""
    mcp = await gateway(**static_auth(max_sessions_per_ip=2))
    alice, bob = await opened(mcp, "alice"), await opened(mcp, "bob")
    clock.now += EVICT_IDLE_AFTER - 10
    assert await is_live(alice)
    refused = await try_initialize(mcp, "carol")
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "10"  # when bob's session will have been idle long enough
    clock.now += 10
    await opened(mcp, "carol")
    assert (await is_live(alice), await is_live(bob)) == (True, False)
    await opened(mcp, "alice")  # alice's own session gives way to her at once
    assert not await is_live(alice)


# --- the global cap ----------------------------------------------------------------------------


async def test_a_full_gateway_admits_by_ending_a_long_idle_session(
    gateway: Gateway, clock: Clock, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    mcp = await gateway(max_sessions=2, audit_log=str(log), **PROXY)
    first, second = await opened(mcp, ip="192.0.2.1"), await opened(mcp, ip="192.0.2.2")
    clock.now += 30
    assert await is_live(first)
    clock.now += 1
    refused = await try_initialize(mcp, ip="192.0.2.3")  # no session idle long enough yet
    assert refused.status == 503
    assert refused.headers["Retry-After"] == str(EVICT_IDLE_AFTER - 31)  # the second one's turn
    status, body = await ready(mcp)
    assert (status, body["ready"], body["sessions"], body["accepting_sessions"]) == (503, False, "full", True)
    clock.now += EVICT_IDLE_AFTER - 31
    status, body = await ready(mcp)
    assert (status, body["ready"], body["sessions"]) == (200, True, "ok")
    await opened(mcp, ip="192.0.2.3")
    assert (await is_live(first), await is_live(second)) == (True, False)
    assert closes(log, "evicted") == [str(second.session_id)[:8]]


async def test_a_gateway_full_of_busy_sessions_refuses_and_is_not_ready(gateway: Gateway, clock: Clock) -> None:
    mcp = await gateway(max_sessions=2, **PROXY)
    first, second = await opened(mcp, ip="192.0.2.1"), await opened(mcp, ip="192.0.2.2")
    async with stream_open(first), stream_open(second):
        clock.now += 2 * EVICT_IDLE_AFTER
        refused = await try_initialize(mcp, ip="192.0.2.3")
        assert refused.status == 503
        assert refused.headers["Retry-After"] == str(DEFAULT_LIFETIME - 2 * EVICT_IDLE_AFTER)
        status, body = await ready(mcp)
        assert (status, body["ready"], body["sessions"]) == (503, False, "full")
    assert await eventually(lambda: not any(session.busy for session in sessions_of(mcp)))
    clock.now += EVICT_IDLE_AFTER  # idle long enough since the streams ended
    await opened(mcp, ip="192.0.2.3")


# --- lifetime ----------------------------------------------------------------------------------


async def test_the_lifetime_ends_a_session_holding_its_stream_open(gateway: Gateway, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    mcp = await gateway(session_max_lifetime=0.5, sse_keepalive=0.1, audit_log=str(log))
    await mcp.initialize()
    async with mcp.http.get("/mcp", headers=mcp.headers()) as stream:
        assert stream.status == 200
        with pytest.raises(EOFError):
            await read_event(stream, timeout=WAIT)  # only keep-alives, until the session ends
    status, _ = await mcp.post(PING)
    assert status == 404
    assert await eventually(lambda: bool(closes(log, "lifetime")))
