"""Where the stdio MCP servers written for the tests live (`tests/servers/`), and the command
that starts the echo server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

SERVERS: Final = Path(__file__).parents[1] / "servers"
ECHO_SERVER: Final = SERVERS / "echo_server.py"
SDK_SERVER: Final = SERVERS / "sdk_server.py"


def echo_command(*flags: str) -> list[str]:
    """argv of the echo server with `flags` (its misbehaving modes)."""
    return [sys.executable, str(ECHO_SERVER), *flags]
