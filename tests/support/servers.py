"""Where the stdio MCP servers written for the tests live (`tests/servers/`), and the command
that starts the echo server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from tests.support.waits import WAIT

SERVERS: Final = Path(__file__).parents[1] / "servers"
ECHO_SERVER: Final = SERVERS / "echo_server.py"
SDK_SERVER: Final = SERVERS / "sdk_server.py"


def echo_command(*flags: str) -> list[str]:
    """argv of the echo server with `flags` (its misbehaving modes)."""
    return [sys.executable, str(ECHO_SERVER), *flags]


def served_http(script: Path) -> Iterator[str]:
    """A test HTTP server (a subprocess printing its URL first) for as long as the caller iterates."""
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT)
        if process.stdout is not None:
            process.stdout.close()
