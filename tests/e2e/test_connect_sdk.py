"""The official SDK's *stdio* client, talking to `mcp-gateway connect` as if it were a stdio server.

Behind the bridge: the gateway (static bearer auth) in front of the SDK test server, and then the
SDK's own Streamable HTTP server. Every SDK scenario passing over both shows the bridge is
transparent for a legacy-era client: initialize, tools, progress, logging, sampling and
elicitation round trips, resource subscriptions. Protocol details (errors, bounds, expiry,
shutdown) are checked line by line in test_connect.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import mcp
import pytest
from mcp import StdioServerParameters
from pytest_aiohttp import AiohttpServer

from tests.support.connect_process import TOKEN, TOKEN_VAR, bridge_argv, gateway_settings, serve_gateway
from tests.support.sdk_scenarios import ALL_SCENARIOS, Scenario
from tests.support.servers import SDK_SERVER, SERVERS, served_http

pytestmark = pytest.mark.slow

SDK_HTTP_SERVER = SERVERS / "sdk_http_server.py"


def bridged_client(url: str, token: str = TOKEN) -> Any:
    """A client factory (see sdk_scenarios) whose stdio server is the bridge to `url`."""
    argv = bridge_argv(url, "--bearer-env", TOKEN_VAR)

    def make(**kwargs: Any) -> mcp.Client:
        server = StdioServerParameters(command=argv[0], args=argv[1:], env={TOKEN_VAR: token})
        return mcp.Client(server, mode="legacy", **kwargs)

    return make


@pytest.fixture
async def gateway_url(aiohttp_server: AiohttpServer) -> str:
    url, _ = await serve_gateway(aiohttp_server, gateway_settings([sys.executable, str(SDK_SERVER)]))
    return url


@pytest.fixture(scope="module")
def sdk_http_url() -> Iterator[str]:
    """The SDK test server on the SDK's own Streamable HTTP transport (a subprocess)."""
    yield from served_http(SDK_HTTP_SERVER)


@pytest.mark.parametrize("scenario", ALL_SCENARIOS, ids=lambda s: s.__name__.removeprefix("scenario_"))
async def test_scenario_through_bridge_and_gateway(scenario: Scenario, gateway_url: str) -> None:
    await scenario(bridged_client(gateway_url))


@pytest.mark.parametrize("scenario", ALL_SCENARIOS, ids=lambda s: s.__name__.removeprefix("scenario_"))
async def test_scenario_through_bridge_and_sdk_http_server(scenario: Scenario, sdk_http_url: str) -> None:
    await scenario(bridged_client(sdk_http_url))
