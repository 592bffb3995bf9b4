"""Slow and greedy connections against a real gateway process, over loopback.

What must hold, each shown with real sockets:
- a gateway started under a low open-file limit survives more slow connections than it has
  descriptors (half a header, part of a Content-Length body, an unfinished chunked body, an idle
  keep-alive, a client that never reads a large response, a flood from one address) while a
  legitimate client keeps being served: `/health`, and a session's `tools/call`;
- each kind is closed once its deadline has passed (the times are printed: `pytest -s`);
- the per-address and total caps refuse at once, with a 503, and a trusted proxy is exempt from
  the per-address cap;
- the log does not flood, even when accept() itself runs out of descriptors;
- the open-file limit is raised at startup, and a warning says when the sessions and connections
  configured do not fit in it (at startup and in `mcp-gateway check`).

Attackers and the legitimate client use distinct loopback source addresses (Linux routes all of
127.0.0.0/8 to lo), and the gateway's side of each connection is counted in /proc/net/tcp: a
socket the gateway still holds has an inode, one it has closed has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

import pytest
from aiohttp import ClientSession, ClientTimeout, TCPConnector

from gateway.http.connections import MAX_LINGERING
from tests.support.gateway_process import GatewayProcess, HttpMcp, running_gateway
from tests.support.servers import echo_command
from tests.support.settings import CHILD_ISOLATION
from tests.support.waits import WAIT, eventually

pytestmark = pytest.mark.slow

LEGIT: Final = "127.0.0.2"
# One source address per kind of attack, so each kind's connections are counted apart.
HALF_HEADER: Final = "127.0.0.3"
PARTIAL_BODY: Final = "127.0.0.4"
CHUNKED_BODY: Final = "127.0.0.5"
IDLE: Final = "127.0.0.6"
NO_READER: Final = "127.0.0.7"
FLOOD: Final = "127.0.0.8"
# Deadlines small enough that the test takes seconds.
HEADER_TIMEOUT: Final = 1.0
BODY_TIMEOUT: Final = 1.5
KEEPALIVE_TIMEOUT: Final = 2.0
WRITE_TIMEOUT: Final = 1.5
# The gateway gets this many descriptors; the attack opens more connections than that.
NOFILE: Final = 256
PER_ADDRESS: Final = 20
MAX_CONNECTIONS: Final = 140
MAX_SESSIONS: Final = 4  # 4 × 4 + 140 + 32 lingering refusals + 64 reserved = 252 ≤ 256: it fits
FLOOD_CONNECTIONS: Final = 200
NO_READERS: Final = 4
# A response far larger than every socket buffer on the way (the client's is made tiny).
LARGE_RESPONSE: Final = 8_000_000
SMALL_RCVBUF: Final = 4096
# How often the legitimate client asks, and the log's allowance for the whole attack.
LEGIT_INTERVAL: Final = 0.1
LOG_ALLOWANCE: Final = 20
POLL: Final = 0.05

HOST: Final = b"Host: 127.0.0.1\r\n"
ATTACKS: Final = {
    HALF_HEADER: b"GET /health HTTP/1.1\r\n" + HOST + b"X-Slow: ",
    PARTIAL_BODY: b"POST /mcp HTTP/1.1\r\n"
    + HOST
    + b'Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: 1000\r\n\r\n{"jsonrpc": ',
    CHUNKED_BODY: b"POST /mcp HTTP/1.1\r\n"
    + HOST
    + b"Content-Type: application/json\r\nAccept: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b'20\r\n{"jsonrpc": "2.0"',
    IDLE: b"GET /health HTTP/1.1\r\n" + HOST + b"\r\n",
    FLOOD: b"GET /health HTTP/1.1\r\n" + HOST + b"X-Slow: ",
}


def _hex_address(address: str) -> str:
    """An IPv4 address as /proc/net/tcp writes it (a native-endian 32-bit word)."""
    return f"{struct.unpack('=I', socket.inet_aton(address))[0]:08X}"


def held(port: int) -> Counter[str]:
    """The gateway's open connections on `port`, by peer address (sockets it has not closed)."""
    counts: Counter[str] = Counter()
    wanted = f"{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if local.endswith(":" + wanted) and inode != "0" and not remote.startswith("00000000"):
            raw = int(remote.split(":")[0], 16)
            counts[socket.inet_ntoa(struct.pack("=I", raw))] += 1
    return counts


