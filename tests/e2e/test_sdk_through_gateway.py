"""The official MCP SDK client, through the gateway, against real stdio servers.

The same scenarios run directly over stdio in test_sdk_stdio_direct.py; passing both shows the
gateway is transparent for everything a legacy-era client does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import mcp
import pytest
from aiohttp.test_utils import unused_port
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from pytest_aiohttp import AiohttpServer

from gateway import create_app
from gateway.auth.static import digest_of
from gateway.config import Settings
from tests.support.sdk_scenarios import ALL_SCENARIOS, Scenario, scenario_tools
from tests.support.servers import SDK_SERVER


async def _serve(aiohttp_server: AiohttpServer, command: list[str]) -> str:
    server = await aiohttp_server(create_app(Settings(command=command, port=0)))
    return str(server.make_url("/mcp"))


@pytest.fixture
async def sdk_gateway_url(aiohttp_server: AiohttpServer) -> str:
    return await _serve(aiohttp_server, [sys.executable, str(SDK_SERVER)])


@pytest.mark.parametrize("scenario", ALL_SCENARIOS, ids=lambda s: s.__name__.removeprefix("scenario_"))
async def test_scenario_through_gateway(scenario: Scenario, sdk_gateway_url: str) -> None:
    await scenario(lambda **kwargs: mcp.Client(sdk_gateway_url, mode="legacy", **kwargs))


async def test_dual_era_client_falls_back_to_initialize(sdk_gateway_url: str) -> None:
    """`mode="auto"` probes with a 2026-07-28 request first; the gateway's 400 sends it to initialize."""
    await scenario_tools(lambda **kwargs: mcp.Client(sdk_gateway_url, mode="auto", **kwargs))


async def test_default_server_of_make_run(aiohttp_server: AiohttpServer) -> None:
    """The published server `make run` wraps answers a tool call through the gateway."""
    time_server = Path(sys.executable).parent / "mcp-server-time"
    url = await _serve(aiohttp_server, [str(time_server), "--local-timezone", "UTC"])
    with anyio.fail_after(60):
        async with mcp.Client(url, mode="legacy") as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert "get_current_time" in tools
            result = await client.call_tool("get_current_time", {"timezone": "UTC"})
            assert not result.is_error
            assert "UTC" in str(result.content[0])


async def test_sdk_client_with_a_bearer_header(aiohttp_server: AiohttpServer) -> None:
    token = "sdk-client-token-42"
    port = unused_port()  # served at its public URL, which requests must name
    settings = Settings(
        command=[sys.executable, str(SDK_SERVER)],
        port=port,
        auth="static",
        static_tokens=[{"principal": "sdk", "sha256": digest_of(token)}],
        public_url=f"http://127.0.0.1:{port}",
    )
    server = await aiohttp_server(create_app(settings), port=port)
    url = str(server.make_url("/mcp"))
    authorized = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    await scenario_tools(
        lambda **kwargs: mcp.Client(streamable_http_client(url, http_client=authorized), mode="legacy", **kwargs)
    )
    await authorized.aclose()
    anonymous = create_mcp_http_client()
    with pytest.raises(ExceptionGroup) as refused:
        async with mcp.Client(streamable_http_client(url, http_client=anonymous), mode="legacy"):
            pass
    await anonymous.aclose()
    errors = _leaves(refused.value)
    assert [(type(e), str(e)) for e in errors] == [(MCPError, "Authentication required")]


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]
