"""Run every SDK scenario against ``tests/servers/sdk_server.py`` directly over stdio.

This validates the test server (and the scenarios) without the gateway: a
scenario failing here is a bug in the server or the scenario, not in the
gateway. The gateway's own module runs the same ``ALL_SCENARIOS`` through the
gateway with a Streamable HTTP client factory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import mcp
import pytest
from mcp import StdioServerParameters

from tests.support.sdk_scenarios import ALL_SCENARIOS, Scenario

SDK_SERVER = Path(__file__).resolve().parents[1] / "servers" / "sdk_server.py"


def make_stdio_client(**client_kwargs: Any) -> mcp.Client:
    """A legacy-mode (initialize handshake) client that spawns the SDK server over stdio."""
    server = StdioServerParameters(command=sys.executable, args=[str(SDK_SERVER)])
    return mcp.Client(server, mode="legacy", **client_kwargs)


@pytest.mark.parametrize("scenario", ALL_SCENARIOS, ids=lambda scenario: scenario.__name__)
async def test_scenario_over_stdio(scenario: Scenario) -> None:
    await scenario(make_stdio_client)
