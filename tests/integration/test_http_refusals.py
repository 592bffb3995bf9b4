"""Every refusal of the MCP endpoint, with its status code and JSON-RPC error body."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient

from gateway import create_app, keys
from tests.support.mcp import ACCEPT_BOTH, LATEST, Mcp, text_of
from tests.support.oauth import REDIRECT_URI, oauth_settings
from tests.support.types import Gateway

PING = {"jsonrpc": "2.0", "id": 5, "method": "ping"}


async def _error(mcp: Mcp, method: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with mcp.http.request(method, "/mcp", data=body, headers=headers) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({"Origin": "http://evil.example"}, json.dumps(PING).encode(), 403, -32600),
        ({"Content-Type": "text/plain"}, json.dumps(PING).encode(), 415, -32600),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"a=b", 415, -32600),
        ({"Accept": "text/html"}, json.dumps(PING).encode(), 406, -32600),
        ({}, b"{not json", 400, -32700),
        ({}, b"", 400, -32700),
        ({}, b'{"jsonrpc":"1.0","id":1,"method":"ping"}', 400, -32600),
        ({}, b"[]", 400, -32600),
        ({}, b"42", 400, -32600),
        ({}, json.dumps(PING).encode("utf-16"), 400, -32700),
        ({}, b"\xef\xbb\xbf" + json.dumps(PING).encode(), 400, -32700),
        ({}, b'{"jsonrpc":"2.0","id":1,"method":"\xff"}', 400, -32700),
    ],
    ids=[
        "origin",
        "content-type",
        "form",
        "accept",
        "parse",
        "empty",
        "jsonrpc-version",
        "empty-batch",
        "scalar",
        "utf-16",
        "byte-order-mark",
        "invalid-utf-8",
    ],
)
async def test_post_refusals(gateway: Gateway, headers: dict[str, str], body: bytes, status: int, code: int) -> None:
    mcp = await gateway()
    await mcp.initialize()
    got_status, error = await _error(mcp, "POST", body, mcp.headers(headers))
    assert got_status == status
    assert error["jsonrpc"] == "2.0"
    assert error["error"]["code"] == code
    assert isinstance(error["error"]["message"], str)


async def test_invalid_request_keeps_its_id(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    status, error = await _error(mcp, "POST", b'{"jsonrpc":"2.0","id":9,"method":7}', mcp.headers())
    assert (status, error["id"], error["error"]["code"]) == (400, 9, -32600)


async def test_missing_accept_means_both(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    async with mcp.http.post("/mcp", json=PING, headers={**mcp.headers(), "Accept": ""}) as response:
        assert response.status == 200
        assert (await response.json())["id"] == 5


@pytest.mark.parametrize("limit_kind", ["content-length", "chunked"])
async def test_oversized_body(gateway: Gateway, limit_kind: str) -> None:
    mcp = await gateway(max_message_bytes=4096)
    await mcp.initialize()
    big = json.dumps({**PING, "params": {"pad": "x" * 200_000}}).encode()

    async def chunks() -> Any:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    data: Any = big if limit_kind == "content-length" else chunks()
    status, error = await _error(mcp, "POST", data, mcp.headers())
    assert (status, error["error"]["code"]) == (413, -32600)
    assert (await mcp.call_tool("echo", text="still fine"))["result"]["content"][0]["text"] == "still fine"


async def test_session_id_rules(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    session = mcp.session_id
    assert session is not None
    assert len(session) >= 32
    assert all(0x21 <= ord(ch) <= 0x7E for ch in session)

    status, error = await _error(mcp, "POST", json.dumps(PING).encode(), {**mcp.headers(), "Mcp-Session-Id": "nope"})
    assert (status, error["id"], error["error"]["code"]) == (404, 5, -32600)

    headers = mcp.headers()
    del headers["Mcp-Session-Id"]
    status, error = await _error(mcp, "POST", json.dumps(PING).encode(), headers)
    assert (status, error["id"], error["error"]["code"]) == (400, 5, -32600)
    assert "Mcp-Session-Id" in error["error"]["message"]


@pytest.mark.parametrize(
    ("version", "status"),
    [(None, 200), (LATEST, 200), ("2025-06-18", 200), ("2025-03-26", 200), ("1999-01-01", 400), ("2026-07-28", 400)],
    ids=["absent", "negotiated", "other-supported", "oldest-supported", "unknown", "modern"],
)
async def test_protocol_version_header(gateway: Gateway, version: str | None, status: int) -> None:
    """Only a version this gateway does not serve is refused (400): any supported one is served on a
    session that negotiated another, as the spec and the SDK servers do."""
    mcp = await gateway()
    await mcp.initialize()
    headers = mcp.headers()
    headers.pop("MCP-Protocol-Version")
    if version is not None:
        headers["MCP-Protocol-Version"] = version
    async with mcp.http.post("/mcp", json=PING, headers=headers) as response:
        assert response.status == status
        body = await response.json()
    assert ("result" in body) == (status == 200)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("with_session", [False, True], ids=["alone", "with-a-session-id"])
async def test_get_and_delete_of_the_sessionless_version_are_not_allowed(
    gateway: Gateway, method: str, with_session: bool
) -> None:
    """A 2026-07-28 client has neither: 405 with `Allow: POST`, whatever session it names, and
    the session it names lives on."""
    mcp = await gateway()
    await mcp.initialize()
    headers = {"Accept": "text/event-stream", "MCP-Protocol-Version": "2026-07-28"}
    if with_session:
        assert mcp.session_id is not None
        headers["Mcp-Session-Id"] = mcp.session_id
    async with mcp.http.request(method, "/mcp", headers=headers) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
        assert "Mcp-Session-Id" not in response.headers
        body = await response.json()
    assert body["error"]["code"] == -32600
    assert (await mcp.request("ping"))["result"] == {}


async def test_initialize_refusals(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": LATEST}}
    status, error = await _error(mcp, "POST", json.dumps(init).encode(), mcp.headers())
    assert (status, error["error"]["code"]) == (400, -32600)  # this session is already initialized
    status, error = await _error(mcp, "POST", json.dumps([init]).encode(), {"Content-Type": "application/json"})
    assert (status, error["error"]["code"]) == (400, -32600)  # never inside a batch


async def test_session_cap(gateway: Gateway) -> None:
    first = await gateway(max_sessions=1)
    await first.initialize()
    second = Mcp(first.http)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": LATEST}}
    async with first.http.post("/mcp", json=init, headers={"Accept": ACCEPT_BOTH}) as response:
        assert response.status == 503
        assert int(response.headers["Retry-After"]) > 0
        assert "Mcp-Session-Id" not in response.headers
        assert (await response.json())["error"]["code"] == -32603
    assert await first.delete() == 204
    await second.initialize()  # the slot is free again


async def test_get_and_delete_refusals(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    status, error = await _error(mcp, "GET", None, {"Accept": "text/event-stream"})
    assert (status, error["error"]["code"]) == (400, -32600)
    status, _ = await _error(mcp, "GET", None, {**mcp.headers(), "Accept": "application/json"})
    assert status == 406
    status, _ = await _error(mcp, "GET", None, {**mcp.headers(), "Origin": "http://evil.example"})
    assert status == 403
    status, _ = await _error(mcp, "DELETE", None, {"Mcp-Session-Id": "unknown"})
    assert status == 404
    assert await mcp.delete() == 204
    assert await mcp.delete() == 404


async def test_batches_only_for_2025_03_26(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize(version=LATEST)
    batch = [PING, {**PING, "id": 6}]
    status, messages = await mcp.post(batch)
    assert status == 400
    assert messages[0]["error"]["code"] == -32600

    old = await gateway()
    await old.initialize(version="2025-03-26")
    call = {"jsonrpc": "2.0", "id": "c", "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "b"}}}
    status, messages = await old.post([PING, call, {"jsonrpc": "2.0", "method": "notifications/x"}])
    assert status == 200
    assert sorted(str(m["id"]) for m in messages) == ["5", "c"]
    status, messages = await old.post([{"jsonrpc": "2.0", "method": "notifications/x"}])
    assert (status, messages) == (202, [])


async def test_notifications_get_202_with_no_body(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    async with mcp.http.post(
        "/mcp", json={"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}, headers=mcp.headers()
    ) as response:
        assert response.status == 202
        assert await response.read() == b""


async def test_health_and_ready(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    async with mcp.http.get("/health") as response:
        health = await response.json()
    assert health["status"] == "ok"
    assert health["sessions"] == 1
    async with mcp.http.get("/ready") as response:
        assert response.status == 200
        assert (await response.json())["ready"] is True


async def test_cors_for_allowed_browser_origins(gateway: Gateway) -> None:
    mcp = await gateway(allowed_origins=["https://app.example"])
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with mcp.http.options("/mcp", headers=preflight) as response:
        assert response.status == 204
        assert "Mcp-Session-Id" in response.headers["Access-Control-Allow-Headers"]
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
    async with mcp.http.options("/mcp", headers={**preflight, "Origin": "https://evil.example"}) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers

    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}
    headers = {"Accept": "application/json, text/event-stream", "Origin": "https://app.example"}
    async with mcp.http.post("/mcp", json=init, headers=headers) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        exposed = {name.strip() for name in response.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"Mcp-Session-Id", "WWW-Authenticate", "Retry-After", "RateLimit-Reset"} <= exposed
        session = response.headers["Mcp-Session-Id"]
    stream_headers = {"Origin": "https://app.example", "Mcp-Session-Id": session}
    async with mcp.http.get("/mcp", headers=stream_headers) as stream:
        assert stream.content_type == "text/event-stream"
        assert stream.headers["Access-Control-Allow-Origin"] == "https://app.example"


@pytest.mark.parametrize(("trusted", "expected"), [([], "127.0.0.1"), (["127.0.0.0/8"], "198.51.100.9")])
async def test_session_records_the_client_ip(gateway: Gateway, trusted: list[str], expected: str) -> None:
    mcp = await gateway(trusted_proxies=trusted)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": LATEST}}
    spoofed = {"Accept": ACCEPT_BOTH, "X-Real-IP": "198.51.100.9", "X-Forwarded-For": "6.6.6.6"}
    async with mcp.http.post("/mcp", json=init, headers=spoofed) as response:
        assert response.status == 200
    store = mcp.http.app[keys.SESSIONS]
    [session] = list(store)
    assert session.client_ip == expected


@pytest.mark.parametrize(
    ("method", "origins"),
    [
        ("POST", ["https://app.example", "https://evil.example"]),
        ("POST", ["https://app.example", "https://app.example"]),
        ("GET", ["https://app.example", "https://evil.example"]),
        ("DELETE", ["https://app.example", "https://evil.example"]),
        ("OPTIONS", ["https://app.example", "https://evil.example"]),
    ],
    ids=["post", "post-same-twice", "get", "delete", "preflight"],
)
async def test_a_repeated_origin_is_refused(gateway: Gateway, method: str, origins: list[str]) -> None:
    """Judging only the first copy would let the second one through to whoever reads it."""
    mcp = await gateway(allowed_origins=["https://app.example"])
    await mcp.initialize()
    headers = CIMultiDict(mcp.headers({"Access-Control-Request-Method": "POST"}))
    for origin in origins:
        headers.add("Origin", origin)
    body = json.dumps(PING).encode() if method == "POST" else None
    async with mcp.http.request(method, "/mcp", data=body, headers=headers) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers
        assert (await response.json())["error"]["message"].startswith("Origin not allowed")
    assert text_of(await mcp.call_tool("echo", text="still served")) == "still served"


@pytest.mark.parametrize(
    ("public_url", "host", "status"),
    [
        ("https://mcp.example.com", "mcp.example.com", 200),
        ("https://mcp.example.com", "MCP.Example.COM", 200),
        ("https://mcp.example.com", "mcp.example.com:443", 200),
        ("https://mcp.example.com", "evil.example", 421),
        ("https://mcp.example.com", "mcp.example.com.evil.example", 421),
        ("https://mcp.example.com", "mcp.example.com:8443", 421),
        ("https://mcp.example.com", "127.0.0.1:8080", 421),
        ("https://mcp.example.com:8443", "mcp.example.com:8443", 200),
        ("https://mcp.example.com:8443", "mcp.example.com", 421),
        ("http://[::1]:8080", "[::1]:8080", 200),
        (None, "evil.example", 200),
    ],
    ids=[
        "match",
        "case-insensitive",
        "default-port-written",
        "other-host",
        "suffix",
        "other-port",
        "container-address",
        "explicit-port",
        "explicit-port-missing",
        "ipv6",
        "no-public-url-no-check",
    ],
)
async def test_the_host_must_name_the_public_url(
    gateway: Gateway, public_url: str | None, host: str, status: int
) -> None:
    mcp = await gateway(public_url=public_url)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": LATEST}}
    async with mcp.http.post("/mcp", json=init, headers={"Accept": ACCEPT_BOTH, "Host": host}) as response:
        assert response.status == status
        body = await response.json()
    if status == 421:
        assert body == {
            "jsonrpc": "2.0",
            "id": None,  # refused before the body is read
            "error": {"code": -32600, "message": "Misdirected request: this server does not serve that host"},
        }
    for path in ("/health", "/ready", "/.well-known/oauth-protected-resource/mcp"):
        async with mcp.http.get(path, headers={"Host": host}) as response:
            assert response.status in (200, 404)  # probes and discovery never look at Host


@pytest.mark.parametrize(("host", "status"), [("mcp.example.com", 201), ("evil.example", 421)], ids=["match", "other"])
async def test_the_authorization_server_checks_the_host_too(
    aiohttp_client: AiohttpClient, host: str, status: int
) -> None:
    app = create_app(oauth_settings(0, public_url="https://mcp.example.com"))
    client = await aiohttp_client(app)
    registration = {"redirect_uris": [REDIRECT_URI], "client_name": "host check"}
    async with client.post("/oauth/register", json=registration, headers={"Host": host}) as response:
        assert response.status == status
    async with client.get("/.well-known/oauth-authorization-server", headers={"Host": host}) as response:
        assert response.status == 200
