"""`mcp-gateway connect` as a real subprocess, driven line by line over its stdin and stdout.

Everything it writes to stdout is kept (so a test can check that every line is JSON-RPC) and its
stderr is drained into memory (so a test can check that the token never appears there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any, Final

from aiohttp.test_utils import unused_port
from aiohttp.web import Application
from pytest_aiohttp import AiohttpServer

from gateway import create_app
from gateway.auth.static import digest_of
from gateway.config import Settings
from gateway.jsonrpc import classify
from tests.support.types import JsonObj
from tests.support.waits import WAIT

TOKEN_VAR: Final = "MCP_BRIDGE_TEST_TOKEN"
TOKEN: Final = "bridge-test-token-7c1d9e"
STDOUT_LIMIT: Final = 16 * 1024 * 1024


def bridge_argv(url: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "connect", url, *options]


def gateway_settings(command: list[str], **overrides: Any) -> Settings:
    """The gateway with static bearer auth accepting `TOKEN`, to be served at its public URL on a
    loopback port of its own (the gateway checks that requests name it)."""
    port = unused_port()
    values: dict[str, Any] = {
        "command": command,
        "port": port,
        "auth": "static",
        "static_tokens": [{"principal": "bridge-user", "sha256": digest_of(TOKEN)}],
        "public_url": f"http://127.0.0.1:{port}",
    }
    values.update(overrides)
    return Settings(**values)


async def serve_gateway(aiohttp_server: AiohttpServer, settings: Settings) -> tuple[str, Application]:
    app = create_app(settings)
    server = await aiohttp_server(app, port=settings.port)
    return str(server.make_url("/mcp")), app


class ConnectProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stdout: list[bytes] = []
        self.stderr = bytearray()
        self.unclaimed: list[JsonObj] = []  # messages read while waiting for another one

    async def send(self, message: JsonObj | bytes) -> None:
        assert self.process.stdin is not None
        line = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.process.stdin.write(line + b"\n")
        await self.process.stdin.drain()

    async def receive(self, timeout: float = WAIT) -> JsonObj:
        """The next message on stdout (one whole line)."""
        if self.unclaimed:
            return self.unclaimed.pop(0)
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.process.stdout.readline()
        assert line.endswith(b"\n"), f"stdout ended: {line!r}; stderr: {self.stderr.decode(errors='replace')}"
        self.stdout.append(line)
        value: JsonObj = json.loads(line)
        return value

    async def answer_to(self, msg_id: int | str) -> tuple[JsonObj, list[JsonObj]]:
        """The response with `msg_id`, and every other message that came before it."""
        before: list[JsonObj] = []
        while True:
            message = await self.receive()
            if "method" not in message and message.get("id") == msg_id:
                return message, before
            before.append(message)

    async def request(self, msg_id: int | str, method: str, params: JsonObj | None = None) -> JsonObj:
        message: JsonObj = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        answer, others = await self.answer_to(msg_id)
        self.unclaimed.extend(others)
        return answer

    async def initialize(self, capabilities: JsonObj | None = None) -> JsonObj:
        params = {
            "protocolVersion": "2025-11-25",
            "capabilities": capabilities or {},
            "clientInfo": {"name": "bridge-tests", "version": "1"},
        }
        answer = await self.request("init", "initialize", params)
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer

    async def close_stdin(self) -> int:
        """Close stdin, read stdout to its end; the exit status."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        async with asyncio.timeout(WAIT):
            while line := await self.process.stdout.readline():
                self.stdout.append(line)
            return await self.process.wait()

    def assert_clean_stdout(self) -> None:
        """Every line written to stdout is one JSON-RPC message."""
        for line in self.stdout:
            assert line.endswith(b"\n"), line
            assert b"\n" not in line[:-1], line
            classify(json.loads(line))

    def stderr_text(self) -> str:
        return self.stderr.decode(errors="replace")


async def _drain(stream: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await stream.read(65536):
        into += chunk


@contextlib.asynccontextmanager
async def running_connect(
    url: str, *options: str, env: dict[str, str] | None = None, token: str = TOKEN
) -> AsyncIterator[ConnectProcess]:
    """`mcp-gateway connect URL --bearer-env TOKEN_VAR OPTIONS`; killed on the way out if still running."""
    environment = {**os.environ, TOKEN_VAR: token, **(env or {})}
    process = await asyncio.create_subprocess_exec(
        *bridge_argv(url, "--bearer-env", TOKEN_VAR, "--log-level", "debug", *options),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
        limit=STDOUT_LIMIT,
    )
    bridge = ConnectProcess(process)
    assert process.stderr is not None
    drain = asyncio.get_running_loop().create_task(_drain(process.stderr, bridge.stderr))
    try:
        yield bridge
    finally:
        if process.returncode is None:
            process.kill()
        async with asyncio.timeout(WAIT):
            await process.wait()
            await drain
