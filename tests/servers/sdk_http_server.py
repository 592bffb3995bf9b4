"""``tests/servers/sdk_server.py`` served over the official SDK's own Streamable HTTP transport.

Run it as ``python tests/servers/sdk_http_server.py``: it binds 127.0.0.1 on a free port,
prints the endpoint URL as its first stdout line, and serves (uvicorn, the SDK's stateful
session manager, SSE responses) until it is terminated. Tests use it as the "any compliant
Streamable HTTP server" that is not this gateway.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository root

from tests.servers.sdk_server import mcp


async def serve() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = mcp.streamable_http_app(host="127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    print(f"http://127.0.0.1:{port}/mcp", flush=True)
    await server.serve(sockets=[sock])


if __name__ == "__main__":
    asyncio.run(serve())
