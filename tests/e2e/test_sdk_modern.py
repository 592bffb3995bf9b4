"""The official Python SDK client speaking 2026-07-28 through the gateway, against servers of
every era: a legacy-only server (translated: discovery from its handshake, its requests to the
client as requests for input), a dual-era one and a modern-only one (passed through: its own
requests for input, its own requestState).

`mode="2026-07-28"` never probes; `mode="auto"` probes with `server/discover` and must stay
modern, because the gateway answers the probe as a 2026-07-28 server does.
"""

from __future__ import annotations

import sys

import mcp
import pytest
from pytest_aiohttp import AiohttpServer

from gateway import create_app
from gateway.config import Settings
from tests.support.sdk_scenarios import LEGACY_CLIENT_SCENARIOS, MODERN_SCENARIOS, Scenario
from tests.support.servers import SDK_SERVER

ERAS = ("legacy", "dual", "modern")


@pytest.fixture(params=ERAS, ids=lambda era: f"{era}-server")
async def gateway_url(request: pytest.FixtureRequest, aiohttp_server: AiohttpServer) -> str:
    settings = Settings(command=[sys.executable, str(SDK_SERVER), "--era", request.param], port=0)
    server = await aiohttp_server(create_app(settings))
    return str(server.make_url("/mcp"))


@pytest.mark.parametrize("mode", ["2026-07-28", "auto"])
@pytest.mark.parametrize("scenario", MODERN_SCENARIOS, ids=lambda s: s.__name__.removeprefix("scenario_"))
async def test_modern_client(scenario: Scenario, mode: str, gateway_url: str) -> None:
    def client(**kwargs: object) -> mcp.Client:
        made = mcp.Client(gateway_url, mode=mode, **kwargs)  # type: ignore[arg-type]
        return made

    await scenario(client)


async def test_auto_mode_stays_modern(gateway_url: str) -> None:
    """The probe is answered as a 2026-07-28 server answers it: the client never falls back."""
    async with mcp.Client(gateway_url, mode="auto") as client:
        assert client.protocol_version == "2026-07-28"
        assert client.server_info is not None
        assert client.server_info.name == "sdk-test-server"


@pytest.mark.parametrize("era", ERAS, ids=lambda era: f"{era}-server")
@pytest.mark.parametrize("scenario", LEGACY_CLIENT_SCENARIOS, ids=lambda s: s.__name__.removeprefix("scenario_"))
async def test_legacy_client(scenario: Scenario, era: str, aiohttp_server: AiohttpServer) -> None:
    """A handshake-era client of a server of any era; of one of 2026-07-28 only, through the
    translation (initialize answered from server/discover, requests enveloped, requests for
    input turned into requests to the client, subscriptions served by a listen on the child)."""
    settings = Settings(command=[sys.executable, str(SDK_SERVER), "--era", era], port=0)
    url = str((await aiohttp_server(create_app(settings))).make_url("/mcp"))
    await scenario(lambda **kwargs: mcp.Client(url, mode="legacy", **kwargs))
