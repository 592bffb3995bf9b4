"""``tests/servers/sdk_server.py`` over the SDK's Streamable HTTP transport, serving 2026-07-28 only.

Run it as ``python tests/servers/sdk_http_modern_server.py``: it binds 127.0.0.1 on a free port,
prints the endpoint URL as its first stdout line, and serves until it is terminated. The SDK's
app serves 2026-07-28 requests statelessly (no session, a JSON or SSE answer per POST,
`subscriptions/listen` as a POST whose stream stays open); in front of it a small ASGI
middleware refuses everything of the handshake era, as a server of that version only does:

- a request without the 2026-07-28 envelope (``initialize`` among them, whatever it carries) is
  answered 400 with ``-32022`` and the versions served (none of the handshake);
- a request or notification whose ``MCP-Protocol-Version`` header is not 2026-07-28 is answered
  400 (``-32020`` for a request with the envelope: the header must match it);
- GET and DELETE are answered 405 with ``Allow: POST``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path
from typing import Any, Final

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository root

from tests.servers.sdk_server import mcp

MODERN_VERSION: Final = "2026-07-28"
VERSION_KEY: Final = "io.modelcontextprotocol/protocolVersion"
# The largest body the middleware reads to decide; the SDK's own limit is far below it.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024


class ModernOnly:
    """ASGI middleware: the handshake era refused, 2026-07-28 passed to the SDK's app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("GET", "DELETE"):
            await _answer(send, 405, None, {"Allow": "POST"})
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, replay = await _buffered(receive)
        if body is None:
            await _answer(send, 413, None)
            return
        refusal = _refusal(body, _header(scope, b"mcp-protocol-version"))
        if refusal is not None:
            await _answer(send, 400, refusal)
            return
        await self.app(scope, replay, send)


def _refusal(body: bytes, version_header: str | None) -> dict[str, Any] | None:
    """The JSON-RPC error a POST of the handshake era gets; None for one of 2026-07-28."""
    try:
        message = json.loads(body)
    except ValueError:
        return None  # the SDK answers a parse error itself
    if not isinstance(message, dict):
        return None
    msg_id = message.get("id")
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    enveloped = isinstance(meta, dict) and VERSION_KEY in meta and message.get("method") != "initialize"
    if "id" in message and "method" in message and not enveloped:
        requested = params.get("protocolVersion") if isinstance(params, dict) else version_header
        return _error(msg_id, -32022, "This server serves only protocol version 2026-07-28", requested)
    if version_header != MODERN_VERSION:
        if "id" in message and "method" in message:
            return {
                "jsonrpc": "2.0",
                "id": msg_id,
                "error": {"code": -32020, "message": "MCP-Protocol-Version must match the request's envelope"},
            }
        return _error(None, -32022, "This server serves only protocol version 2026-07-28", version_header)
    return None


def _error(msg_id: object, code: int, text: str, requested: object) -> dict[str, Any]:
    data = {"supported": [MODERN_VERSION], "requested": requested}
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": text, "data": data}}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _buffered(receive: Receive) -> tuple[bytes | None, Receive]:
    """The whole request body (None past `MAX_BODY_BYTES`), and a `receive` that hands it to the
    app again."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None, receive
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # what comes next: the client's disconnect

    return body, replay


async def _answer(send: Send, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode() if body is not None else b""
    pairs = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    if body is not None:
        pairs.append((b"content-type", b"application/json"))
    pairs.append((b"content-length", str(len(raw)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": pairs})
    await send({"type": "http.response.body", "body": raw, "more_body": False})


async def serve() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections made before uvicorn serves wait in the backlog
    port = sock.getsockname()[1]
    app = ModernOnly(mcp.streamable_http_app(host="127.0.0.1"))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    print(f"http://127.0.0.1:{port}/mcp", flush=True)
    await server.serve(sockets=[sock])


if __name__ == "__main__":
    asyncio.run(serve())
