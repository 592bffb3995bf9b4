"""The gateway under test: its process, what /proc says about it, and MCP clients of it in both
eras (a legacy session, a 2026-07-28 client without one).

Invariant: `running_gateway` stops the process however the run ends (SIGTERM, then SIGKILL
after the grace period); the gateway stops its children on SIGTERM, and on SIGKILL their
parent-death signal and the gateway's orphan watchdog take them along.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final
from urllib.parse import urlsplit

from gateway.eras.envelope import (
    CLIENT_CAPABILITIES_KEY,
    CLIENT_INFO_KEY,
    METHOD_HEADER,
    MODERN_VERSION,
    NAME_HEADER,
    NAMED_BY,
    PROTOCOL_VERSION_KEY,
    SERVER_INFO_KEY,
    VERSION_HEADER,
    encode_header_value,
)
from gateway.sessions.sandbox import IsolationMode
from tests.bench import rpc
from tests.bench.http import HttpConnection, Response, header_block, sse_data
from tests.bench.rpc import JsonObj
from tests.support.unprivileged import unprivileged_gateway

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
# Interpreter start, imports and bind; generous because the machine may be busy.
STARTUP_TIMEOUT: Final = 30.0
# The gateway's own shutdown budget (10 s by default) plus stopping every child.
STOP_TIMEOUT: Final = 20.0
# SIGKILL cannot be ignored; this only waits for the kernel to report the exit.
KILL_CONFIRM_TIMEOUT: Final = 5.0
LOG_POLL_INTERVAL: Final = 0.02
LOG_HEAD_BYTES: Final = 64 * 1024  # the URL line is among the first few log lines
MCP_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
# The 2026-07-28 envelope of every modern request, as the official SDK clients stamp it: the
# version, the client's capabilities (none: the echo server asks its clients for nothing) and
# its identity.
MODERN_META: Final[JsonObj] = {
    PROTOCOL_VERSION_KEY: MODERN_VERSION,
    CLIENT_CAPABILITIES_KEY: {},
    CLIENT_INFO_KEY: rpc.CLIENT_INFO,
}
MODERN_WARMUP: Final = "tools/list"  # the request that starts a modern principal's child
COMPLETE: Final = "complete"  # the resultType of a final answer


@dataclass(frozen=True, slots=True)
class GatewayProcess:
    """A running gateway: its pid, its MCP URL, and its own resource use (children excluded)."""

    pid: int
    url: str

    def rss_kib(self) -> int:
        """Resident set size of the gateway process alone, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])  # "VmRSS:  123456 kB"
        raise rpc.BenchError("VmRSS missing from /proc/<pid>/status")

    def cpu_ticks(self) -> int:
        """utime + stime of the gateway process alone, in clock ticks (SC_CLK_TCK per second)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces
        return int(fields[11]) + int(fields[12])  # fields 14 and 15


def gateway_argv(
    server_argv: Sequence[str],
    *,
    max_message_bytes: int,
    max_sessions: int,
    isolation: IsolationMode = "none",
    uid_range: str | None = None,
) -> list[str]:
    """The gateway's command line around `server_argv`; `uid_range` (FIRST-LAST) only with the
    modes that give children user IDs of their own."""
    if (isolation in ("uid", "uid+namespaces")) != (uid_range is not None):
        raise ValueError("a user-ID range goes with uid isolation, and only with it")
    return [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--log-format",
        "json",
        "--max-message-bytes",
        str(max_message_bytes),
        "--max-sessions",
        str(max_sessions),
        # The load comes from one address faster than any client would: keep every limiter on
        # the request path (its cost is part of what is measured) with windows it never fills.
        "--max-sessions-per-ip",
        str(max_sessions),
        "--ratelimit-requests-ip",
        "100000000/minute",
        "--ratelimit-sessions-ip",
        "100000000/minute",
        "--ratelimit-spawn",
        "100000000/second",
        "--env-file",
        os.devnull,  # no stray .env changes what is measured
        # Never `auto`: it picks the strongest isolation the host allows (uid needs root and a
        # server every user may run, namespaces bubblewrap), so the same run would measure
        # different gateways on different hosts. The mode is always named; phase 7 compares them.
        "--child-isolation",
        isolation,
        *(("--child-uid-range", uid_range) if uid_range is not None else ()),
        "--",
        *server_argv,
    ]


@asynccontextmanager
async def running_gateway(argv: Sequence[str]) -> AsyncIterator[GatewayProcess]:
    """Start the gateway, wait for its URL, and stop it for sure at the end."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MCP_GATEWAY_")}
    # The log goes to a file, not a pipe: nobody has to keep draining it while we measure.
    with tempfile.TemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
            env=env,
            cwd=REPO_ROOT,
        )
        try:
            url = await _wait_for_url(process, log)
            yield GatewayProcess(process.pid, url)
        finally:
            await _stop(process)


@contextlib.asynccontextmanager
async def running_unprivileged_gateway(argv: Sequence[str]) -> AsyncIterator[GatewayProcess]:
    """The gateway of `argv` (from `gateway_argv`) run as an unprivileged user, as `namespaces`
    alone must be on a host whose benchmark runs as root (tests/support/unprivileged.py). Its log
    is read as it comes (a pipe), which costs the benchmark process a little."""
    async with unprivileged_gateway({}, flags=argv[argv.index("serve") + 1 :]) as gateway:
        yield GatewayProcess(gateway.process.pid, gateway.url)


