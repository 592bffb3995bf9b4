"""`mcp-gateway serve` as a real subprocess configured the container's way (MCP_GATEWAY_*
variables only), plus a small MCP client for talking to it over real HTTP.

The gateway binds a free loopback port and serves the echo server. On the way out it gets
SIGTERM (it stops its children itself) and a bounded wait, then SIGKILL, and whatever is left in
any process group it started is killed too, so a failing test never leaks a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Final

from aiohttp import ClientResponse, ClientSession

from tests.support.mcp import ACCEPT_BOTH, LARGE_BODY, LATEST, parse_sse
from tests.support.processes import descendants, drain_log, live_processes, startup_log
from tests.support.servers import echo_command
from tests.support.settings import CHILD_ISOLATION
from tests.support.types import JsonObj
from tests.support.waits import WAIT

# Bytes of one stderr line the reader accepts (log records are short; this only bounds memory).
LOG_LINE_LIMIT: Final = 1024 * 1024


class GatewayProcess:
    """A running gateway: its URL, port and the JSON log records it wrote."""

    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url  # of the MCP endpoint
        self.log: list[JsonObj] = []

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    def process_groups(self) -> set[int]:
        """Process groups of the gateway's live descendants (each child leads its own)."""
        mine = descendants(self.process.pid)
        return {pgid for pid, _, pgid in live_processes() if pid in mine}


def _open_file_limit(soft: int, hard: int) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


@contextlib.asynccontextmanager
async def running_gateway(
    workdir: Path, settings: Mapping[str, str], *, nofile: tuple[int, int] | None = None
) -> AsyncIterator[GatewayProcess]:
    """Serve the echo server on 127.0.0.1 with `settings` (names without the MCP_GATEWAY_ prefix);
    `nofile`: the (soft, hard) open-file limit it starts under."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MCP_GATEWAY_")}
    env.update(
        {
            "MCP_GATEWAY_HOST": "127.0.0.1",
            "MCP_GATEWAY_PORT": "0",
            "MCP_GATEWAY_COMMAND": json.dumps(echo_command()),
            "MCP_GATEWAY_LOG_FORMAT": "json",
            "MCP_GATEWAY_AUDIT_LOG": "off",
            "MCP_GATEWAY_CHILD_ISOLATION": CHILD_ISOLATION,
        }
    )
    env.update({f"MCP_GATEWAY_{name.upper()}": value for name, value in settings.items()})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        cwd=workdir,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        limit=LOG_LINE_LIMIT,
        # Only setrlimit runs between fork and exec: nothing that a thread could hold a lock for.
        preexec_fn=_open_file_limit(*nofile) if nofile is not None else None,
    )
    assert process.stderr is not None
    drain: asyncio.Task[None] | None = None
    gateway: GatewayProcess | None = None
    try:
        startup = await startup_log(process.stderr)
        gateway = GatewayProcess(process, startup[-1]["url"])
        gateway.log.extend(startup)
        drain = asyncio.get_running_loop().create_task(drain_log(process.stderr, gateway.log))
        yield gateway
    finally:
        groups = gateway.process_groups() if gateway is not None else set()
        groups.discard(os.getpgid(0))
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)  # the graceful way: it stops its children
            try:
                async with asyncio.timeout(WAIT):
                    await process.wait()
            except TimeoutError:
                process.kill()
        for pgid in groups:  # anything the gateway failed to stop (the orphan watchdog included)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        async with asyncio.timeout(WAIT):
            await process.wait()
            if drain is not None:
                await drain


class HttpMcp:
    """One MCP session over real HTTP, through whatever sits at `url`."""

    def __init__(self, http: ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.session_id: str | None = None
        self.version: str | None = None
        self.extra_headers: dict[str, str] = {}  # sent with every request
        self._ids = 0

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH, **self.extra_headers}
        if self.session_id is not None:
            headers["Mcp-Session-Id"] = self.session_id
        if self.version is not None:
            headers["MCP-Protocol-Version"] = self.version
        headers.update(extra or {})
        return headers

    def request(self, method: str, params: JsonObj | None = None) -> JsonObj:
        self._ids += 1
        return {"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params or {}}

    def tool_call(self, name: str, meta: JsonObj | None = None, **arguments: Any) -> JsonObj:
        params: JsonObj = {"name": name, "arguments": arguments}
        if meta is not None:
            params["_meta"] = meta
        return self.request("tools/call", params)

    def post(
        self, message: JsonObj | bytes, headers: Mapping[str, str] | None = None
    ) -> contextlib.AbstractAsyncContextManager[ClientResponse]:
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        data = io.BytesIO(body) if len(body) > LARGE_BODY else body  # aiohttp streams large bodies
        return self.http.post(self.url, data=data, headers=self.headers(headers))

    def get(self) -> contextlib.AbstractAsyncContextManager[ClientResponse]:
        return self.http.get(self.url, headers=self.headers())

    async def initialize(self, capabilities: JsonObj | None = None) -> None:
        params = {
            "protocolVersion": LATEST,
            "capabilities": capabilities or {},
            "clientInfo": {"name": "deploy-tests", "version": "1"},
        }
        async with self.post(self.request("initialize", params)) as response:
            assert response.status == 200, await response.text()
            self.session_id = response.headers["Mcp-Session-Id"]
            self.version = (await messages_of(response))[-1]["result"]["protocolVersion"]
        async with self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}) as response:
            assert response.status == 202, await response.text()

    async def call(self, message: JsonObj | bytes) -> tuple[int, list[JsonObj]]:
        async with self.post(message) as response:
            return response.status, await messages_of(response)


async def messages_of(response: ClientResponse) -> list[JsonObj]:
    """Every message of a complete response body: the JSON answer or each SSE event."""
    text = await asyncio.wait_for(response.text(), WAIT)
    if not text:
        return []
    if response.content_type == "text/event-stream":
        return [json.loads(data) for _, data in parse_sse(text)]
    value = json.loads(text)
    return value if isinstance(value, list) else [value]
