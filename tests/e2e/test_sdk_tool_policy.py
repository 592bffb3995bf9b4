"""The tool policy as the official `mcp` SDK client sees it, through the gateway, against the SDK
server: filtered lists, a denied call raising the SDK's error with the gateway's message, and
static bearer tokens whose scopes decide which annotated tools are listed and callable."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp
import pytest
from aiohttp.test_utils import TestServer, unused_port
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from pytest_aiohttp import AiohttpServer

from gateway import create_app
from gateway.auth.static import digest_of
from gateway.config import Settings
from tests.support.sdk_scenarios import SCENARIO_TIMEOUT, text_of
from tests.support.servers import SDK_SERVER

Connect = Callable[[str | None], Any]

READER = "sdk-reader-token-0123456789"  # no scope
ADMIN = "sdk-admin-token-0123456789"  # both tool scopes
WRITE, DESTRUCTIVE = "tools:write", "tools:destructive"
SDK_TOOLS = {
    "add",
    "echo",
    "slow_progress",
    "log_then_answer",
    "ask_llm",
    "ask_user",
    "touch_resource",
    "announce",
    "wait",
    "resolved_user",
    "resolved_llm",
    "resolved_roots",
}
ANNOTATED = {"peek", "save", "wipe"}


async def _serve(aiohttp_server: AiohttpServer, **settings: Any) -> str:
    """Serve the SDK server at its public URL, on a loopback port of its own."""
    port = unused_port()
    public = f"http://127.0.0.1:{port}"
    app = create_app(Settings(command=[sys.executable, str(SDK_SERVER)], port=port, public_url=public, **settings))
    server: TestServer = await aiohttp_server(app, port=port)
    return str(server.make_url("/mcp"))


@asynccontextmanager
async def connected(url: str, token: str | None = None) -> AsyncIterator[mcp.Client]:
    """An SDK client in legacy mode, presenting `token` as a static bearer header."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    http = create_mcp_http_client(headers=headers)
    try:
        with anyio.fail_after(SCENARIO_TIMEOUT):
            async with mcp.Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
                yield client
    finally:
        await http.aclose()


async def test_denied_tools_are_hidden_and_refused(aiohttp_server: AiohttpServer) -> None:
    url = await _serve(aiohttp_server, tool_deny=["wipe", "ask_*"])
    async with connected(url) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == (SDK_TOOLS | ANNOTATED) - {"wipe", "ask_llm", "ask_user"}
        with pytest.raises(MCPError) as refused:
            await client.call_tool("wipe", {})
        assert (refused.value.code, refused.value.message) == (-32602, "Tool not allowed: wipe")
        assert text_of(await client.call_tool("add", {"a": 2, "b": 3})) == "5"


async def test_token_scopes_decide_the_annotated_tools(aiohttp_server: AiohttpServer) -> None:
    tokens = [
        {"principal": "reader", "sha256": digest_of(READER)},
        {"principal": "admin", "sha256": digest_of(ADMIN), "scopes": [WRITE, DESTRUCTIVE]},
    ]
    url = await _serve(
        aiohttp_server,
        auth="static",
        static_tokens=tokens,
        tool_scope_write=WRITE,
        tool_scope_destructive=DESTRUCTIVE,
    )
    async with connected(url, READER) as reader:
        assert {tool.name for tool in (await reader.list_tools()).tools} == {"peek"}
        assert text_of(await reader.call_tool("peek", {})) == "peeked"
        with pytest.raises(MCPError) as refused:
            await reader.call_tool("save", {"text": "x"})
        assert refused.value.message == "The access token lacks a required scope"
    async with connected(url, ADMIN) as admin:
        assert {tool.name for tool in (await admin.list_tools()).tools} == SDK_TOOLS | ANNOTATED
        assert text_of(await admin.call_tool("save", {"text": "x"})) == "saved: x"
        assert text_of(await admin.call_tool("wipe", {})) == "wiped"
