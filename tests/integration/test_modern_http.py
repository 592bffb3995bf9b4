"""2026-07-28 requests on the MCP endpoint, against the legacy echo server: every check of the
envelope and the routing headers with its code and status, the check order, the result shapes
the translation gives, progress and log messages on the response stream, cancellation by a
closed stream, and the children principals get (their own, multiplexed, reaped when idle)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from gateway import create_app, keys
from gateway.auth.static import digest_of
from tests.support.mcp import LATEST, MODERN, Mcp, Modern, envelope, routing_headers
from tests.support.settings import make_settings, public_host
from tests.support.types import JsonObj
from tests.support.waits import eventually

PUBLIC = "https://mcp.example.com"
TOKENS = {"alice": "alice-token", "bob": "bob-token"}


async def _modern(aiohttp_client: AiohttpClient, *flags: str, **overrides: Any) -> Modern:
    settings = make_settings(*flags, **overrides)
    return Modern(await aiohttp_client(create_app(settings), headers=public_host(settings)))


def _authenticated(**extra: Any) -> dict[str, Any]:
    tokens = [{"principal": name, "sha256": digest_of(token)} for name, token in TOKENS.items()]
    return {"auth": "static", "static_tokens": tokens, "public_url": PUBLIC, **extra}


def _call(name: str = "echo", **meta: Any) -> JsonObj:
    return {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": name, "arguments": {"text": "hi"}, "_meta": envelope(**meta)},
    }


def _without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key.lower() != name.lower()}


def _b64(text: str) -> str:
    return "=?base64?" + base64.b64encode(text.encode()).decode() + "?="


# (what is wrong, the message, the headers sent) → (HTTP status, JSON-RPC code). Every row but the
# last is refused before any child is started.
def _missing_capabilities() -> JsonObj:
    message = _call()
    del message["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]
    return message


def _unsupported() -> JsonObj:
    return _call(version="2099-01-01")


CASES: list[tuple[str, JsonObj, dict[str, str] | None, int, int]] = [
    ("no client capabilities", _missing_capabilities(), None, 400, -32602),
    ("no version header", _call(), _without(routing_headers(_call()), "MCP-Protocol-Version"), 400, -32020),
    (
        "version header differs",
        _call(),
        {**routing_headers(_call()), "MCP-Protocol-Version": "2025-11-25"},
        400,
        -32020,
    ),
    ("no Mcp-Method", _call(), _without(routing_headers(_call()), "Mcp-Method"), 400, -32020),
    ("Mcp-Method differs", _call(), {**routing_headers(_call()), "Mcp-Method": "tools/list"}, 400, -32020),
    ("no Mcp-Name", _call(), _without(routing_headers(_call()), "Mcp-Name"), 400, -32020),
    ("Mcp-Name differs", _call(), {**routing_headers(_call()), "Mcp-Name": "big"}, 400, -32020),
    # "ZWNobw==" is "echo"; "ZWNobx==" decodes to it too, with non-zero padding bits: not canonical.
    ("Mcp-Name non-canonical", _call(), {**routing_headers(_call()), "Mcp-Name": "=?base64?ZWNobx==?="}, 400, -32020),
    ("Mcp-Name not Base64", _call(), {**routing_headers(_call()), "Mcp-Name": "=?base64?!!?="}, 400, -32020),
    ("unsupported version", _unsupported(), routing_headers(_unsupported()), 400, -32022),
    # The check order: the envelope before the headers, the headers before the version.
    (
        "no capabilities and no headers",
        _missing_capabilities(),
        {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
        400,
        -32602,
    ),
    (
        "unsupported version and header differs",
        _unsupported(),
        {**routing_headers(_unsupported()), "MCP-Protocol-Version": MODERN},
        400,
        -32020,
    ),
    ("Mcp-Name in Base64", _call(), {**routing_headers(_call()), "Mcp-Name": _b64("echo")}, 200, 0),
]


@pytest.mark.parametrize(
    ("message", "headers", "status", "code"), [case[1:] for case in CASES], ids=[c[0] for c in CASES]
)
async def test_envelope_and_header_checks(
    aiohttp_client: AiohttpClient, message: JsonObj, headers: dict[str, str] | None, status: int, code: int
) -> None:
    client = await _modern(aiohttp_client)
    async with client.http.post("/mcp", json=message, headers=headers or routing_headers(message)) as response:
        assert response.status == status, await response.text()
        body = await response.json()
        assert "Mcp-Session-Id" not in response.headers
    assert body["id"] == 7
    if code:
        assert body["error"]["code"] == code
        store = client.http.app[keys.SESSIONS]
        assert store.children == 0  # refused before any child was started
    else:
        assert body["result"]["content"][0]["text"] == "hi"


async def test_unsupported_version_names_the_supported_ones(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client)
    message = _unsupported()
    async with client.http.post("/mcp", json=message, headers=routing_headers(message)) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["data"] == {"supported": [MODERN], "requested": "2099-01-01"}


async def test_a_duplicated_routing_header_is_refused(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client)
    message = client.message("tools/list")
    headers = [*routing_headers(message).items(), ("Mcp-Method", "tools/list")]
    async with client.http.post("/mcp", data=json.dumps(message), headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == -32020


@pytest.mark.parametrize(
    "method", ["initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"]
)
async def test_methods_2026_removed_are_unknown(aiohttp_client: AiohttpClient, method: str) -> None:
    client = await _modern(aiohttp_client)
    status, messages, response = await client.post(client.message(method, {"uri": "x", "level": "info"}))
    assert status == 404
    assert messages[0]["error"]["code"] == -32601
    assert "Mcp-Session-Id" not in response.headers


async def test_an_unknown_method_of_the_server_is_404(aiohttp_client: AiohttpClient) -> None:
    """The child's own -32601 is a 404 too: that is what the status mapping says of the code."""
    client = await _modern(aiohttp_client)
    status, messages, _ = await client.post(client.message("nonsense/method"))
    assert status == 404
    assert messages[0]["error"]["code"] == -32601


