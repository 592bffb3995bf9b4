"""A handshake-era client of a server that speaks 2026-07-28 only (the SDK test server run with
`--era modern`, which refuses `initialize`): the session the gateway builds from the server's
`server/discover`, what it answers itself, and how it learns the server's era once."""

from __future__ import annotations

import sys
from typing import Any

from pytest_aiohttp import AiohttpClient

from gateway import create_app, keys
from tests.support.mcp import Mcp
from tests.support.servers import SDK_SERVER
from tests.support.settings import make_settings


async def _mcp(aiohttp_client: AiohttpClient, era: str, **overrides: Any) -> Mcp:
    settings = make_settings(command=[sys.executable, str(SDK_SERVER), "--era", era], **overrides)
    return Mcp(await aiohttp_client(create_app(settings)))


async def test_initialize_is_answered_from_the_servers_discovery(aiohttp_client: AiohttpClient) -> None:
    mcp = await _mcp(aiohttp_client, "modern")
    result = await mcp.initialize("2025-06-18")
    assert mcp.session_id is not None
    assert result["protocolVersion"] == "2025-06-18"  # the client's own version, one the gateway speaks
    assert result["serverInfo"]["name"] == "sdk-test-server"
    capabilities = result["capabilities"]
    assert capabilities["tools"]
    assert capabilities["resources"]["subscribe"] is True  # served through a listen on the child
    assert "logging" in capabilities  # served through the envelope's log level
    book = mcp.http.app[keys.PRINCIPAL_CHILDREN].book
    assert (book.era, book.handshake) == ("modern", False)


async def test_what_2026_removed_is_answered_here(aiohttp_client: AiohttpClient) -> None:
    mcp = await _mcp(aiohttp_client, "modern")
    await mcp.initialize()
    assert (await mcp.request("ping"))["result"] == {}
    assert (await mcp.request("logging/setLevel", {"level": "warning"}))["result"] == {}
    assert (await mcp.request("resources/subscribe", {"uri": "test://greeting"}))["result"] == {}
    assert (await mcp.request("resources/unsubscribe", {"uri": "test://greeting"}))["result"] == {}


async def test_results_are_shaped_for_the_handshake_era(aiohttp_client: AiohttpClient) -> None:
    mcp = await _mcp(aiohttp_client, "modern")
    await mcp.initialize()
    listed = (await mcp.request("tools/list"))["result"]
    assert {"resultType", "ttlMs", "cacheScope"}.isdisjoint(listed)
    assert "_meta" not in listed or "io.modelcontextprotocol/serverInfo" not in listed["_meta"]
    called = (await mcp.call_tool("add", a=2, b=3))["result"]
    assert called["content"][0]["text"] == "5"
    assert "resultType" not in called


async def test_the_era_is_learned_once(aiohttp_client: AiohttpClient) -> None:
    """The first session's child refused initialize, and a fresh one answered server/discover; the
    next session's only child is probed at once."""
    mcp = await _mcp(aiohttp_client, "modern")
    store = mcp.http.app[keys.SESSIONS]
    await mcp.initialize()
    second = Mcp(mcp.http)
    await second.initialize()
    assert (await second.call_tool("echo", text="again"))["result"]["content"][0]["text"] == "again"
    assert len(store) == 2
    assert store.children == 2  # the refusing child is gone; each session has one


async def test_a_dual_era_server_keeps_the_transparent_path(aiohttp_client: AiohttpClient) -> None:
    mcp = await _mcp(aiohttp_client, "dual")
    result = await mcp.initialize()
    assert result["serverInfo"]["name"] == "sdk-test-server"
    called = (await mcp.call_tool("add", a=1, b=1))["result"]
    assert called["content"][0]["text"] == "2"
    book = mcp.http.app[keys.PRINCIPAL_CHILDREN].book
    assert book.handshake is None  # nothing to translate: never asked
    store = mcp.http.app[keys.SESSIONS]
    assert [session.translated for session in store] == [None]


async def test_a_server_that_refuses_initialize_and_is_not_modern_is_answered_as_it_said(
    aiohttp_client: AiohttpClient,
) -> None:
    """With the era forced to legacy the gateway never asks a child anything else: the server's
    refusal of `initialize` stands as the answer, and no session exists."""
    mcp = await _mcp(aiohttp_client, "modern", child_era="legacy")
    async with mcp.http.post("/mcp", json=_initialize(), headers=mcp.headers()) as response:
        assert response.status == 200
        body = await response.json()
    assert body["error"]["code"] == -32022
    assert "Mcp-Session-Id" not in response.headers


def _initialize() -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
