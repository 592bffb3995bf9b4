"""The official TypeScript SDK v2 client (`@modelcontextprotocol/client`, pinned in
`tests/clients/ts/package.json`) speaking 2026-07-28 through the gateway, against servers of every
era: a legacy-only server (translated: its requests to the client become requests for input), a
dual-era one and a modern-only one (passed through).

`tests/clients/ts/scenarios.mjs` runs the scenarios of `MODERN_SCENARIOS` in
`tests/support/sdk_scenarios.py` with the TS client and prints one JSON line per scenario; one node
process runs them all per (server era, client mode). `auto` probes with `server/discover` and must
stay modern; `2026-07-28` is a pin that never falls back.

`make pytest` installs the client (`npm ci`); without that install the tests skip, except under CI,
where a missing install is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Final

import pytest
from pytest_aiohttp import AiohttpServer

from gateway import create_app
from gateway.config import Settings
from tests.support.servers import SDK_SERVER

TS_CLIENT_DIR: Final = Path(__file__).parents[1] / "clients" / "ts"
SCENARIOS_SCRIPT: Final = TS_CLIENT_DIR / "scenarios.mjs"
NODE_MODULES: Final = TS_CLIENT_DIR / "node_modules"

SCENARIOS: Final = (
    "tools",
    "resources",
    "prompts",
    "progress",
    "logging",
    "elicitation",
    "sampling",
    "roots",
    "listen",
)
"""What `scenarios.mjs all` runs, in order; each must report exactly once."""

NODE_RUN_TIMEOUT: Final = 90.0
"""Upper bound for one node process running every scenario (about a second when all is well; each
scenario bounds itself at 20 s), below pytest-timeout's 120 s so a hang fails with its output."""

KILL_TIMEOUT: Final = 5.0
"""Upper bound for node to be gone after SIGKILL."""

ERAS: Final = ("legacy", "dual", "modern")
MODES: Final = ("auto", "2026-07-28")


def _require_client_install() -> str:
    """The node executable, once the TS client is installed; skip (fail under CI) otherwise."""
    if not NODE_MODULES.is_dir():
        reason = f"{NODE_MODULES} is missing: run `make pytest` (npm ci in {TS_CLIENT_DIR})"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    node = shutil.which("node")
    assert node is not None, "node is not on PATH (.ci/run installs nodejs)"
    return node


async def _run_scenarios(node: str, url: str, mode: str) -> tuple[int, list[str], str]:
    """The exit status, stdout lines and stderr of `node scenarios.mjs <url> <mode> all`; fails on
    a hang."""
    process = await asyncio.create_subprocess_exec(
        node,
        str(SCENARIOS_SCRIPT),
        url,
        mode,
        "all",
        cwd=TS_CLIENT_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    lines: list[str] = []

    async def read_lines(stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            lines.append(raw.decode(errors="replace").rstrip("\n"))

    reading = asyncio.gather(read_lines(process.stdout), process.stderr.read(), process.wait())
    try:
        _, stderr, status = await asyncio.wait_for(reading, NODE_RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        await asyncio.wait_for(process.wait(), KILL_TIMEOUT)
        pytest.fail(f"node ran longer than {NODE_RUN_TIMEOUT} s; its output so far:\n" + "\n".join(lines))
    return status, lines, stderr.decode(errors="replace")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("era", ERAS, ids=lambda era: f"{era}-server")
async def test_ts_modern_client(era: str, mode: str, aiohttp_server: AiohttpServer) -> None:
    node = _require_client_install()
    settings = Settings(command=[sys.executable, str(SDK_SERVER), "--era", era], port=0)
    url = str((await aiohttp_server(create_app(settings))).make_url("/mcp"))

    status, lines, stderr = await _run_scenarios(node, url, mode)

    results = [json.loads(line) for line in lines if line.startswith("{")]
    failed = [f"{result['scenario']}: {result.get('error')}" for result in results if result.get("ok") is not True]
    assert not failed, "failing scenarios:\n" + "\n".join(failed) + f"\nstderr:\n{stderr}"
    assert [result["scenario"] for result in results] == list(SCENARIOS), f"stdout:\n{lines}\nstderr:\n{stderr}"
    assert status == 0, f"node exited with {status}; stderr:\n{stderr}"
