"""Plugin verifiers (a team's own code) and chains of verifiers."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError
from pytest_aiohttp import AiohttpServer

from gateway import create_app
from gateway.auth import AuthStartupError
from gateway.auth.static import digest_of
from gateway.config import Settings
from tests.support.mcp import ACCEPT_BOTH, LATEST, Mcp
from tests.support.settings import make_settings
from tests.support.types import Gateway

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": LATEST}}
STATIC = "static-token-123"
PUBLIC = {"public_url": "https://mcp.example.com"}


async def status_for(mcp: Mcp, token: str) -> int:
    headers = {"Accept": ACCEPT_BOTH, "Authorization": f"Bearer {token}"}
    async with mcp.http.post("/mcp", json=INIT, headers=headers) as response:
        return response.status


async def test_plugin_verifier(gateway: Gateway) -> None:
    mcp = await gateway(
        auth="plugin", plugin="tests.auth_plugin:make_verifier", plugin_options={"issuer": "acme"}, **PUBLIC
    )
    assert await status_for(mcp, "team-ada") == 200
    assert await status_for(mcp, "ada") == 401


@pytest.mark.parametrize(
    ("plugin", "options", "message"),
    [
        ("tests.auth_plugin:make_verifier", {"healthy": False}, "did not answer"),
        ("tests.auth_plugin:not_a_verifier", {}, "without an async verify"),
        ("tests.no_such_module:factory", {}, "cannot load"),
    ],
    ids=["probe-fails", "not-a-verifier", "missing-module"],
)
async def test_plugin_problems_stop_startup(plugin: str, options: dict[str, Any], message: str) -> None:
    runner = web.AppRunner(create_app(make_settings(auth="plugin", plugin=plugin, plugin_options=options, **PUBLIC)))
    with pytest.raises(AuthStartupError, match=message):
        await runner.setup()
    await runner.cleanup()


async def test_chain_first_acceptance_wins(gateway: Gateway) -> None:
    mcp = await gateway(
        auth="chain",
        auth_chain=["static", "plugin"],
        static_tokens=[{"principal": "ci", "sha256": digest_of(STATIC)}],
        plugin="tests.auth_plugin:make_verifier",
        **PUBLIC,
    )
    assert await status_for(mcp, STATIC) == 200
    assert await status_for(mcp, "team-grace") == 200
    assert await status_for(mcp, "neither") == 401


async def test_chain_with_a_backend_down_fails_closed(gateway: Gateway, aiohttp_server: AiohttpServer) -> None:
    """If no verifier accepted and one could not answer, the answer is 503, never 401."""
    failing = {"down": False}

    async def user(request: web.Request) -> web.Response:
        return web.Response(status=503 if failing["down"] else 401)

    upstream = web.Application()
    upstream.router.add_get("/user", user)
    server = await aiohttp_server(upstream)
    mcp = await gateway(
        auth="chain",
        auth_chain=["static", "whoami"],
        static_tokens=[{"principal": "ci", "sha256": digest_of(STATIC)}],
        whoami_url=str(server.make_url("/user")),
        **PUBLIC,
    )
    assert await status_for(mcp, "someone-elses") == 401
    failing["down"] = True
    assert await status_for(mcp, "someone-elses-2") == 503
    assert await status_for(mcp, STATIC) == 200  # the static verifier still answers first


def test_chain_configuration_is_checked() -> None:
    with pytest.raises(ValidationError, match="list the verifiers"):
        Settings(command=["true"], auth="chain")
    with pytest.raises(ValidationError, match="whoami verifier requires whoami_url"):
        Settings(command=["true"], auth="chain", auth_chain=["whoami"])
    with pytest.raises(ValidationError, match="auth_chain"):
        Settings(command=["true"], auth="chain", auth_chain=["none"])


@pytest.mark.parametrize(("token", "starts"), [("team-svc", True), ("intruder", False)], ids=["accepted", "refused"])
async def test_startup_token_is_verified_before_serving(token: str, starts: bool) -> None:
    settings = make_settings(auth="plugin", plugin="tests.auth_plugin:make_verifier", startup_token=token, **PUBLIC)
    runner = web.AppRunner(create_app(settings))
    try:
        if starts:
            await runner.setup()
        else:
            with pytest.raises(AuthStartupError, match="startup token was refused"):
                await runner.setup()
    finally:
        await runner.cleanup()