async def test_notifications_are_accepted_and_responses_refused(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client)
    notification = {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": 1, "_meta": envelope()},
    }
    status, messages, _ = await client.post(notification)
    assert (status, messages) == (202, [])
    response = {"jsonrpc": "2.0", "id": 1, "result": {}}
    async with client.http.post("/mcp", json=response, headers=routing_headers(response)) as answer:
        # Not enveloped: a response is a legacy session's, and this POST names none.
        assert answer.status == 400


async def test_session_ids_and_event_ids_are_ignored(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client)
    message = client.message("tools/list")
    status, messages, response = await client.post(message, {"Mcp-Session-Id": "not-a-session", "Last-Event-ID": "1.1"})
    assert status == 200
    assert "Mcp-Session-Id" not in response.headers
    assert messages[0]["result"]["tools"]


async def test_discover_is_synthesised_from_the_legacy_servers_handshake(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client)
    result = (await client.request("server/discover"))["result"]
    assert result["supportedVersions"] == [MODERN]
    assert result["capabilities"]["tools"] == {"listChanged": True}
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"] == {"name": "echo-server", "version": "1.0.0"}
    assert (result["resultType"], result["ttlMs"], result["cacheScope"]) == ("complete", 0, "private")
    # The child was probed first, then initialized; it got no other request of the gateway's.
    received = json.loads((await client.call_tool("received"))["result"]["content"][0]["text"])
    assert received[:2] == [["server/discover", None], ["initialize", None]]


async def test_results_are_shaped_for_2026_and_the_envelope_stays_here(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client)
    listed = (await client.request("tools/list"))["result"]
    assert (listed["resultType"], listed["ttlMs"], listed["cacheScope"]) == ("complete", 0, "private")
    assert listed["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "echo-server"
    called = (await client.call_tool("echo", {"text": "x"}))["result"]
    assert called["resultType"] == "complete"
    assert "ttlMs" not in called  # only lists and reads say how long they hold
    # The legacy child never saw the modern keys (the echo server answers `notify` with what it got).
    answer = await client.call_tool("env")
    assert "io.modelcontextprotocol" not in json.dumps(answer["result"]["content"])


async def test_progress_streams_on_the_response_without_event_ids(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client)
    message = client.message("tools/call", {"name": "progress", "arguments": {"steps": 3}})
    message["params"]["_meta"]["progressToken"] = "p1"
    async with client.http.post("/mcp", json=message, headers=client.headers(message)) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        text = await response.text()
    assert "\nid:" not in "\n" + text  # 2026-07-28 streams cannot be resumed: no event ids
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()]
    assert [event.get("method") for event in events] == ["notifications/progress"] * 3 + [None]
    assert all(event["params"]["progressToken"] == "p1" for event in events[:3])
    assert events[-1]["id"] == message["id"]
    assert events[-1]["result"]["resultType"] == "complete"


