"""The Claude Desktop configuration `client-config` prints, run the way Claude Desktop runs it.

A real gateway (static bearer auth) serves the SDK test server. `mcp-gateway client-config
--client claude-desktop` prints the config; its `command`, `args` and `env` are taken exactly as
printed, with the user's one edit (the token pasted into the env value) and `mcp-gateway` found
on PATH (this virtualenv's bin). The official SDK's stdio client starts that command, initializes,
lists and calls tools. With a wrong token, starting the session fails with an error that names
the refusal and the variable, within a bound. No process outlives a test.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Final

import anyio
import mcp
import pytest
from mcp import StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp.types import TextContent
from pytest_aiohttp import AiohttpServer

from tests.support.connect_process import TOKEN, gateway_settings, serve_gateway
from tests.support.processes import child_pids
from tests.support.servers import SDK_SERVER
from tests.support.waits import WAIT, eventually

pytestmark = pytest.mark.slow

VENV_BIN: Final = Path(sys.executable).parent
TOKEN_ENV: Final = "TEAM_TOOLS_TOKEN"
SERVER_NAME: Final = "team-tools"
# A whole session: the bridge starts, the gateway spawns the SDK server, initialize, two calls.
SESSION_TIMEOUT: Final = 30.0


async def printed_desktop_config(url: str) -> dict[str, Any]:
    """`mcp-gateway client-config --client claude-desktop`: the first snippet (the bridge)."""
    process = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "mcp-gateway"),
        "client-config",
        "--client",
        "claude-desktop",
        "--url",
        url,
        "--name",
        SERVER_NAME,
        "--token-env",
        TOKEN_ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(WAIT):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    first_section = out.decode().split("\n\n")[0]
    body = "\n".join(line for line in first_section.splitlines() if not line.startswith("#"))
    config = json.loads(body)
    server: dict[str, Any] = config["mcpServers"][SERVER_NAME]
    return server


def as_launched(server: dict[str, Any], token: str) -> StdioServerParameters:
    """What Claude Desktop starts: the printed command and args, the env block with the token
    pasted in, and a PATH on which `mcp-gateway` is found."""
    env = dict(server["env"])
    assert env == {TOKEN_ENV: "paste-your-token-here"}, "the printed config holds no token"
    env[TOKEN_ENV] = token
    env["PATH"] = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", os.defpath)])
    assert server["command"] == "mcp-gateway"
    return StdioServerParameters(command=server["command"], args=server["args"], env=env)


@pytest.fixture
async def gateway_url(aiohttp_server: AiohttpServer) -> str:
    url, _ = await serve_gateway(aiohttp_server, gateway_settings([sys.executable, str(SDK_SERVER)]))
    return url


async def test_the_printed_config_runs_a_session(gateway_url: str) -> None:
    server = await printed_desktop_config(gateway_url)
    assert server["args"] == ["connect", gateway_url, "--bearer-env", TOKEN_ENV]
    with anyio.fail_after(SESSION_TIMEOUT):
        async with mcp.Client(as_launched(server, TOKEN), mode="legacy") as client:
            assert client.server_info is not None
            assert client.server_info.name == "sdk-test-server"
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert {"add", "echo"} <= names
            result = await client.call_tool("add", {"a": 20, "b": 22})
            assert not result.is_error
            assert result.content == [TextContent(type="text", text="42")]
    assert await eventually(lambda: not child_pids()), f"left running: {child_pids()}"


async def test_a_wrong_token_fails_the_session_clearly(gateway_url: str) -> None:
    server = await printed_desktop_config(gateway_url)
    with anyio.fail_after(SESSION_TIMEOUT), pytest.raises(ExceptionGroup) as refused:
        async with mcp.Client(as_launched(server, "not-the-right-token"), mode="legacy"):
            pass
    # The answer to initialize is the bridge's error, raised from the client's task group.
    (error,) = leaves(refused.value)
    assert isinstance(error, MCPError)
    message = str(error)
    assert "refused the credentials (HTTP 401" in message
    assert TOKEN_ENV in message
    assert "not-the-right-token" not in message
    assert await eventually(lambda: not child_pids()), f"left running: {child_pids()}"


def leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]
