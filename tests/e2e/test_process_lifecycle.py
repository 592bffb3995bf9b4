"""Process hygiene with the gateway as a real subprocess (`python -m gateway serve`).

The gateway must leave nothing behind: no descendant after a session ends (DELETE, idle TTL, a
crash), no member of any child's process group after it is stopped with SIGTERM or killed with
SIGKILL (the orphan watchdog's job), and an in-flight request still gets its answer during a graceful
shutdown. Every test kills whatever is left in its `finally`, so a failing test never leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import ClientResponse, ClientSession

from tests.support.mcp import ACCEPT_BOTH, LATEST, parse_sse
from tests.support.processes import descendants, drain_log, group_members, live_processes, startup_log
from tests.support.servers import echo_command
from tests.support.types import JsonObj
from tests.support.waits import WAIT, eventually

pytestmark = pytest.mark.slow

# The orphan watchdog SIGTERMs, waits 2 s, then SIGKILLs; generous for a loaded machine.
GUARD_CLEANUP_WAIT: Final = 15.0
SESSIONS: Final = 3
SIGTERM_MASK: Final = 1 << (signal.SIGTERM - 1)


class RemoteMcp:
    """One MCP session with a gateway over real HTTP."""

    def __init__(self, http: ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.session_id: str | None = None
        self.version: str | None = None
        self._ids = 0

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH}
        if self.session_id is not None:
            headers["Mcp-Session-Id"] = self.session_id
        if self.version is not None:
            headers["MCP-Protocol-Version"] = self.version
        return headers

    def message(self, method: str, params: JsonObj) -> JsonObj:
        self._ids += 1
        return {"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params}

    def post(self, message: JsonObj) -> contextlib.AbstractAsyncContextManager[ClientResponse]:
        return self.http.post(self.url, data=json.dumps(message), headers=self.headers())

    async def initialize(self) -> None:
        client = {"name": "lifecycle-tests", "version": "1"}
        params = {"protocolVersion": LATEST, "capabilities": {}, "clientInfo": client}
        async with self.post(self.message("initialize", params)) as response:
            assert response.status == 200, await response.text()
            self.session_id = response.headers["Mcp-Session-Id"]
            self.version = (await messages_of(response))[-1]["result"]["protocolVersion"]
        async with self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}) as response:
            assert response.status == 202

    async def call_tool(self, name: str, **arguments: Any) -> JsonObj:
        async with self.post(self.message("tools/call", {"name": name, "arguments": arguments})) as response:
            assert response.status == 200, await response.text()
            return (await messages_of(response))[-1]

    async def pid(self) -> int:
        return int(result_text(await self.call_tool("pid")))

    async def ping_status(self) -> int:
        async with self.post(self.message("ping", {})) as response:
            return response.status

    async def delete(self) -> int:
        async with self.http.delete(self.url, headers=self.headers()) as response:
            return response.status


async def messages_of(response: ClientResponse) -> list[JsonObj]:
    text = await response.text()
    if response.content_type == "text/event-stream":
        return [json.loads(data) for _, data in parse_sse(text)]
    return [json.loads(text)]


def result_text(response: JsonObj) -> str:
    return str(response["result"]["content"][0]["text"])


def is_guard(pid: int) -> bool:
    try:
        return b"watchdog.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def alive(pid: int) -> bool:
    return any(live == pid for live, _, _ in live_processes())


def ignores_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & SIGTERM_MASK)
    return False


class GatewayProcess:
    """A running `python -m gateway serve`; remembers every process group it is told about."""

    def __init__(self, process: asyncio.subprocess.Process, url: str, guard: int) -> None:
        self.process = process
        self.url = url
        self.guard = guard
        self.pgids: set[int] = set()  # the children's groups (pgid = the child's pid)
        self.log: list[JsonObj] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    def servers(self) -> set[int]:
        """Live descendants of the gateway, the orphan watchdog excluded."""
        return {pid for pid in descendants(self.pid) if not is_guard(pid)}

    async def open_session(self, http: ClientSession) -> tuple[RemoteMcp, int]:
        mcp = RemoteMcp(http, self.url)
        await mcp.initialize()
        pid = await mcp.pid()
        self.pgids.add(pid)
        return mcp, pid

    async def exited(self) -> int:
        """The gateway's exit status, once it has exited (bounded wait)."""
        assert await eventually(lambda: self.process.returncode is not None), "the gateway did not exit"
        assert self.process.returncode is not None
        return self.process.returncode