async def test_log_messages_only_at_the_level_the_request_set(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client)
    for level, expected in ((None, 0), ("info", 1), ("error", 0)):
        message = client.message("tools/call", {"name": "log", "arguments": {"message": "m"}}, log_level=level)
        status, messages, _ = await client.post(message)
        assert status == 200
        logs = [m for m in messages if m.get("method") == "notifications/message"]
        assert len(logs) == expected, (level, messages)
        assert messages[-1]["result"]["resultType"] == "complete"


async def test_closing_the_stream_cancels_the_call_at_the_child(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client, sse_keepalive=0.1)
    message = client.message("tools/call", {"name": "hang", "arguments": {}})
    store = client.http.app[keys.SESSIONS]
    async with client.http.post("/mcp", json=message, headers=client.headers(message)) as response:
        assert response.content_type == "text/event-stream"  # a keep-alive period passed: streamed
    # The client is gone; at the next keep-alive the gateway notices and cancels the call.
    assert await eventually(lambda: store.requests_in_flight() == 0)
    cancelled = json.loads((await client.call_tool("cancelled"))["result"]["content"][0]["text"])
    assert [entry["running"] for entry in cancelled] == [True]


async def test_two_principals_never_share_a_child(aiohttp_client: AiohttpClient) -> None:
    settings = make_settings(**_authenticated())
    http = await aiohttp_client(create_app(settings), headers=public_host(settings))
    alice, bob = Modern(http, token=TOKENS["alice"]), Modern(http, token=TOKENS["bob"])
    pids = {}
    for name, client in (("alice", alice), ("bob", bob)):
        answers = await asyncio.gather(*(client.call_tool("pid") for _ in range(8)))
        found = {answer["result"]["content"][0]["text"] for answer in answers}
        assert len(found) == 1, found  # one principal's concurrent requests share its one child
        pids[name] = found.pop()
    assert pids["alice"] != pids["bob"]
    assert http.app[keys.SESSIONS].children == 2


async def test_anonymous_clients_of_two_addresses_never_share_a_child(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client, trusted_proxies=["127.0.0.1/32"])
    pids = set()
    for address in ("192.0.2.1", "192.0.2.2"):
        message = client.message("tools/call", {"name": "pid", "arguments": {}})
        status, messages, _ = await client.post(message, {"X-Forwarded-For": address})
        assert status == 200
        pids.add(messages[-1]["result"]["content"][0]["text"])
    assert len(pids) == 2


async def test_more_children_per_principal_take_the_least_busy(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client, children_per_principal=2, sse_keepalive=0.1)
    first = (await client.call_tool("pid"))["result"]["content"][0]["text"]
    # The only child is busy with a call that hangs: the next request gets a second child.
    message = client.message("tools/call", {"name": "hang", "arguments": {}})
    async with client.http.post("/mcp", json=message, headers=client.headers(message)) as hanging:
        await read_event_or_keepalive(hanging)
        second = (await client.call_tool("pid"))["result"]["content"][0]["text"]
        assert second != first
        # Both are busy no longer than a call: the next one goes to the idle one, not a third.
        third = (await client.call_tool("pid"))["result"]["content"][0]["text"]
        assert third == second
    assert client.http.app[keys.SESSIONS].children == 2


async def read_event_or_keepalive(response: Any) -> None:
    """Wait until the streamed response has written something (a keep-alive, at least)."""
    await asyncio.wait_for(response.content.readline(), 5)


async def test_idle_children_are_reaped_and_replaced(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client, session_idle_ttl=0.3)
    store = client.http.app[keys.SESSIONS]
    first = (await client.call_tool("pid"))["result"]["content"][0]["text"]
    assert store.children == 1
    assert await eventually(lambda: store.children == 0)
    second = (await client.call_tool("pid"))["result"]["content"][0]["text"]
    assert second != first


