"""Rate limits and session caps through the real app, on a clock the test moves (no sleeps):
each limit reached, refused with its headers and body, and reset; addresses and principals
counted apart; IPv6 grouped by /64; the failed-authentication gate keeping the verifier out."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from aiohttp import ClientResponse

from gateway import keys
from gateway.auth import bearer
from gateway.auth.bearer import VERIFIED_TOKEN_TTL
from gateway.auth.static import digest_of
from gateway.http import ratelimit
from gateway.http.ratelimit import address_key
from tests.support.mcp import LATEST, Mcp
from tests.support.types import Gateway

ALICE = "alice-ratelimit-token-0123456789"
BOB = "bob-ratelimit-token-9876543210"
PUBLIC = "https://mcp.example.com"
PROXY = {"trusted_proxies": ["127.0.0.1/32"]}  # the test client is the proxy: X-Real-IP names the client
INIT = {"jsonrpc": "2.0", "id": 7, "method": "initialize", "params": {"protocolVersion": LATEST, "capabilities": {}}}
PING = {"jsonrpc": "2.0", "id": 3, "method": "ping"}


class Clock:
    """Stands in for the `time` module the rate limiter reads."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(ratelimit, "time", fake)
    return fake


def static_auth(**extra: Any) -> dict[str, Any]:
    tokens = [
        {"principal": "alice", "sha256": digest_of(ALICE)},
        {"principal": "bob", "sha256": digest_of(BOB)},
    ]
    return {"auth": "static", "static_tokens": tokens, "public_url": PUBLIC, **extra}


async def post(mcp: Mcp, message: Any, *, ip: str = "203.0.113.5", token: str | None = None) -> ClientResponse:
    headers = mcp.headers({"X-Real-IP": ip})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with mcp.http.post("/mcp", json=message, headers=headers) as response:
        await response.read()
        return response


def assert_refused(response: ClientResponse, *, limit: int, window: int, retry_after: int, status: int = 429) -> None:
    assert response.status == status
    assert response.headers["Retry-After"] == str(retry_after)
    assert response.headers["RateLimit-Limit"] == str(limit)
    assert response.headers["RateLimit-Remaining"] == "0"
    assert response.headers["RateLimit-Reset"] == str(retry_after)
    assert response.headers["RateLimit-Policy"] == f"{limit};w={window}"


async def test_requests_per_address_reached_and_reset(gateway: Gateway, clock: Clock) -> None:
    mcp = await gateway(ratelimit_requests_ip="3/minute", audit_log="off", **PROXY)
    for _ in range(3):
        assert (await post(mcp, PING)).status == 400  # no session: counted, then refused on its merits
    clock.now += 20
    refused = await post(mcp, PING)
    assert_refused(refused, limit=3, window=60, retry_after=40)
    body = await refused.json()
    assert body["error"]["code"] == -32600
    assert "requests_ip" in body["error"]["message"]
    assert (await post(mcp, PING, ip="203.0.113.6")).status == 400  # another address has its own window
    clock.now += 40
    assert (await post(mcp, PING)).status == 400  # the window moved on


async def test_the_failed_authentication_gate_keeps_the_verifier_out(gateway: Gateway, clock: Clock) -> None:
    mcp = await gateway(**static_auth(ratelimit_auth_failures_ip="3/minute", **PROXY))
    assert (await post(mcp, INIT)).status == 401  # no credentials: not a failed authentication
    for _ in range(3):
        assert (await post(mcp, INIT, token="wrong-token-123")).status == 401
    refused = await post(mcp, INIT, token=ALICE)  # even a good token: refused before verifying
    assert_refused(refused, limit=3, window=60, retry_after=60)
    assert (await post(mcp, INIT, token=ALICE, ip="203.0.113.9")).status == 200
    clock.now += 60
    assert (await post(mcp, INIT, token=ALICE)).status == 200


