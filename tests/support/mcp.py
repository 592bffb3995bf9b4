"""MCP at the protocol level over the aiohttp test client: `Mcp` sends JSON-RPC messages and
returns every message that comes back (a JSON body or each event of an SSE stream), so tests can
assert on statuses, headers and messages exactly; and the SSE readers for streams kept open."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any, Final

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from aiohttp.web import Application

from tests.support.types import JsonObj
from tests.support.waits import WAIT

LATEST: Final = "2025-11-25"
ACCEPT_BOTH: Final = "application/json, text/event-stream"
LARGE_BODY: Final = 512 * 1024
"""Bodies larger than this are sent as a stream (a file-like body), not as one bytes object."""


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """(event id, data) for each event of a complete SSE body; comments and events without data
    (the priming event) skipped."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event_id, data = None, []
        for line in block.split("\n"):
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if "".join(data):  # an event without data (the priming event) is not dispatched
            events.append((event_id, "\n".join(data)))
    return events


async def read_event(response: ClientResponse, timeout: float = WAIT) -> tuple[str | None, JsonObj]:
    """The next event of an open SSE response (keep-alive comments and the priming event skipped)."""
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
                if "".join(data):
                    return event_id, json.loads("\n".join(data))
                data = []  # the priming event: its id stands, nothing to dispatch


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


MODERN: Final = "2026-07-28"
# What every 2026-07-28 request of these tests says about its client, unless a test says otherwise.
MODERN_CAPABILITIES: Final[JsonObj] = {}


def envelope(capabilities: JsonObj | None = None, *, version: str = MODERN, log_level: str | None = None) -> JsonObj:
    """The `_meta` of a 2026-07-28 request."""
    meta: JsonObj = {
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientCapabilities": MODERN_CAPABILITIES if capabilities is None else capabilities,
        "io.modelcontextprotocol/clientInfo": {"name": "gateway-tests", "version": "1"},
    }
    if log_level is not None:
        meta["io.modelcontextprotocol/logLevel"] = log_level
    return meta


def routing_headers(message: JsonObj) -> dict[str, str]:
    """The headers a 2026-07-28 client sends with `message`: its version, method and name."""
    params = message.get("params") or {}
    version = (params.get("_meta") or {}).get("io.modelcontextprotocol/protocolVersion", MODERN)
    headers = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH, "MCP-Protocol-Version": str(version)}
    if "method" in message:
        headers["Mcp-Method"] = message["method"]
    named = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}.get(message.get("method", ""))
    if named is not None and named in params:
        headers["Mcp-Name"] = header_value(str(params[named]))
    return headers


def header_value(text: str) -> str:
    """`text` as a header carries it: as it is when printable ASCII, else Base64 in the sentinel."""
    if text.isascii() and text.isprintable() and text == text.strip() and not text.startswith("=?base64?"):
        return text
    return "=?base64?" + base64.b64encode(text.encode()).decode() + "?="


class Modern:
    """A minimal 2026-07-28 client over the aiohttp test client: no session, every request whole."""

    def __init__(self, client: TestClient[Any, Application], path: str = "/mcp", token: str | None = None) -> None:
        self.http = client
        self.path = path
        self.token = token
        self._ids = 0

    def message(self, method: str, params: JsonObj | None = None, **meta: Any) -> JsonObj:
        self._ids += 1
        return {
            "jsonrpc": "2.0",
            "id": self._ids,
            "method": method,
            "params": {**(params or {}), "_meta": envelope(**meta)},
        }

    def headers(self, message: JsonObj, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = routing_headers(message)
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    async def post(
        self, message: JsonObj, headers: dict[str, str] | None = None
    ) -> tuple[int, list[JsonObj], ClientResponse]:
        """POST one message; (status, every message received, the response)."""
        async with self.http.post(self.path, json=message, headers=self.headers(message, headers)) as response:
            return response.status, await _messages(response), response

    async def request(self, method: str, params: JsonObj | None = None, **meta: Any) -> JsonObj:
        """Send a request; return its response (the last message), asserting HTTP 200."""
        status, messages, _ = await self.post(self.message(method, params, **meta))
        assert status == 200, (status, messages)
        return messages[-1]

    async def call_tool(self, name: str, arguments: JsonObj | None = None, **meta: Any) -> JsonObj:
        return await self.request("tools/call", {"name": name, "arguments": arguments or {}}, **meta)