async def test_a_legacy_and_a_modern_client_of_one_principal_at_once(aiohttp_client: AiohttpClient) -> None:
    settings = make_settings(**_authenticated())
    http = await aiohttp_client(create_app(settings), headers=public_host(settings))
    legacy = Mcp(http)
    modern = Modern(http, token=TOKENS["alice"])
    authorization = {"Authorization": f"Bearer {TOKENS['alice']}"}
    legacy_headers = legacy.headers
    legacy.headers = lambda extra=None: legacy_headers({**authorization, **(extra or {})})  # type: ignore[method-assign]
    await legacy.initialize()
    modern_pid, legacy_pid = await asyncio.gather(modern.call_tool("pid"), legacy.call_tool("pid"))
    assert modern_pid["result"]["content"][0]["text"] != legacy_pid["result"]["content"][0]["text"]
    assert "resultType" not in legacy_pid["result"]  # the session's answers are passed through as they are
    assert modern_pid["result"]["resultType"] == "complete"
    # An enveloped request naming the legacy session stays on it: the session is the caller's own.
    message = modern.message("tools/call", {"name": "pid", "arguments": {}})
    assert legacy.session_id is not None
    status, messages, _ = await modern.post(
        message, {"Mcp-Session-Id": legacy.session_id, "MCP-Protocol-Version": LATEST}
    )
    assert status == 200
    assert messages[-1]["result"]["content"][0]["text"] == legacy_pid["result"]["content"][0]["text"]


async def test_modern_requests_need_authentication(aiohttp_client: AiohttpClient) -> None:
    settings = make_settings(**_authenticated())
    http = await aiohttp_client(create_app(settings), headers=public_host(settings))
    client = Modern(http)
    status, _, response = await client.post(client.message("tools/list"))
    assert status == 401
    assert "resource_metadata" in response.headers["WWW-Authenticate"]
    assert http.app[keys.SESSIONS].children == 0


async def test_the_probe_is_skipped_when_the_era_is_configured(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client, child_era="legacy")
    received = json.loads((await client.call_tool("received"))["result"]["content"][0]["text"])
    assert received[0] == ["initialize", None]


async def test_metrics_and_audit_carry_the_era(aiohttp_client: AiohttpClient, tmp_path: Any) -> None:
    audit = tmp_path / "audit.jsonl"
    client = await _modern(aiohttp_client, audit_log=str(audit))
    await client.request("server/discover")
    await client.call_tool("echo", {"text": "x"})
    async with client.http.get("/metrics") as response:
        text = await response.text()
    assert 'mcp_gateway_requests_total{era="modern",method="tools/call",outcome="ok"} 1.0' in text
    assert 'mcp_gateway_requests_total{era="modern",method="server/discover",outcome="ok"} 1.0' in text
    assert 'mcp_gateway_sessions_opened_total{era="modern"} 1.0' in text
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    requests = [event for event in events if event["event"] == "mcp.request"]
    assert [(event["method"], event["era"]) for event in requests] == [
        ("server/discover", "modern"),
        ("tools/call", "modern"),
    ]
    opened = [event for event in events if event["event"] == "session.open"]
    assert [event["era"] for event in opened] == ["modern"]


async def test_the_tool_policy_applies_to_modern_requests(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client, tool_deny=["crash", "delete_*"])
    names = {tool["name"] for tool in (await client.request("tools/list"))["result"]["tools"]}
    assert "echo" in names
    assert not {"crash", "delete_note"} & names
    status, messages, _ = await client.post(client.message("tools/call", {"name": "crash", "arguments": {}}))
    assert messages[-1]["error"]["message"] == "Tool not allowed: crash"
    assert status == 400  # -32602, as the status mapping of 2026-07-28 says
    assert client.http.app[keys.SESSIONS].children == 1  # and the child lives on


async def test_rate_limits_apply_to_modern_requests(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client, ratelimit_requests_ip="2/minute")
    for _ in range(2):
        await client.request("tools/list")
    status, messages, response = await client.post(client.message("tools/list"))
    assert status == 429
    assert "Retry-After" in response.headers
    assert messages[0]["error"]["code"] == -32600


async def test_a_child_that_exits_is_replaced_by_the_next_request(aiohttp_client: AiohttpClient) -> None:
    client = await _modern(aiohttp_client)
    store = client.http.app[keys.SESSIONS]
    first = (await client.call_tool("pid"))["result"]["content"][0]["text"]
    status, messages, _ = await client.post(client.message("tools/call", {"name": "crash", "arguments": {}}))
    assert status == 200  # an error of the call, not of the HTTP request
    assert "exited with code 3" in messages[-1]["error"]["message"]
    assert await eventually(lambda: store.children == 0)
    second = (await client.call_tool("pid"))["result"]["content"][0]["text"]
    assert second != first