def count_verifications(mcp: Mcp, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens the gateway's verifier is asked about from now on, in order."""
    app = mcp.http.app
    assert app is not None
    verifier = app[keys.VERIFIER]
    assert verifier is not None
    calls: list[str] = []
    original = type(verifier).verify

    async def counting(self: Any, token: str) -> Any:
        calls.append(token)
        return await original(self, token)

    monkeypatch.setattr(type(verifier), "verify", counting)
    return calls


async def test_the_gate_never_calls_the_verifier(
    gateway: Gateway, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    mcp = await gateway(**static_auth(ratelimit_auth_failures_ip="2/minute", **PROXY))
    calls = count_verifications(mcp, monkeypatch)
    for _ in range(2):
        assert (await post(mcp, INIT, token="bad-token-xyz")).status == 401
    assert len(calls) == 2
    for _ in range(5):
        assert (await post(mcp, INIT, token="bad-token-xyz")).status == 429
    assert len(calls) == 2


async def test_a_token_that_verified_lately_passes_a_spent_gate(
    gateway: Gateway, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strangers behind alice's address spend its gate: alice, verified a moment ago, is still
    served; unknown tokens (and bob's, which never verified here) wait, never verified."""
    monkeypatch.setattr(bearer, "time", clock)  # the memory of verified tokens, on the same clock
    mcp = await gateway(**static_auth(ratelimit_auth_failures_ip="3/day", **PROXY))
    calls = count_verifications(mcp, monkeypatch)
    assert (await post(mcp, INIT, token=ALICE)).status == 200
    for _ in range(3):
        assert (await post(mcp, INIT, token="wrong-token-123")).status == 401
    calls.clear()
    assert_refused(await post(mcp, INIT, token="another-guess-456"), limit=3, window=86400, retry_after=86400)
    assert (await post(mcp, INIT, token=BOB)).status == 429
    assert (await post(mcp, INIT, token=ALICE)).status == 200
    assert calls == [ALICE]
    clock.now += VERIFIED_TOKEN_TTL  # not used for that long: a stranger's token like any other
    assert (await post(mcp, INIT, token=ALICE)).status == 429
    assert calls == [ALICE]


async def test_principals_and_addresses_are_counted_apart(gateway: Gateway, clock: Clock) -> None:
    mcp = await gateway(
        **static_auth(ratelimit_requests_principal="2/minute", ratelimit_requests_ip="4/minute", **PROXY)
    )
    # One principal from two addresses: its own limit applies across both.
    assert (await post(mcp, PING, token=ALICE, ip="198.51.100.1")).status == 400
    assert (await post(mcp, PING, token=ALICE, ip="198.51.100.2")).status == 400
    assert (await post(mcp, PING, token=ALICE, ip="198.51.100.3")).status == 429
    # Two principals from one address: each has its own allowance, the address has one for all.
    assert (await post(mcp, PING, token=BOB, ip="198.51.100.1")).status == 400
    assert (await post(mcp, PING, token=BOB, ip="198.51.100.1")).status == 400
    assert (await post(mcp, PING, token=BOB, ip="198.51.100.1")).status == 429  # bob's own limit
    assert (await post(mcp, PING, token=ALICE, ip="198.51.100.1")).status == 429  # the address's limit
    clock.now += 60
    assert (await post(mcp, PING, token=ALICE, ip="198.51.100.1")).status == 400


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", True),
        ("2001:db8:1:2::1", "2001:db8:1:3::1", False),
        ("::ffff:192.0.2.1", "192.0.2.1", True),
        ("192.0.2.1", "192.0.2.2", False),
    ],
)
async def test_ipv6_is_grouped_by_64(gateway: Gateway, clock: Clock, first: str, second: str, *, shared: bool) -> None:
    assert (address_key(first) == address_key(second)) is shared
    mcp = await gateway(ratelimit_requests_ip="1/minute", audit_log="off", **PROXY)
    assert (await post(mcp, PING, ip=first)).status == 400
    assert (await post(mcp, PING, ip=second)).status == (429 if shared else 400)


async def test_public_paths_per_address(gateway: Gateway, clock: Clock) -> None:
    mcp = await gateway(ratelimit_public_ip="2/minute", audit_log="off", **PROXY)
    for path in ("/health", "/.well-known/oauth-protected-resource/mcp"):
        async with mcp.http.get(path, headers={"X-Real-IP": "192.0.2.50"}) as response:
            assert response.status in (200, 404)
    async with mcp.http.get("/ready", headers={"X-Real-IP": "192.0.2.50"}) as response:
        assert_refused(response, limit=2, window=60, retry_after=60)
    clock.now += 60
    async with mcp.http.get("/ready", headers={"X-Real-IP": "192.0.2.50"}) as response:
        assert response.status == 200


async def test_session_creations_per_address_and_principal(gateway: Gateway, clock: Clock) -> None:
    mcp = await gateway(
        **static_auth(ratelimit_sessions_ip="2/minute", ratelimit_sessions_principal="3/minute", **PROXY)
    )
    assert (await post(mcp, INIT, token=ALICE, ip="192.0.2.1")).status == 200
    assert (await post(mcp, INIT, token=ALICE, ip="192.0.2.1")).status == 200
    refused = await post(mcp, INIT, token=ALICE, ip="192.0.2.1")
    assert_refused(refused, limit=2, window=60, retry_after=60)
    assert (await refused.json())["id"] == 7  # the refusal answers the initialize request
    assert (await post(mcp, INIT, token=ALICE, ip="192.0.2.2")).status == 200
    refused = await post(mcp, INIT, token=ALICE, ip="192.0.2.3")  # alice's third counted start
    assert refused.status == 429
    assert "sessions_principal" in (await refused.json())["error"]["message"]
    assert (await post(mcp, INIT, token=BOB, ip="192.0.2.3")).status == 200
    clock.now += 60
    assert (await post(mcp, INIT, token=ALICE, ip="192.0.2.1")).status == 200


async def test_the_spawn_rate_is_gateway_wide_and_not_the_callers_fault(gateway: Gateway, clock: Clock) -> None:
    mcp = await gateway(ratelimit_spawn="2/second", audit_log="off", **PROXY)
    assert (await post(mcp, INIT, ip="192.0.2.1")).status == 200
    assert (await post(mcp, INIT, ip="192.0.2.2")).status == 200
    refused = await post(mcp, INIT, ip="192.0.2.3")
    assert_refused(refused, limit=2, window=1, retry_after=1, status=503)
    clock.now += 1
    assert (await post(mcp, INIT, ip="192.0.2.3")).status == 200


async def test_concurrent_sessions_per_address(gateway: Gateway) -> None:
    mcp = await gateway(max_sessions_per_ip=2, audit_log="off", **PROXY)
    first = await post(mcp, INIT, ip="2001:db8:0:1::1")
    second = await post(mcp, INIT, ip="2001:db8:0:1::2")
    assert second.status == 200
    async with contextlib.AsyncExitStack() as streams:
        # Both busy with their streams open (idle ones would give way: see test_session_caps.py).
        for ip, opened in (("2001:db8:0:1::1", first), ("2001:db8:0:1::2", second)):
            headers = mcp.headers({"X-Real-IP": ip, "Mcp-Session-Id": opened.headers["Mcp-Session-Id"]})
            stream = await streams.enter_async_context(mcp.http.get("/mcp", headers=headers))
            assert stream.status == 200
        refused = await post(mcp, INIT, ip="2001:db8:0:1::3")  # the same /64
        assert refused.status == 429
        assert refused.headers["Retry-After"]
        assert (await post(mcp, INIT, ip="2001:db8:0:2::1")).status == 200
        headers = mcp.headers({"X-Real-IP": "2001:db8:0:1::1", "Mcp-Session-Id": first.headers["Mcp-Session-Id"]})
        async with mcp.http.delete("/mcp", headers=headers) as response:
            assert response.status == 204
        assert (await post(mcp, INIT, ip="2001:db8:0:1::3")).status == 200


async def test_blocks_are_audited_and_counted(gateway: Gateway, clock: Clock, tmp_path: Any) -> None:
    log = tmp_path / "audit.jsonl"
    mcp = await gateway(ratelimit_requests_ip="1/minute", audit_log=str(log), **PROXY)
    await post(mcp, PING)
    assert (await post(mcp, PING)).status == 429
    (block,) = [json.loads(line) for line in log.read_text().splitlines() if '"ratelimit.block"' in line]
    assert block["limit"] == "requests_ip"
    assert block["client_ip"] == "203.0.113.5"
    assert block["retry_after"] == 60
    async with mcp.http.get("/metrics") as response:
        assert 'mcp_gateway_ratelimit_blocks_total{limit="requests_ip"} 1.0' in await response.text()
