"""What every side of the comparison shares: the session interface and the client's JSON work.

Invariant: the gateway sessions and the pipe session encode requests and check answers with the
same functions here, so the client-side cost is the same (a modern request adds its envelope)
and cancels out of the ratio.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

JsonObj = dict[str, Any]

PROTOCOL_VERSION: Final = "2025-11-25"
CLIENT_INFO: Final[JsonObj] = {"name": "mcp-gateway-bench", "version": "1"}
INITIALIZE_PARAMS: Final[JsonObj] = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}


class BenchError(Exception):
    """A peer answered something other than what the benchmark expects; the run is void."""


class Session(Protocol):
    """An initialized MCP session with the echo server, by whatever path."""

    async def request(self, method: str, params: JsonObj) -> JsonObj:
        """Send one request and return its `result`; `BenchError` on an error answer."""
        ...

    async def aclose(self) -> None: ...


Opener = Callable[[], Awaitable[Session]]


def encode_request(request_id: int, method: str, params: JsonObj) -> bytes:
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    return json.dumps(message, separators=(",", ":")).encode()


def encode_notification(method: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": method}, separators=(",", ":")).encode()


def result_of(message: Any, request_id: int) -> JsonObj:
    """The `result` of the response to `request_id`."""
    if not isinstance(message, dict) or message.get("id") != request_id:
        raise BenchError(f"expected the response to request {request_id}, got {str(message)[:200]}")
    if "error" in message:
        raise BenchError(f"request {request_id} failed: {message['error']}")
    result = message.get("result")
    if not isinstance(result, dict):
        raise BenchError(f"request {request_id}: the result is not an object")
    return result


def tool_text(result: JsonObj) -> str:
    """The text of a `tools/call` result with one text content item."""
    return str(result["content"][0]["text"])
