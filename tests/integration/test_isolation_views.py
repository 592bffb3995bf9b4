"""What a child in namespaces of its own sees of the host, through the real gateway (as root, so
`uid+namespaces`): the kernel's settings read-only, and nothing hidden coming back into view
through a directory it may write; and with `uid`, what a child leaves beside its own directory
goes with it.

A world-readable file stands for a secret here: with a user of its own a child could read it, so
only hiding keeps it out.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from pytest_aiohttp import AiohttpClient

from gateway import create_app
from gateway.sessions.sandbox import IsolationRequest, IsolationUnavailable, decide
from tests.support.mcp import Mcp, text_of
from tests.support.servers import SERVERS
from tests.support.settings import make_settings
from tests.support.types import JsonObj
from tests.support.waits import eventually

PYTHON: Final = "/usr/bin/python3"  # one every user may run (the virtualenv's may sit under /root)
SPY: Final = [PYTHON, str(SERVERS / "spy_server.py")]
UID_RANGE: Final = (1_000_800_000, 1_000_800_999)
# Outside /tmp, which every child sees as a private directory of its own anyway.
OUTSIDE: Final = Path("/var/tmp")  # noqa: S108 - a directory of the test's own is made in it


def _unavailable() -> str | None:
    try:
        asyncio.run(decide(IsolationRequest("uid+namespaces", PYTHON, UID_RANGE)))
    except IsolationUnavailable as error:
        return str(error)
    return None


WHY_NOT: Final = _unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"uid+namespaces: {WHY_NOT}")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every user may write (sticky, like /tmp), outside /tmp."""
    made = Path(tempfile.mkdtemp(prefix="isolation-views-", dir=OUTSIDE))
    try:
        made.chmod(0o1777)  # children of other users write here: the point of the test
        yield made
    finally:
        shutil.rmtree(made)


async def serve(aiohttp_client: AiohttpClient, **settings: Any) -> Mcp:
    values = {
        "command": SPY,
        "child_isolation": "uid+namespaces",
        "child_uid_range": f"{UID_RANGE[0]}-{UID_RANGE[1]}",
        "child_readable_paths": [SERVERS],  # in the children's view even from a checkout under /tmp
    }
    mcp = Mcp(await aiohttp_client(create_app(make_settings(**(values | settings)))))
    await mcp.initialize()
    return mcp


async def spy(mcp: Mcp, tool: str, **arguments: Any) -> JsonObj:
    report: JsonObj = json.loads(text_of(await mcp.call_tool(tool, **arguments)))
    return report


def outcome(report: JsonObj) -> str:
    return "ok" if report["ok"] else str(report["errno"])


async def test_the_kernels_settings_are_read_only_to_a_child(aiohttp_client: AiohttpClient) -> None:
    mcp = await serve(aiohttp_client)
    tried = await spy(mcp, "write_file", path="/proc/sys/kernel/core_pattern", text="|/bin/false")
    # Not merely refused to its user (EACCES): the whole of /proc/sys is a read-only mount.
    assert outcome(tried) == "EROFS", tried
    assert (await spy(mcp, "read_file", path="/proc/sys/kernel/ostype"))["ok"]  # still readable


async def test_a_writable_directory_brings_nothing_hidden_back(aiohttp_client: AiohttpClient, shared: Path) -> None:
    """A hidden file and the gateway's data directory inside a directory children may write stay
    hidden; the rest of that directory is the child's to write."""
    data = shared / "data"
    data.mkdir(mode=0o755)
    (data / "state").write_text("the gateway's state")
    (data / "state").chmod(0o644)
    secret = shared / "secret"
    secret.write_text("hidden from every child")
    secret.chmod(0o644)
    mcp = await serve(aiohttp_client, child_writable_paths=[shared], child_hidden_paths=[secret], data_dir=data)
    seen = {
        "secret": outcome(await spy(mcp, "read_file", path=str(secret))),
        "state": outcome(await spy(mcp, "read_file", path=str(data / "state"))),
        "written": outcome(await spy(mcp, "write_file", path=str(shared / "mine.txt"), text="kept")),
    }
    assert seen == {"secret": "EACCES", "state": "ENOENT", "written": "ok"}, seen
    assert (shared / "mine.txt").read_text() == "kept"
    assert secret.read_text() == "hidden from every child"


async def test_what_a_child_leaves_beside_its_directory_goes_with_it(aiohttp_client: AiohttpClient) -> None:
    """With a user of its own and no namespaces, a child sees the directory of every child's
    private one and may create entries there (never list it); the cleanup after the session
    removes what its user made there, not only its own directory."""
    mcp = await serve(aiohttp_client, child_isolation="uid")
    me = await spy(mcp, "whoami")
    cell = Path(me["HOME"]).parent
    beside = cell.parent / f"left-by-{me['uid']}"
    assert (await spy(mcp, "write_file", path=str(beside), text="outlives its session?"))["ok"]
    assert outcome(await spy(mcp, "list_dir", path=str(cell.parent))) == "EACCES"
    assert beside.stat().st_uid == me["uid"]
    assert await mcp.delete() == 204
    assert await eventually(lambda: not beside.exists() and not cell.exists())
    assert cell.parent.is_dir()  # the gateway's own, until it stops
