"""Fixtures shared by every test: a clean environment, and `gateway`, the real app in front of a
real echo child behind the aiohttp test client. Helpers live in `tests.support`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from gateway import create_app
from tests.support.mcp import Mcp
from tests.support.settings import CHILD_ISOLATION, make_settings, public_host
from tests.support.types import Gateway


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees another's MCP_GATEWAY_* settings or picks up a stray .env file. Children run
    with the isolation named, never `auto`, which picks by what the host allows (root, bubblewrap):
    `none` unless a test names another (the isolation tests try every mode)."""
    for name in list(os.environ):
        if name.startswith("MCP_GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MCP_GATEWAY_CHILD_ISOLATION", CHILD_ISOLATION)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def gateway(aiohttp_client: AiohttpClient) -> Gateway:
    """Factory: `await gateway(*echo_flags, **settings)` serves the app, returns a fresh `Mcp`."""

    async def start(*flags: str, **overrides: Any) -> Mcp:
        settings = make_settings(*flags, **overrides)
        return Mcp(await aiohttp_client(create_app(settings), headers=public_host(settings)))

    return start
