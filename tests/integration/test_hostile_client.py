"""What a hostile client tried against a live session, each attack replayed as it was found, with
what must be true instead: real app, real echo children, bounded waits.

- duplicate envelope keys used to smuggle an id past the splice and bypass the tool policy;
- gateway ids a client or child could predict, and the policy's own list in the clients' id space;
- cancellation storms that scanned every pending request, unbounded batches and in-flight counts;
- non-standard JSON (NaN, Infinity, 1e400, lone surrogates, absurd nesting) that leaked pending
  state forever, and client inputs that produced a 500 (and once, a 500 for a call that had run);
- HEAD streaming a GET's keep-alives forever.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import itertools
import json
import logging
import statistics
import time
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway import create_app, keys
from gateway.app import SERVER_OPTIONS
from gateway.auth.static import digest_of
from gateway.sessions.router import ASK_ID_PREFIX, GATEWAY_ID_BITS
from tests.support.mcp import LARGE_BODY, Mcp, text_of
from tests.support.settings import make_settings
from tests.support.waits import WAIT, eventually

NO_SCOPE = "no-scope-token-0123456789"
ADMIN = "admin-token-0123456789"
DESTRUCTIVE = "tools:destructive"


class TokenMcp(Mcp):
    def __init__(self, mcp: Mcp, token: str) -> None:
        super().__init__(mcp.http)
        self.token = token

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return super().headers({"Authorization": f"Bearer {self.token}", **(extra or {})})


def policed(**extra: Any) -> dict[str, Any]:
    """Static tokens (one with no scope, one with every scope) and a destructive-tool scope."""
    tokens = [
        {"principal": "nobody", "sha256": digest_of(NO_SCOPE)},
        {"principal": "admin", "sha256": digest_of(ADMIN), "scopes": [DESTRUCTIVE]},
    ]
    return {"auth": "static", "static_tokens": tokens, "tool_scope_destructive": DESTRUCTIVE, **extra}


async def post_raw(mcp: Mcp, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = io.BytesIO(body) if len(body) > LARGE_BODY else body  # aiohttp streams large bodies
    async with mcp.http.post(mcp.path, data=data, headers=mcp.headers(headers)) as response:
        text = await response.text()
        if response.content_type == "text/event-stream":
            events = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
            return response.status, [json.loads(event) for event in events if event]
        return response.status, json.loads(text) if text else None


def pending_of(mcp: Mcp) -> int:
    """Requests in flight across every session of the app behind `mcp` (introspection)."""
    return sum(len(session.router._pending) for session in mcp.http.app[keys.SESSIONS])


# --- 1. duplicate keys, predictable ids, a policy that failed open -------------------------------


async def test_a_duplicate_id_cannot_smuggle_a_destructive_call_past_the_policy(aiohttp_client: AiohttpClient) -> None:
    """The attack: on a fresh session, a ping whose id is repeated races a destructive call; the
    splice rewrote the first id, the child honoured the last, and its answer passed for the
    policy's own tools/list. Ten times, each on a fresh session: the ping is refused as invalid,
    the call gets 403, and the child never sees it."""
    app = create_app(make_settings(**policed()))
    client = await aiohttp_client(app)
    for _ in range(10):
        mcp = TokenMcp(Mcp(client), NO_SCOPE)
        await mcp.initialize()
        smuggler = b'{"jsonrpc":"2.0","id":3,"method":"ping","id":3}'
        call = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "delete_note", "arguments": {}}}
        (ping_status, ping), (call_status, answer) = await asyncio.gather(
            post_raw(mcp, smuggler), post_raw(mcp, json.dumps(call).encode())
        )
        assert (ping_status, ping["error"]["code"]) == (400, -32600), ping
        assert "duplicate key 'id'" in ping["error"]["message"]
        assert call_status == 403, answer
        received = json.loads(text_of(await mcp.call_tool("received")))
        assert ["tools/call", "delete_note"] not in received
        assert ["ping", None] not in received
        assert await mcp.delete() == 204


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"delete_note"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping"}',
        b'{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{},"params":{}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a","text":"b"}}}',
        b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1,"requestId":2}}',
        b'{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"delete_note"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_note","Name":"delete_note"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name\\u0000":"delete_note","name":"echo"}}',
    ],
    ids=[
        "params-name",
        "method",
        "jsonrpc",
        "params",
        "deep-argument",
        "notification",
        "method-by-case",
        "name-by-case",
        "name-with-nul",
    ],
)
async def test_a_repeated_key_anywhere_is_refused_before_the_child_sees_it(gateway: Any, body: bytes) -> None:
    mcp: Mcp = await gateway()
    await mcp.initialize()
    status, answer = await post_raw(mcp, body)
    assert (status, answer["error"]["code"]) == (400, -32600), answer
    assert "duplicate key" in answer["error"]["message"] or "differ only in" in answer["error"]["message"]
    assert json.loads(text_of(await mcp.call_tool("received"))) == [["initialize", None], ["tools/call", "received"]]


async def test_gateway_ids_are_unpredictable_and_the_gateways_own_requests_have_a_namespace_of_their_own(
    aiohttp_client: AiohttpClient,
) -> None:
    mcp = TokenMcp(Mcp(await aiohttp_client(create_app(make_settings(**policed())))), ADMIN)
    await mcp.initialize()
    for _ in range(5):
        await mcp.request("tools/call", {"name": "echo", "arguments": {"text": "x"}}, id=7)
    await mcp.call_tool("delete_note")  # unknown to the policy: the gateway lists the tools itself
    seen = json.loads(text_of(await mcp.call_tool("request_ids")))
    numbers = [value for value in seen if isinstance(value, int)]
    own = [value for value in seen if isinstance(value, str)]
    assert len(numbers) == len(set(numbers)) == 8  # initialize, five echoes, the call, this one
    assert all(0 <= value < 2**GATEWAY_ID_BITS for value in numbers)
    assert 7 not in numbers
    assert 0 not in numbers
    gaps = {b - a for a, b in itertools.pairwise(numbers)}
    assert gaps != {1}, "gateway ids must not be a counter"
    assert own
    assert all(value.startswith(ASK_ID_PREFIX) and len(value) > len(ASK_ID_PREFIX) + 8 for value in own)


@pytest.mark.parametrize(("token", "status"), [(NO_SCOPE, 403), (ADMIN, 200)], ids=["no-scope", "every-scope"])
async def test_the_policy_fails_closed_when_the_child_does_not_list_its_tools(
    aiohttp_client: AiohttpClient, token: str, status: int
) -> None:
    """A child whose tools/list answer is not a tool list: nothing is learned, so every tool counts
    as destructive — a caller without the scope is refused, one with it is served."""
    app = create_app(make_settings("--broken-list", **policed()))
    mcp = TokenMcp(Mcp(await aiohttp_client(app)), token)
    await mcp.initialize()
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_note", "arguments": {}}}
    answer_status, answer = await post_raw(mcp, json.dumps(call).encode())
    assert answer_status == status, answer


@pytest.mark.parametrize(
    "name", [["delete_note"], {"name": "delete_note"}, None, 7], ids=["list", "object", "null", "int"]
)
async def test_a_tool_name_that_is_not_a_string_is_refused_not_forwarded(
    aiohttp_client: AiohttpClient, name: object
) -> None:
    """A child may turn ["delete_note"] into "delete_note": with a policy on, such a call is
    refused by the gateway and never reaches the child."""
    mcp = TokenMcp(Mcp(await aiohttp_client(create_app(make_settings(**policed())))), ADMIN)
    await mcp.initialize()
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}}}
    status, answer = await post_raw(mcp, json.dumps(call).encode())
    assert (status, answer["error"]["code"]) == (200, -32602), answer
    assert ["tools/call", name] not in json.loads(text_of(await mcp.call_tool("received")))


async def test_a_tool_the_child_does_not_list_needs_every_scope(aiohttp_client: AiohttpClient) -> None:
    mcp = TokenMcp(Mcp(await aiohttp_client(create_app(make_settings(**policed())))), NO_SCOPE)
    await mcp.initialize()
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "no_such_tool", "arguments": {}}}
    status, _ = await post_raw(mcp, json.dumps(call).encode())
    assert status == 403


# --- 3. cancellation storms, batch and in-flight caps --------------------------------------------


async def test_a_batch_above_the_cap_and_requests_above_the_in_flight_cap_are_refused_clearly(gateway: Any) -> None:
    mcp: Mcp = await gateway(max_batch_size=10, max_requests_in_flight=4)
    await mcp.initialize("2025-03-26")
    batch = [{"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": n}} for n in range(11)]
    status, answer = await post_raw(mcp, json.dumps(batch).encode())
    assert (status, answer["error"]["code"]) == (400, -32600)
    assert "at most 10 messages" in answer["error"]["message"]
    hangs = [{"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "hang"}} for n in range(4)]
    holding = asyncio.create_task(post_raw(mcp, json.dumps(hangs).encode()))
    assert await eventually(lambda: pending_of(mcp) == 4)
    async with mcp.http.post(
        mcp.path, json={"jsonrpc": "2.0", "id": 9, "method": "ping"}, headers=mcp.headers()
    ) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "1"
        assert "in flight" in (await response.json())["error"]["message"]
    assert await mcp.delete() == 204
    status, answers = await asyncio.wait_for(holding, WAIT)
    assert {answer["error"]["code"] for answer in answers} == {-32000}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("calls", "batches", "batch", "caps"),
    [(5_000, 1, 50_000, "raised"), (256, 500, 100, "default")],
    ids=["as-found-caps-raised", "default-caps"],
)
async def test_a_cancellation_storm_costs_one_lookup_per_cancel_and_others_keep_being_served(
    gateway: Any, calls: int, batches: int, batch: int, caps: str
) -> None:
    """The attack as it was found: 5,000 calls in flight on a 2025-03-26 session, then one batch
    of 50,000 cancellations (every call cancelled ten times over), with the caps raised to let it
    through; and the most the default caps let through (256 in flight, batches of 100). Every call
    is cancelled at the child, no other session's child hears of it, and another session is
    answered all along; its ping latency during the storm is printed (never asserted: this machine
    is shared)."""
    settings = {"max_batch_size": batch, "max_requests_in_flight": calls} if caps == "raised" else {}
    mcp: Mcp = await gateway(ratelimit_requests_ip="", **settings)  # a flood, but not of requests: of work
    await mcp.initialize("2025-03-26")
    other: Mcp = Mcp(mcp.http)
    await other.initialize()
    hangs = [{"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "hang"}} for n in range(calls)]
    chunk = 100 if caps == "default" else calls
    holding = [
        asyncio.create_task(post_raw(mcp, json.dumps(hangs[start : start + chunk]).encode()))
        for start in range(0, calls, chunk)
    ]
    assert await eventually(lambda: pending_of(mcp) == calls, timeout=60)
    cancels = json.dumps(
        [
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": n % calls}}
            for n in range(batch)
        ]
    ).encode()

    async def storm() -> list[int]:
        return [(await post_raw(mcp, cancels))[0] for _ in range(batches)]

    latencies: list[float] = []
    storming = asyncio.create_task(storm())
    while not storming.done():
        started = time.perf_counter()
        await other.request("ping")
        latencies.append((time.perf_counter() - started) * 1000)
    assert set(await storming) == {202}
    assert json.loads(text_of(await other.call_tool("cancelled"))) == []
    assert await eventually(lambda: pending_of(mcp) == calls)  # cancelled requests get no answer
    assert await mcp.delete() == 204
    await asyncio.wait_for(asyncio.gather(*holding), WAIT)
    latencies.sort()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    print(
        f"\n[cancel storm, {caps} caps] {calls} in flight, {batches} x {batch} cancels: other session's ping "
        f"n={len(latencies)} p50={statistics.median(latencies):.1f} ms p99={p99:.1f} ms max={latencies[-1]:.1f} ms"
    )


async def test_cancellations_reach_the_child_under_the_gateway_id_of_each_request_with_that_id(gateway: Any) -> None:
    """Two POSTs in flight under the same client id: one cancellation cancels both at the child."""
    mcp: Mcp = await gateway()
    await mcp.initialize()
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "hang"}}
    held = [asyncio.create_task(post_raw(mcp, json.dumps(call).encode())) for _ in range(2)]
    assert await eventually(lambda: pending_of(mcp) == 2)
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}
    assert (await post_raw(mcp, json.dumps(cancel).encode()))[0] == 202
    seen = json.loads(text_of(await mcp.call_tool("cancelled")))
    assert len(seen) == 2
    assert all(entry["running"] for entry in seen)
    assert len({entry["requestId"] for entry in seen}) == 2
    assert 5 not in {entry["requestId"] for entry in seen}
    assert await mcp.delete() == 204
    await asyncio.wait_for(asyncio.gather(*held), WAIT)


# --- 4 and 8. poisoned requests, every client input a 4xx ----------------------------------------

POISONED = {
    "nan-id-last": b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo","arguments":{"x":NaN}},"id":1}',
    "infinity-id-last": b'{"jsonrpc":"2.0","method":"ping","params":{"x":-Infinity},"id":1}',
    "1e400-id-last": b'{"jsonrpc":"2.0","method":"ping","params":{"x":1e400},"id":1}',
    "surrogate-id-last": b'{"jsonrpc":"2.0","method":"ping","params":{"x":"\\udc00"},"id":1}',
    "surrogate-id-first": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"\\ud800"}}}'
    ),
    "nan-id-first": b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"x":NaN}}}',
    "deep": b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":' + b"[" * 100 + b"]" * 100 + b"}}",
    "very-deep": b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
    "nan-in-batch": b'[{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":NaN}}]',
    "huge-integer": b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":' + b"9" * 5000 + b"}}",
    "integer-beyond-a-double": b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":1' + b"0" * 400 + b"}}",
}


@pytest.mark.parametrize("body", POISONED.values(), ids=POISONED.keys())
async def test_non_standard_json_is_refused_before_anything_is_registered(
    gateway: Any, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    mcp: Mcp = await gateway(session_idle_ttl=1.0)
    await mcp.initialize("2025-03-26")
    status, answer = await post_raw(mcp, body)
    assert 400 <= status < 500, answer
    assert answer["error"]["code"] in (-32600, -32700)
    assert pending_of(mcp) == 0
    assert json.loads(text_of(await mcp.call_tool("received"))) == [["initialize", None], ["tools/call", "received"]]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no traceback for client input"
    # Nothing pins the session: it is reaped on its idle TTL like any other.
    session = next(iter(mcp.http.app[keys.SESSIONS].__iter__()))
    assert await eventually(lambda: session.closing)
    status, _ = await post_raw(mcp, b'{"jsonrpc":"2.0","id":2,"method":"ping"}')
    assert status == 404


async def test_large_ids_are_not_kept_once_answered(gateway: Any) -> None:
    mcp: Mcp = await gateway()
    await mcp.initialize()
    big_id = "i" * (1024 * 1024)
    for _ in range(8):
        answer = await mcp.request("ping", id=big_id)
        assert answer["id"] == big_id
    session = next(iter(mcp.http.app[keys.SESSIONS].__iter__()))
    assert session.router._pending == {}
    assert session.router._by_client == {}


@pytest.mark.parametrize(
    ("last_event_id", "status"),
    [("\u00b2.1", 400), ("1" * 5000 + ".1", 400), ("0.1" + "0" * 5000, 400), ("x", 400), ("", 400), ("99.1", 410)],
    ids=["superscript-digit", "5000-digit-stream", "5000-digit-seq", "letters", "empty", "unknown-stream"],
)
async def test_a_last_event_id_this_gateway_never_sent_is_a_clear_4xx(
    gateway: Any, last_event_id: str, status: int
) -> None:
    mcp: Mcp = await gateway()
    await mcp.initialize()
    headers = mcp.headers({"Accept": "text/event-stream", "Last-Event-ID": last_event_id})
    async with mcp.http.get(mcp.path, headers=headers) as response:
        assert response.status == status, await response.text()
        assert (await response.json())["error"]["code"] == -32600


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", b'{"jsonrpc":"2.0","id":1,"method":"ping"}'),
        ("deflate", b"[]"),
        ("gzip", gzip.compress(b'{"jsonrpc":"2.0","id":1,"method":"ping"}')),
        ("br, gzip", b"{}"),
    ],
    ids=["gzip-not-gzip", "deflate-not-deflate", "real-gzip", "two-codings"],
)
async def test_a_compressed_body_is_refused_with_415_unread(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    encoding: str,
    body: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body that is not what its Content-Encoding says used to be a 500 with a traceback. No
    MCP client compresses requests: any coding is a 415 before the body is read (the server is
    run as the CLI runs it, never inflating bodies), and the connection serves on."""
    server = await aiohttp_server(create_app(make_settings()), **SERVER_OPTIONS)
    # pytest-aiohttp types a client of a server as serving no app; this server serves one.
    mcp = Mcp(cast("TestClient[Any, Application]", await aiohttp_client(server)))
    await mcp.initialize()
    status, answer = await post_raw(mcp, body, headers={"Content-Encoding": encoding})
    assert (status, answer["error"]["code"]) == (415, -32600), answer
    assert "Content-Encoding" in answer["error"]["message"]
    assert (await mcp.request("ping"))["result"] == {}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_identity_content_encoding_is_served(gateway: Any) -> None:
    mcp: Mcp = await gateway()
    await mcp.initialize()
    status, answer = await post_raw(
        mcp, b'{"jsonrpc":"2.0","id":1,"method":"ping"}', headers={"Content-Encoding": "identity"}
    )
    assert (status, answer["result"]) == (200, {})


async def test_head_is_refused_with_405_and_the_allowed_methods(gateway: Any) -> None:
    mcp: Mcp = await gateway()
    await mcp.initialize()
    async with asyncio.timeout(WAIT):
        async with mcp.http.head(mcp.path, headers=mcp.headers({"Accept": "text/event-stream"})) as response:
            assert response.status == 405
            assert "HEAD" not in response.headers["Allow"]
            assert {"GET", "POST", "DELETE"} <= {method.strip() for method in response.headers["Allow"].split(",")}