@contextlib.asynccontextmanager
async def running_gateway(*server_flags: str, options: Sequence[str] = ()) -> AsyncIterator[GatewayProcess]:
    """Start the gateway on a free port with the echo server; kill everything left on the way out."""
    argv = [sys.executable, "-m", "gateway", "serve", "--port", "0", *options, "--", *echo_command(*server_flags)]
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    drain: asyncio.Task[None] | None = None
    gateway: GatewayProcess | None = None
    try:
        startup = await startup_log(process.stderr)
        assert startup[-1]["msg"].startswith("serving ")
        guards = [pid for pid in descendants(process.pid) if is_guard(pid)]
        assert len(guards) == 1, f"expected one orphan watchdog, found {guards}"
        gateway = GatewayProcess(process, startup[-1]["url"], guards[0])
        gateway.log.extend(startup)
        drain = asyncio.get_running_loop().create_task(drain_log(process.stderr, gateway.log))
        yield gateway
    finally:
        if process.returncode is None:
            process.kill()
        if gateway is not None:
            _kill_leftovers(gateway)
        async with asyncio.timeout(WAIT):
            await process.wait()  # exit and stderr EOF: nothing holds the pipe any more
            if drain is not None:
                await drain


def _kill_leftovers(gateway: GatewayProcess) -> None:
    """SIGKILL whatever a failed test left: every child group the test saw, and the guard."""
    for pgid in gateway.pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    if alive(gateway.guard) and is_guard(gateway.guard):
        with contextlib.suppress(ProcessLookupError):
            os.kill(gateway.guard, signal.SIGKILL)


def logged(gateway: GatewayProcess, message: str, **fields: object) -> int:
    """How many of the gateway's log records carry `message` and every one of `fields`."""
    return sum(
        1
        for entry in gateway.log
        if entry.get("msg") == message and all(entry.get(key) == value for key, value in fields.items())
    )


# --- a session ends ------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["delete", "idle-ttl", "crash"])
async def test_no_descendant_survives_the_end_of_a_session(ending: str) -> None:
    """With a grandchild in the group, which leaves the gateway's tree when its parent dies."""
    options = ["--session-idle-ttl", "0.5"] if ending == "idle-ttl" else []
    async with running_gateway("--grandchild", options=options) as gateway, ClientSession() as http:
        mcp, pid = await gateway.open_session(http)
        assert len(gateway.servers()) == 2  # the server and its grandchild
        assert gateway.servers() == group_members({pid})

        if ending == "delete":
            assert await mcp.delete() == 204
        elif ending == "crash":
            response = await mcp.call_tool("crash")
            assert response["error"] == {"code": -32000, "message": "Session ended: the MCP server exited with code 3"}

        assert await eventually(lambda: not gateway.servers()), gateway.servers()
        assert await eventually(lambda: not group_members({pid})), group_members({pid})
        assert await mcp.ping_status() == 404
        assert alive(gateway.guard)  # the guard lives as long as the gateway


# --- the gateway is stopped ----------------------------------------------------------------------


@pytest.mark.parametrize("flags", [(), ("--grandchild",)], ids=["plain", "grandchild"])
async def test_sigterm_stops_every_child_and_exits_zero(flags: tuple[str, ...]) -> None:
    async with running_gateway(*flags) as gateway, ClientSession() as http:
        for _ in range(SESSIONS):
            await gateway.open_session(http)
        assert len(group_members(gateway.pgids)) == SESSIONS * (1 + len(flags))

        gateway.process.send_signal(signal.SIGTERM)

        assert await gateway.exited() == 0
        assert await eventually(lambda: not group_members(gateway.pgids)), group_members(gateway.pgids)
        assert await eventually(lambda: not alive(gateway.guard))
        # The gateway stopped them itself (the orphan watchdog would hide a shutdown that did not).
        assert await eventually(lambda: logged(gateway, "stopped") == 1)
        assert logged(gateway, "session closed", reason="shutdown") == SESSIONS


async def test_sigkill_leaves_the_orphan_guard_to_kill_every_group() -> None:
    """Servers that ignore SIGTERM, each with a grandchild that does too: the parent-death signal
    takes the servers, the guard's SIGTERM-then-SIGKILL takes the grandchildren."""
    async with running_gateway("--grandchild", "--ignore-sigterm") as gateway, ClientSession() as http:
        for _ in range(SESSIONS):
            await gateway.open_session(http)
        members = group_members(gateway.pgids)
        assert len(members) == SESSIONS * 2
        assert all(ignores_sigterm(pid) for pid in members)

        gateway.process.kill()

        assert await gateway.exited() == -signal.SIGKILL
        assert await eventually(lambda: not group_members(gateway.pgids), timeout=GUARD_CLEANUP_WAIT), group_members(
            gateway.pgids
        )
        assert await eventually(lambda: not alive(gateway.guard), timeout=GUARD_CLEANUP_WAIT)