async def _wait_for_url(process: asyncio.subprocess.Process, log: IO[bytes]) -> str:
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while process.returncode is None:
                head = os.pread(log.fileno(), LOG_HEAD_BYTES, 0)  # leaves the shared offset alone
                for line in head.splitlines():
                    if line.startswith(b"{") and b'"url"' in line:
                        return str(json.loads(line)["url"])
                await asyncio.sleep(LOG_POLL_INTERVAL)
    except TimeoutError:
        pass
    logged = os.pread(log.fileno(), LOG_HEAD_BYTES, 0).decode(errors="replace")
    raise rpc.BenchError(f"the gateway did not report its URL (exit code {process.returncode}); log:\n{logged}")


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await process.wait()
            return
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    async with asyncio.timeout(KILL_CONFIRM_TIMEOUT):
        await process.wait()


class GatewaySession:
    """One MCP session through the gateway, on a keep-alive connection of its own."""

    def __init__(self, connection: HttpConnection, path: str, headers: bytes) -> None:
        self._connection = connection
        self._path = path
        self._headers = headers  # MCP headers plus this session's id and protocol version
        self._last_id = 0

    @classmethod
    async def open(cls, url: str) -> GatewaySession:
        """Connect, POST initialize, and send notifications/initialized."""
        host, port, path = _endpoint(url)
        connection = await HttpConnection.open(host, port)
        try:
            mcp_headers = header_block(MCP_HEADERS)
            initialize = rpc.encode_request(0, "initialize", rpc.INITIALIZE_PARAMS)
            response = await connection.request("POST", path, mcp_headers, initialize)
            result = _result(response, 0)
            session_id = response.headers.get("mcp-session-id")
            if session_id is None:
                raise rpc.BenchError("the initialize response carries no Mcp-Session-Id")
            session_headers = {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": str(result["protocolVersion"])}
            session = cls(connection, path, mcp_headers + header_block(session_headers))
            initialized = rpc.encode_notification("notifications/initialized")
            response = await connection.request("POST", path, session._headers, initialized)
            if response.status != 202:
                raise rpc.BenchError(f"notifications/initialized got HTTP {response.status}")
        except BaseException:
            await connection.aclose()
            raise
        return session

    async def request(self, method: str, params: JsonObj) -> JsonObj:
        self._last_id += 1
        body = rpc.encode_request(self._last_id, method, params)
        response = await self._connection.request("POST", self._path, self._headers, body)
        return _result(response, self._last_id)

    async def aclose(self) -> None:
        """DELETE the session (the gateway stops its child), then close the connection."""
        try:
            await self._connection.request("DELETE", self._path, self._headers)
        finally:
            await self._connection.aclose()


class ModernSession:
    """A 2026-07-28 client of the gateway on a keep-alive connection from a loopback address of its
    own. There is no session: every request carries the envelope in `params._meta` and the routing
    headers, and an unauthenticated principal is its client's address, so the address is what
    picks the child that serves it."""

    def __init__(self, connection: HttpConnection, path: str) -> None:
        self._connection = connection
        self._path = path
        self._mcp_headers = header_block(MCP_HEADERS)
        self._routing: dict[tuple[str, str | None], bytes] = {}  # the header block of each method and name
        self._last_id = 0

    @classmethod
    async def open(cls, url: str, address: str) -> ModernSession:
        """Connect from `address` and send one `tools/list`: the first request of a principal
        starts its child (the era probe and, for a legacy server, initialize)."""
        host, port, path = _endpoint(url)
        connection = await HttpConnection.open(host, port, source=address)
        session = cls(connection, path)
        try:
            result = await session.request(MODERN_WARMUP, {})
            meta = result.get("_meta")
            if not isinstance(meta, dict) or not isinstance(meta.get(SERVER_INFO_KEY), dict):
                raise rpc.BenchError(f"the {MODERN_WARMUP} result carries no {SERVER_INFO_KEY}: {str(result)[:200]}")
        except BaseException:
            await connection.aclose()
            raise
        return session

    async def request(self, method: str, params: JsonObj) -> JsonObj:
        self._last_id += 1
        named_by = NAMED_BY.get(method)
        named = params.get(named_by) if named_by is not None else None
        name = None if named is None else str(named)
        headers = self._routing.get((method, name))
        if headers is None:
            headers = self._routing[method, name] = self._routing_headers(method, name)
        meta = params.get("_meta")
        envelope = MODERN_META if meta is None else {**meta, **MODERN_META}
        body = rpc.encode_request(self._last_id, method, {**params, "_meta": envelope})
        response = await self._connection.request("POST", self._path, headers, body)
        result = _result(response, self._last_id)
        if result.get("resultType") != COMPLETE:
            raise rpc.BenchError(f"request {self._last_id}: not a complete 2026-07-28 result: {str(result)[:200]}")
        return result

    async def aclose(self) -> None:
        """Close the connection; the principal's child stays until the gateway reaps or stops it."""
        await self._connection.aclose()

    def _routing_headers(self, method: str, name: str | None) -> bytes:
        routing = {VERSION_HEADER: MODERN_VERSION, METHOD_HEADER: method}
        if name is not None:
            routing[NAME_HEADER] = encode_header_value(name)
        return self._mcp_headers + header_block(routing)


def _endpoint(url: str) -> tuple[str, int, str]:
    """The host, port and path of the gateway's MCP URL."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise rpc.BenchError(f"the gateway URL {url!r} names no host and port")
    return parts.hostname, parts.port, parts.path


def _result(response: Response, request_id: int) -> JsonObj:
    if response.status != 200:
        raise rpc.BenchError(f"HTTP {response.status}: {response.body[:200]!r}")
    if response.content_type == "text/event-stream":
        messages = [json.loads(data) for data in sse_data(response.body)]
        answers = [message for message in messages if message.get("id") == request_id]
        return rpc.result_of(answers[-1] if answers else None, request_id)
    return rpc.result_of(json.loads(response.body), request_id)
