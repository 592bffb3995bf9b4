"""Fixtures shared by the integration tests of the built-in authorization server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import unused_port
from pytest_aiohttp import AiohttpServer

from gateway import create_app
from tests.support.oauth import Browser, Gateway, GatewayFactory, oauth_settings
from tests.support.waits import WAIT


@pytest.fixture
async def oauth_gateway(aiohttp_server: AiohttpServer) -> AsyncIterator[GatewayFactory]:
    """Factory: `await oauth_gateway(**settings)` serves a gateway with the built-in server on a
    loopback port of its own (its public URL), and closes its clients afterwards."""
    opened: list[Gateway] = []

    async def start(**overrides: Any) -> Gateway:
        port = unused_port()
        app = create_app(oauth_settings(port, **overrides))
        await aiohttp_server(app, port=port)
        gateway = Gateway(
            f"http://127.0.0.1:{port}",
            app,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)),
            Browser(),
        )
        opened.append(gateway)
        return gateway

    yield start
    for gateway in opened:
        await gateway.http.close()
        await gateway.browser.close()