async def test_sigterm_lets_the_in_flight_request_finish() -> None:
    # A short keep-alive makes the gateway open the SSE response while the tool still sleeps, so
    # the response headers prove the request is in flight before the signal is sent.
    async with running_gateway(options=["--sse-keepalive", "0.2"]) as gateway, ClientSession() as http:
        mcp, _ = await gateway.open_session(http)
        async with mcp.post(mcp.message("tools/call", {"name": "sleep", "arguments": {"seconds": 1}})) as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"

            gateway.process.send_signal(signal.SIGTERM)

            messages = await messages_of(response)
        assert result_text(messages[-1]) == "slept"
        assert await gateway.exited() == 0
        assert await eventually(lambda: not group_members(gateway.pgids))


# --- 2026-07-28 clients ---------------------------------------------------------------------------


class ModernMcp:
    """2026-07-28 requests to a gateway over real HTTP, from one client address (`X-Forwarded-For`,
    which the gateway trusts from loopback here): one anonymous principal per address."""

    def __init__(self, http: ClientSession, url: str, address: str) -> None:
        self.http = http
        self.url = url
        self.address = address
        self._ids = 0

    def message(self, method: str, params: JsonObj, capabilities: JsonObj | None = None) -> JsonObj:
        self._ids += 1
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": capabilities or {},
        }
        return {"jsonrpc": "2.0", "id": self._ids, "method": method, "params": {**params, "_meta": meta}}

    def post(self, message: JsonObj) -> contextlib.AbstractAsyncContextManager[ClientResponse]:
        headers = {
            "Content-Type": "application/json",
            "Accept": ACCEPT_BOTH,
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": message["method"],
            "X-Forwarded-For": self.address,
        }
        if message["method"] == "tools/call":
            headers["Mcp-Name"] = message["params"]["name"]
        return self.http.post(self.url, data=json.dumps(message), headers=headers)

    async def call(self, name: str, capabilities: JsonObj | None = None, **arguments: Any) -> JsonObj:
        message = self.message("tools/call", {"name": name, "arguments": arguments}, capabilities)
        async with self.post(message) as response:
            assert response.status == 200, await response.text()
            return (await messages_of(response))[-1]


MODERN_OPTIONS: Final = ("--trusted-proxies", "127.0.0.1/32")


async def test_sigterm_stops_the_children_of_every_principal() -> None:
    """Principals' children busy every way a 2026-07-28 client can keep one: a listen stream open,
    a call waiting for the client's input, a call in flight; and a legacy session beside them."""
    async with running_gateway(options=MODERN_OPTIONS) as gateway, ClientSession() as http:
        await gateway.open_session(http)
        listening, asking, calling = (ModernMcp(http, gateway.url, f"192.0.2.{n}") for n in (1, 2, 3))
        for client in (listening, asking, calling):
            gateway.pgids.add(int(result_text(await client.call("pid"))))
        assert len(gateway.pgids) == 4  # each principal its own child, and the session its own
        listen = listening.message("subscriptions/listen", {"notifications": {"toolsListChanged": True}})
        asked = await asking.call("elicit", {"elicitation": {}}, message="who?")
        assert asked["result"]["resultType"] == "input_required"  # and no retry comes
        hang = calling.message("tools/call", {"name": "hang", "arguments": {}})
        async with listening.post(listen) as stream, calling.post(hang):
            assert stream.status == 200
            await stream.content.readline()  # the acknowledgement has come: the stream is open
            gateway.process.send_signal(signal.SIGTERM)
            assert await gateway.exited() == 0
        assert await eventually(lambda: not group_members(gateway.pgids)), group_members(gateway.pgids)
        assert not gateway.servers()
        assert await eventually(lambda: not alive(gateway.guard))


async def test_an_idle_principals_child_leaves_nothing() -> None:
    options = [*MODERN_OPTIONS, "--session-idle-ttl", "0.5"]
    async with running_gateway("--grandchild", options=options) as gateway, ClientSession() as http:
        client = ModernMcp(http, gateway.url, "192.0.2.9")
        pid = int(result_text(await client.call("pid")))
        gateway.pgids.add(pid)
        assert len(group_members({pid})) == 2  # the server and its grandchild
        assert await eventually(lambda: not gateway.servers()), gateway.servers()
        assert await eventually(lambda: not group_members({pid})), group_members({pid})
        # The principal's next request starts a child of its own again.
        again = int(result_text(await client.call("pid")))
        gateway.pgids.add(again)
        assert again != pid
