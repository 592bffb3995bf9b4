"""Shared test fixtures: settings for a real echo child, an MCP-speaking HTTP test client, and
process inspection for leak checks. Every test talks HTTP to the real app and real processes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from aiohttp.web import Application

from gateway import create_app
from gateway.config.settings import Settings

SERVERS = Path(__file__).parent / "servers"
ECHO_SERVER = SERVERS / "echo_server.py"
SDK_SERVER = SERVERS / "sdk_server.py"
LATEST = "2025-11-25"
ACCEPT_BOTH = "application/json, text/event-stream"
# Upper bound for any single wait in a test; a real failure shows up as this timeout.
WAIT = 15.0
LARGE_BODY = 512 * 1024

JsonObj = dict[str, Any]


class AiohttpClient(Protocol):
    """pytest-aiohttp's `aiohttp_client` fixture: keyword arguments go to the client session."""

    def __call__(self, app: Application, **kwargs: Any) -> Awaitable[TestClient[Any, Application]]: ...


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees another's MCP_GATEWAY_* settings or picks up a stray .env file."""
    for name in list(os.environ):
        if name.startswith("MCP_GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def echo_command(*flags: str) -> list[str]:
    return [sys.executable, str(ECHO_SERVER), *flags]


def make_settings(*flags: str, **overrides: Any) -> Settings:
    """Settings around the echo server; keyword arguments override any field."""
    values: dict[str, Any] = {"command": echo_command(*flags), "port": 0, "log_level": "debug"}
    values.update(overrides)
    return Settings(**values)


def public_host(settings: Settings) -> dict[str, str]:
    """The `Host` header of a client that reached the gateway at its public URL (which the gateway
    checks on the MCP endpoint); none without a public URL."""
    if settings.public_url is None:
        return {}
    return {"Host": urlsplit(str(settings.public_url)).netloc}


# --- SSE and the protocol-level client ---------------------------------------------------------


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """(event id, data) for each event of a complete SSE body; comments skipped."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event_id, data = None, []
        for line in block.split("\n"):
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((event_id, "\n".join(data)))
    return events


async def read_event(response: ClientResponse, timeout: float = WAIT) -> tuple[str | None, JsonObj]:
    """The next event of an open SSE response (keep-alive comments skipped)."""
    event_id: str | None = None
    data: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            raw = await response.content.readline()
            if not raw:
                raise EOFError("SSE stream ended")
            line = raw.decode().rstrip("\r\n")
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif not line and data:
                return event_id, json.loads("\n".join(data))


async def read_comment(response: ClientResponse, timeout: float = WAIT) -> str:
    """The next SSE comment line of an open response."""
    async with asyncio.timeout(timeout):
        while True:
            raw = await response.content.readline()
            if not raw:
                raise EOFError("SSE stream ended")
            if raw.startswith(b":"):
                return raw.decode().strip()


class Mcp:
    """A minimal MCP client over the aiohttp test client, for protocol-level assertions."""

    def __init__(self, client: TestClient[Any, Application], path: str = "/mcp") -> None:
        self.http = client
        self.path = path
        self.session_id: str | None = None
        self.version: str | None = None
        self._ids = 0

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH}
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        if self.version:
            headers["MCP-Protocol-Version"] = self.version
        headers.update(extra or {})
        return headers

    async def initialize(self, version: str = LATEST, capabilities: JsonObj | None = None) -> JsonObj:
        message = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": version,
                "capabilities": capabilities or {},
                "clientInfo": {"name": "gateway-tests", "version": "1"},
            },
        }
        async with self.http.post(self.path, json=message, headers=self.headers()) as response:
            assert response.status == 200, await response.text()
            self.session_id = response.headers["Mcp-Session-Id"]
            body = await _messages(response)
        result = body[-1]["result"]
        self.version = result["protocolVersion"]
        status = await self.notify("notifications/initialized")
        assert status == 202
        return dict(result)

    async def post(self, message: Any, headers: dict[str, str] | None = None) -> tuple[int, list[JsonObj]]:
        """POST one message (or a batch); (status, messages received: JSON or every SSE event)."""
        body = json.dumps(message).encode()
        data = io.BytesIO(body) if len(body) > LARGE_BODY else body  # aiohttp streams large bodies
        async with self.http.post(self.path, data=data, headers=self.headers(headers)) as response:
            return response.status, await _messages(response)

    async def request(self, method: str, params: JsonObj | None = None, **extra: Any) -> JsonObj:
        """Send a request; return its response (the last message), asserting HTTP 200."""
        message: JsonObj = {"jsonrpc": "2.0", "id": extra.pop("id", self.next_id()), "method": method}
        if params is not None:
            message["params"] = params
        status, messages = await self.post(message, **extra)
        assert status == 200, (status, messages)
        return messages[-1]

    async def call_tool(self, name: str, **arguments: Any) -> JsonObj:
        return await self.request("tools/call", {"name": name, "arguments": arguments})

    async def notify(self, method: str, params: JsonObj | None = None) -> int:
        message: JsonObj = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        status, _ = await self.post(message)
        return status

    async def delete(self) -> int:
        async with self.http.delete(self.path, headers=self.headers()) as response:
            return response.status


async def _messages(response: ClientResponse) -> list[JsonObj]:
    text = await response.text()
    if not text:
        return []
    if response.content_type == "text/event-stream":
        return [json.loads(data) for _, data in parse_sse(text) if data]
    value = json.loads(text)
    return value if isinstance(value, list) else [value]


def text_of(response: JsonObj) -> str:
    """The text of a tools/call result."""
    return str(response["result"]["content"][0]["text"])


@pytest.fixture
async def gateway(aiohttp_client: AiohttpClient) -> Callable[..., Awaitable[Mcp]]:
    """Factory: `await gateway(*echo_flags, **settings)` serves the app, returns a fresh `Mcp`."""

    async def start(*flags: str, **overrides: Any) -> Mcp:
        settings = make_settings(*flags, **overrides)
        return Mcp(await aiohttp_client(create_app(settings), headers=public_host(settings)))

    return start


# --- processes ---------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) from /proc, or None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def live_processes() -> Iterator[tuple[int, int, int]]:
    """(pid, ppid, pgid) of every live (non-zombie) process."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                yield int(entry.name), stat[1], stat[2]


def descendants(root: int) -> set[int]:
    """Live descendants of `root`."""
    children: dict[int, list[int]] = {}
    for pid, ppid, _ in live_processes():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def group_members(pgids: set[int]) -> set[int]:
    """Live processes in any of the given process groups (children keep it after reparenting)."""
    return {pid for pid, _, pgid in live_processes() if pgid in pgids}


async def startup_log(stderr: asyncio.StreamReader) -> list[JsonObj]:
    """A gateway subprocess's JSON log records up to the one that names its URL (within WAIT)."""
    records: list[JsonObj] = []
    async with asyncio.timeout(WAIT):
        while "url" not in (records[-1] if records else {}):
            line = await stderr.readline()
            assert line, f"the gateway exited before serving: {records}"
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


async def drain_log(stderr: asyncio.StreamReader, log: list[JsonObj]) -> None:
    """Keep reading a gateway subprocess's stderr (a full pipe would block it), keeping its JSON records."""
    while line := await stderr.readline():
        with contextlib.suppress(ValueError):
            log.append(json.loads(line))


async def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll `predicate` until true or `timeout`; returns its last value (no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def child_pids() -> set[int]:
    """Children of this test process that are MCP servers (the orphan watchdog excluded)."""
    return {pid for pid in descendants(os.getpid()) if _is_server(pid)}


def _is_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"watchdog.py" not in cmdline