async def connect(gateway: GatewayProcess, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(WAIT):
        return await asyncio.open_connection("127.0.0.1", gateway.port, local_addr=(source, 0))


async def first_line(reader: asyncio.StreamReader) -> bytes:
    """The status line the gateway answered with, or what ended the connection instead."""
    try:
        async with asyncio.timeout(WAIT):
            return (await reader.readline()).strip() or b"EOF"
    except ConnectionResetError:
        return b"RST"


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One whole response with a Content-Length body."""
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        return head + await reader.readexactly(length)


def descriptor_warnings(gateway: GatewayProcess) -> list[str]:
    return [entry["msg"] for entry in gateway.log if "open-file limit" in entry.get("msg", "")]


async def until_released(gateway: GatewayProcess, addresses: list[str], started: float) -> dict[str, float]:
    """Seconds from `started` until the gateway held no connection from each address; also
    checks that none ever held more than the per-address cap."""
    released: dict[str, float] = {}
    deadline = time.monotonic() + WAIT
    while len(released) < len(addresses) and time.monotonic() < deadline:
        counts = held(gateway.port)
        for address in addresses:  # refused connections linger a moment (for their 503 to be read)
            assert counts[address] <= PER_ADDRESS + MAX_LINGERING, (address, counts[address])
            if address not in released and counts[address] == 0:
                released[address] = time.monotonic() - started
        await asyncio.sleep(POLL)
    return released


class Legit:
    """A well-behaved client that keeps asking while the attack runs; every answer is checked."""

    def __init__(self, http: ClientSession, mcp: HttpMcp, base: str) -> None:
        self.http = http
        self.mcp = mcp
        self.base = base
        self.latencies: list[float] = []
        self.failures: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._timed(self._health)
            await self._timed(self._echo)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LEGIT_INTERVAL):
                    await stop.wait()

    async def _timed(self, call: Callable[[], Awaitable[str | None]]) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(WAIT):
                problem = await call()
        except Exception as exc:
            problem = repr(exc)
        self.latencies.append(time.monotonic() - started)
        if problem is not None:
            self.failures.append(problem)

    async def _health(self) -> str | None:
        async with self.http.get(self.base + "/health") as response:
            return None if response.status == 200 else f"/health {response.status}"

    async def _echo(self) -> str | None:
        status, messages = await self.mcp.call(self.mcp.tool_call("echo", text="still here"))
        text = messages[-1].get("result", {}).get("content", [{}])[0].get("text") if messages else None
        return None if status == 200 and text == "still here" else f"echo {status} {messages}"


@contextlib.asynccontextmanager
async def client_from(address: str) -> AsyncIterator[ClientSession]:
    """A client whose every request opens a new connection from `address` (so accept() is tested)."""
    connector = TCPConnector(local_addr=(address, 0), force_close=True)
    async with ClientSession(connector=connector, timeout=ClientTimeout(total=WAIT)) as http:
        yield http


async def no_reader(gateway: GatewayProcess, session: HttpMcp) -> socket.socket:
    """A connection that asks for a large answer and never reads it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
    sock.bind((NO_READER, 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(WAIT):
        await loop.sock_connect(sock, ("127.0.0.1", gateway.port))
        body = json.dumps(session.tool_call("big", size=LARGE_RESPONSE)).encode()
        headers = {**session.headers(), "Accept": "application/json", "Content-Length": str(len(body))}
        head = "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        await loop.sock_sendall(sock, head.encode() + b"\r\n" + body)
    return sock


async def received_all(sock: socket.socket) -> int:
    """Read what the gateway left in the socket until it ends; the byte count."""
    loop = asyncio.get_running_loop()
    total = 0
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(WAIT):
            while chunk := await loop.sock_recv(sock, 1 << 20):
                total += len(chunk)
    sock.close()
    return total


def log_lines(gateway: GatewayProcess, since: int) -> list[str]:
    return [
        f"{entry.get('logger')}: {entry.get('msg')}" + (f" {entry['counts']}" if "counts" in entry else "")
        for entry in gateway.log[since:]
    ]


def slow_settings(**extra: str) -> dict[str, str]:
    settings = {
        "http_header_timeout": str(HEADER_TIMEOUT),
        "http_body_timeout": str(BODY_TIMEOUT),
        "http_keepalive_timeout": str(KEEPALIVE_TIMEOUT),
        "http_write_timeout": str(WRITE_TIMEOUT),
        "max_connections": str(MAX_CONNECTIONS),
        "max_connections_per_ip": str(PER_ADDRESS),
        "max_sessions": str(MAX_SESSIONS),
    }
    settings.update(extra)
    return settings


# --- the attack ----------------------------------------------------------------------------------


async def test_slow_connections_are_closed_while_a_legitimate_client_is_served(tmp_path: Path) -> None:
    async with (
        running_gateway(tmp_path, slow_settings(), nofile=(NOFILE, NOFILE)) as gateway,
        client_from(LEGIT) as legit_http,
        client_from(NO_READER) as attacker_http,
    ):
        base = f"http://127.0.0.1:{gateway.port}"
        assert not descriptor_warnings(gateway)  # the configuration fits its descriptors
        legit_mcp = HttpMcp(legit_http, gateway.url)
        await legit_mcp.initialize()
        big_session = HttpMcp(attacker_http, gateway.url)
        await big_session.initialize()
        legit = Legit(legit_http, legit_mcp, base)
        stop = asyncio.Event()
        legit_task = asyncio.get_running_loop().create_task(legit.run(stop))
        log_start = len(gateway.log)
        streams: list[tuple[str, asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            started = time.monotonic()
            for address, attack in ATTACKS.items():
                count = FLOOD_CONNECTIONS if address == FLOOD else PER_ADDRESS
                for _ in range(count):
                    reader, writer = await connect(gateway, address)
                    writer.write(attack)
                    streams.append((address, reader, writer))
            idle = [reader for address, reader, _ in streams if address == IDLE]
            for reader in idle:  # a whole answer, then nothing: the connection idles
                assert (await read_response(reader)).startswith(b"HTTP/1.1 200 OK")
            no_readers = [await no_reader(gateway, big_session) for _ in range(NO_READERS)]
            sent = time.monotonic() - started
            peak = held(gateway.port)
            print(f"\nattack: {len(streams) + NO_READERS} connections opened in {sent:.2f} s; held {dict(peak)}")
            assert peak.total() <= MAX_CONNECTIONS + MAX_LINGERING

            released = await until_released(gateway, [*ATTACKS, NO_READER], started)
            answers: dict[str, Counter[bytes]] = {}
            for address, reader, writer in streams:
                answers.setdefault(address, Counter())[await first_line(reader)] += 1
                writer.close()
            truncated = [await received_all(sock) for sock in no_readers]
        finally:
            stop.set()
            await legit_task
            for _, _, writer in streams:
                writer.close()

        deadlines = {
            HALF_HEADER: ("header", HEADER_TIMEOUT),
            PARTIAL_BODY: ("body", BODY_TIMEOUT),
            CHUNKED_BODY: ("chunked body", BODY_TIMEOUT),
            IDLE: ("idle keep-alive", KEEPALIVE_TIMEOUT),
            NO_READER: ("never reads", WRITE_TIMEOUT),
            FLOOD: ("flood, header", HEADER_TIMEOUT),
        }
        for address, (kind, deadline) in deadlines.items():
            after = released.get(address)
            shown = f"{after:.2f} s" if after is not None else "never"
            print(f"  {kind:16} deadline {deadline:.1f} s: all closed {shown} after the attack began")
        print(f"  answers: { {deadlines[a][0]: dict(c) for a, c in answers.items()} }")
        print(f"  never-reading clients got {truncated} of about {LARGE_RESPONSE} bytes each")
        latencies = sorted(legit.latencies)
        print(
            f"  legitimate client: {len(latencies)} requests, {len(legit.failures)} failed, "
            f"median {latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
        )
        lines = log_lines(gateway, log_start)
        print(f"  gateway log during the attack: {len(lines)} lines: {lines}")

        assert set(released) == {*ATTACKS, NO_READER}, f"still held: {held(gateway.port)}"
        assert not legit.failures, legit.failures
        assert answers[HALF_HEADER] == Counter({b"HTTP/1.1 408 Request Timeout": PER_ADDRESS})
        assert answers[PARTIAL_BODY] == Counter({b"HTTP/1.1 408 Request Timeout": PER_ADDRESS})
        assert answers[CHUNKED_BODY] == Counter({b"HTTP/1.1 408 Request Timeout": PER_ADDRESS})
        assert answers[IDLE] == Counter({b"EOF": PER_ADDRESS})  # idle connections are simply closed
        flood = answers[FLOOD]
        assert flood[b"HTTP/1.1 408 Request Timeout"] == PER_ADDRESS
        assert flood[b"HTTP/1.1 503 Service Unavailable"] + flood[b"RST"] == FLOOD_CONNECTIONS - PER_ADDRESS
        assert all(size < LARGE_RESPONSE for size in truncated)
        assert len(lines) <= LOG_ALLOWANCE, lines


async def test_the_total_cap_refuses_at_once_and_trusted_proxies_skip_the_address_cap(tmp_path: Path) -> None:
    proxy, other = "127.0.0.9", "127.0.0.10"
    settings = slow_settings(max_connections="12", max_connections_per_ip="3", trusted_proxies=f"{proxy}/32")
    async with running_gateway(tmp_path, settings) as gateway, client_from(LEGIT) as legit:
        base = f"http://127.0.0.1:{gateway.port}"
        # Past the per-address cap: refused, with a 503 that says why.
        over = [await connect(gateway, other) for _ in range(4)]
        reader, _ = over[-1]
        async with asyncio.timeout(WAIT):
            refusal = await reader.read()
        assert refusal.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"Retry-After: 5\r\n" in refusal
        assert json.loads(refusal.partition(b"\r\n\r\n")[2])["error"]["message"].startswith("Too many connections")
        # A trusted proxy is counted only against the total: 9 more fill it.
        filled = [await connect(gateway, proxy) for _ in range(9)]
        assert await eventually(lambda: held(gateway.port)[proxy] == 9), held(gateway.port)
        started = time.monotonic()
        async with legit.get(base + "/health") as response:
            refused_after = time.monotonic() - started
            assert response.status == 503
            assert (await response.json())["error"]["message"].startswith("Too many connections")
        print(f"\nat the total cap: refused in {refused_after * 1000:.1f} ms")
        # The idle ones miss their header deadline, and the legitimate client is served again.
        assert await eventually(lambda: held(gateway.port).total() == 0), held(gateway.port)
        async with legit.get(base + "/health") as response:
            assert response.status == 200
        for _, writer in [*over, *filled]:
            writer.close()


async def test_accept_running_out_of_descriptors_is_logged_once_and_passes(tmp_path: Path) -> None:
    """A configuration that does not fit its descriptor limit: a warning at startup; under an
    attack accept() fails (EMFILE) and says so once, not once per attempt; once the header
    deadline has freed the descriptors, the gateway serves again."""
    nofile = 128
    settings = {"http_header_timeout": str(HEADER_TIMEOUT), "max_sessions": "64"}
    async with running_gateway(tmp_path, settings, nofile=(nofile, nofile)) as gateway, client_from(LEGIT) as legit:
        warnings = descriptor_warnings(gateway)
        assert any("open-file limit (128)" in message and "max_sessions=64" in message for message in warnings)
        base = f"http://127.0.0.1:{gateway.port}"
        log_start = len(gateway.log)
        cpu_before = _cpu_seconds(gateway.process.pid)
        sources = [f"127.0.1.{n}" for n in range(1, 6)]
        streams = []
        for index in range(2 * nofile):
            reader, writer = await connect(gateway, sources[index % len(sources)])
            writer.write(ATTACKS[HALF_HEADER])
            streams.append((reader, writer))
        assert await eventually(lambda: any("cannot accept" in entry.get("msg", "") for entry in gateway.log))
        started = time.monotonic()

        async def served() -> bool:
            try:
                async with legit.get(base + "/health", timeout=ClientTimeout(total=1)) as response:
                    return response.status == 200
            except (TimeoutError, OSError):
                return False

        while not await served():
            assert time.monotonic() - started < WAIT, "the gateway never served again"
        recovered = time.monotonic() - started
        for _, writer in streams:
            writer.close()
        await asyncio.sleep(HEADER_TIMEOUT)  # the backlog's connections are accepted and time out too
        lines = log_lines(gateway, log_start)
        cpu = _cpu_seconds(gateway.process.pid) - cpu_before
        print(
            f"\nEMFILE: served again {recovered:.2f} s after accept() failed; gateway CPU {cpu:.2f} s; "
            f"log: {len(lines)} lines: {lines}"
        )
        assert sum("cannot accept" in line for line in lines) == 1
        assert not any("socket.accept() out of system resource" in line for line in lines)
        assert len(lines) <= LOG_ALLOWANCE, lines


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the descriptor limit ------------------------------------------------------------------------


def _open_file_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc")


async def test_the_open_file_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    """The gateway raises its own limit for its connections; its children start with the one it
    was given (a child must not get to hold a million descriptors because the gateway may)."""
    async with running_gateway(tmp_path, {}, nofile=(256, 8192)) as gateway, ClientSession() as http:
        assert _open_file_limits(gateway.process.pid) == (8192, 8192)
        raised = [entry for entry in gateway.log if entry.get("msg") == "open-file limit raised"]
        assert [(entry["from"], entry["to"]) for entry in raised] == [(256, 8192)]
        assert not [message for message in descriptor_warnings(gateway) if "below" in message]
        mcp = HttpMcp(http, gateway.url)
        await mcp.initialize()
        status, messages = await mcp.call(mcp.tool_call("pid"))
        assert status == 200
        child = int(messages[-1]["result"]["content"][0]["text"])
        assert _open_file_limits(child) == (256, 8192)


def test_check_warns_when_sessions_and_connections_do_not_fit(tmp_path: Path) -> None:
    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))

    env = {name: value for name, value in os.environ.items() if not name.startswith("MCP_GATEWAY_")}
    argv = [sys.executable, "-m", "gateway", "check", "--max-sessions", "300", "--child-isolation", CHILD_ISOLATION]
    argv += ["--", *echo_command()]
    result = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=WAIT, preexec_fn=limited, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "warning: the open-file limit (512) is below what max_sessions=300" in result.stderr
    assert "2320" in result.stderr  # 300 × 4 + 1024 + 32 + 64
