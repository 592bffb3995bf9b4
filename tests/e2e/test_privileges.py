"""What a gateway started as root keeps of its privileges: the capabilities its children's isolation
needs and nothing else, in every set (effective, permitted, inheritable, ambient, bounding), in
the gateway, in its orphan watchdog, and in its children, which keep none. A real gateway process
per mode, read from /proc.

Also: the orphan watchdog, holding no more than those capabilities, still removes the private
directories of children of other users (made read-only inside) after the gateway is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import ClientSession

from gateway.sessions.privileges import CAP_NET_BIND_SERVICE
from gateway.sessions.sandbox import (
    CAP_KILL,
    CAP_SETGID,
    CAP_SETUID,
    IsolationMode,
    IsolationRequest,
    IsolationUnavailable,
    decide,
)
from tests.support.gateway_process import GatewayProcess, HttpMcp, running_gateway
from tests.support.processes import descendants
from tests.support.servers import SERVERS
from tests.support.types import JsonObj
from tests.support.waits import eventually

SYSTEM_PYTHON: Final = Path("/usr/bin/python3")  # a Python every user may run (the venv's may be under /root)
SPY: Final = [str(SYSTEM_PYTHON), str(SERVERS / "spy_server.py")]
UID_RANGE: Final = (1_000_700_000, 1_000_700_999)
SETS: Final = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
USERS: Final = (1 << CAP_SETUID) | (1 << CAP_SETGID) | (1 << CAP_KILL)
ALL_OF_THEM: Final = USERS | (1 << CAP_NET_BIND_SERVICE) | (1 << 8)  # CAP_SETPCAP too
KEPT: Final[dict[IsolationMode, int]] = {"none": 0, "uid": USERS, "uid+namespaces": USERS}


def _unavailable(mode: IsolationMode) -> str | None:
    try:
        asyncio.run(decide(IsolationRequest(mode, str(SYSTEM_PYTHON), UID_RANGE)))
    except IsolationUnavailable as error:
        return str(error)
    return None


UNAVAILABLE: Final = {mode: _unavailable(mode) for mode in KEPT}
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads capabilities from /proc"),
]


def capabilities(pid: int) -> dict[str, int]:
    """Every capability set of `pid`, as bit masks."""
    fields = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line
    )
    return {name: int(fields[name], 16) for name in SETS}


def watchdog_of(gateway: GatewayProcess) -> int:
    found = [
        pid for pid in descendants(gateway.process.pid) if b"watchdog.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(found) == 1, found
    return found[0]


def settings(mode: IsolationMode, **extra: str) -> dict[str, str]:
    values = {
        "command": json.dumps(SPY),
        "child_isolation": mode,
        "child_readable_paths": str(SERVERS),  # in the children's view even from a checkout under /tmp
        "child_uid_range": f"{UID_RANGE[0]}-{UID_RANGE[1]}",
    }
    return values | extra


async def spy(session: HttpMcp, tool: str, **arguments: Any) -> JsonObj:
    status, messages = await session.call(session.tool_call(tool, **arguments))
    assert status == 200, messages
    report: JsonObj = json.loads(messages[-1]["result"]["content"][0]["text"])
    return report


@pytest.mark.skipif(
    os.geteuid() != 0 or capabilities(os.getpid())["CapBnd"] & ALL_OF_THEM != ALL_OF_THEM,
    reason="needs a root holding the capabilities it may keep",
)
@pytest.mark.parametrize("mode", sorted(KEPT))
async def test_a_root_gateway_keeps_only_what_its_isolation_needs(mode: IsolationMode, tmp_path: Path) -> None:
    if (why := UNAVAILABLE.get(mode)) is not None:
        pytest.skip(why)
    async with running_gateway(tmp_path, settings(mode)) as gateway, ClientSession() as http:
        expected = KEPT[mode]
        kept = capabilities(gateway.process.pid)
        assert kept == {"CapInh": 0, "CapPrm": expected, "CapEff": expected, "CapBnd": expected, "CapAmb": 0}, kept
        assert capabilities(watchdog_of(gateway)) == kept  # it started from the reduced sets
        session = HttpMcp(http, gateway.url)
        await session.initialize()
        me = await spy(session, "whoami")
        assert me["CapEff"] == me["CapPrm"] == "0000000000000000", me
        # A child that runs as root (none) gains back nothing the gateway dropped from its bounding set.
        assert int(me["CapBnd"], 16) & ~expected == 0, me


@pytest.mark.skipif(UNAVAILABLE["uid"] is not None, reason=f"{UNAVAILABLE['uid']}")
async def test_a_low_port_adds_net_bind_service_alone(tmp_path: Path) -> None:
    """The check is of what is kept, not of binding: the port stays above 1024, the metrics one is low."""
    low = {"metrics_enabled": "true", "metrics_port": "1023", "metrics_host": "127.0.0.1"}
    async with running_gateway(tmp_path, settings("uid", **low)) as gateway:
        kept = capabilities(gateway.process.pid)
        assert kept["CapEff"] == USERS | (1 << CAP_NET_BIND_SERVICE), kept


@pytest.mark.skipif(UNAVAILABLE["uid"] is not None, reason=f"{UNAVAILABLE['uid']}")
async def test_the_watchdog_removes_other_users_directories_without_reading_them(tmp_path: Path) -> None:
    """After `kill -9` of the gateway, the watchdog (CAP_SETUID, CAP_SETGID, CAP_KILL, no right to
    read or remove another user's files) clears each child's directory as that child's user."""
    async with running_gateway(tmp_path, settings("uid")) as gateway, ClientSession() as http:
        watchdog = watchdog_of(gateway)
        homes = []
        for _ in range(2):
            session = HttpMcp(http, gateway.url)
            await session.initialize()
            me = await spy(session, "whoami")
            home = Path(me["HOME"])
            # Inside a directory of its user's, mode 0700: the gateway's root may neither read nor remove it.
            assert (await spy(session, "write_file", path=str(home / "notes.txt"), text="x"))["ok"]
            homes.append(home)
        root = homes[0].parent.parent
        gateway.process.send_signal(signal.SIGKILL)
        await gateway.process.wait()
        assert await eventually(lambda: not Path(f"/proc/{watchdog}").exists())
        assert not root.exists(), sorted(str(path) for path in root.rglob("*"))
