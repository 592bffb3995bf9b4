"""The gateway behind a real nginx configured like nginx-proxy, with the shipped vhost.d files.

What the deployment promises, each shown end to end over loopback:
- events reach the client while their response is still open, whether or not nginx honours the
  gateway's `X-Accel-Buffering: no`, even with gzip on event streams: the vhost snippet alone
  suffices;
- an idle stream outlives nginx's read timeout because of the gateway's keep-alive comments (and,
  as a control, the same nginx does cut a stream whose keep-alives are too far apart);
- rate limits and audit lines name the address nginx saw (X-Real-IP from a trusted proxy), and no
  header a client sends can change that;
- nginx and the gateway accept exactly the same largest body.
Clients use distinct loopback source addresses (Linux routes all of 127.0.0.0/8 to lo).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Final

import pytest
from aiohttp import ClientPayloadError, ClientSession, ClientTimeout, TCPConnector

from tests.support.deploy_files import nginx_directives, nginx_size
from tests.support.gateway_process import HttpMcp, running_gateway
from tests.support.mcp import read_comment, read_event
from tests.support.nginx_process import (
    LOCATION_SNIPPET,
    NGINX,
    SERVER_SNIPPET,
    NginxServer,
    location_copy,
    running_nginx,
)
from tests.support.types import JsonObj
from tests.support.waits import WAIT

pytestmark = pytest.mark.slow

# nginx's connection to the gateway comes from here; the gateway trusts exactly this address.
PROXY_ADDRESS: Final = "127.0.0.1/32"
CLIENT_A: Final = "127.0.0.5"
CLIENT_B: Final = "127.0.0.6"
SPOOFED_NETWORK: Final = "203.0.113."  # TEST-NET-3: never a real client here
# The per-address request limit for the rate-limit tests, and how many requests it lets through.
REQUEST_LIMIT: Final = "3/minute"
REQUESTS_ALLOWED: Final = 3
# The pause between the progress event and the result in the timing test: long enough that
# "the first event came with the result" would be visible in the printed timings.
PROGRESS_DELAY: Final = 1.5
# The idle test shortens nginx's read timeout (the shipped one is an hour) and the gateway's
# keep-alive interval, then holds the stream open for more than twice that timeout.
SHORT_READ_TIMEOUT: Final = 2
SHORT_KEEPALIVE: Final = 0.5
IDLE_HOLD: Final = 2.5 * SHORT_READ_TIMEOUT
# The control: keep-alives much rarer than the read timeout (under the setting's maximum, 300).
RARE_KEEPALIVE: Final = 60.0
# Buffered proxying alone delays nothing here: nginx still passes each read on. What it does not
# do is flush, so an output filter that waits for a flush holds events back. This variant sets up
# that case: gzip for event streams (as an operator might enable proxy-wide in conf.d), and the
# gateway's `X-Accel-Buffering: no` ignored, so only the vhost snippet's `proxy_buffering off`
# keeps events flowing. (Remove that line from the snippet and these tests fail.)
SNIPPET_ALONE: Final = """\
        gzip on;
        gzip_types text/event-stream;
        proxy_ignore_headers X-Accel-Buffering;"""
BUFFERING_VARIANTS: Final = {"shipped": "", "snippet-alone": SNIPPET_ALONE}
# Asked for by every streaming test, so that the snippet-alone variant really compresses.
ACCEPT_GZIP: Final = {"Accept-Encoding": "gzip"}


@pytest.fixture(autouse=True)
def _nginx_installed() -> None:
    if NGINX is None:
        pytest.skip("nginx is not installed (.ci/run installs it)")


@contextlib.asynccontextmanager
async def proxied_gateway(
    workdir: Path,
    settings: Mapping[str, str] | None = None,
    location_snippet: Path = LOCATION_SNIPPET,
    server_extra: str = "",
) -> AsyncIterator[NginxServer]:
    """A gateway subprocess and an nginx in front of it; both stopped on the way out."""
    gateway_settings = {"trusted_proxies": PROXY_ADDRESS, **(settings or {})}
    async with running_gateway(workdir, gateway_settings) as gateway:
        with running_nginx(workdir, gateway.port, location_snippet, server_extra) as nginx:
            yield nginx


@contextlib.asynccontextmanager
async def client_from(address: str = "127.0.0.1") -> AsyncIterator[ClientSession]:
    """An HTTP client whose connections come from `address`. Every read is bounded (response
    headers included: a proxy that holds a stream back may hold its headers too)."""
    connector = TCPConnector(local_addr=(address, 0), force_close=True)
    timeout = ClientTimeout(total=None, sock_connect=WAIT, sock_read=WAIT)
    async with ClientSession(connector=connector, timeout=timeout) as http:
        yield http


def milliseconds(since: float) -> int:
    return round((time.monotonic() - since) * 1000)


# --- streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", BUFFERING_VARIANTS)
async def test_a_server_request_reaches_the_client_while_its_response_is_open(tmp_path: Path, variant: str) -> None:
    """No timing involved: the tool cannot answer until the client has answered the sampling
    request that is the stream's first event, so a proxy that held events back would deadlock
    (and the bounded read would time out)."""
    server_extra = BUFFERING_VARIANTS[variant]
    async with proxied_gateway(tmp_path, server_extra=server_extra) as nginx, client_from() as http:
        mcp = HttpMcp(http, nginx.url)
        mcp.extra_headers = ACCEPT_GZIP
        await mcp.initialize(capabilities={"sampling": {}})
        started = time.monotonic()
        async with mcp.post(mcp.tool_call("sample", prompt="hi")) as stream:
            assert stream.status == 200
            assert stream.content_type == "text/event-stream"
            assert stream.headers.get("Content-Encoding") == ("gzip" if server_extra else None)
            _, request = await read_event(stream)
            first = milliseconds(started)
            assert request["method"] == "sampling/createMessage"
            assert not stream.content.is_eof()
            answer = {
                "jsonrpc": "2.0",
                "id": request["id"],
                "result": {"role": "assistant", "content": {"type": "text", "text": "42"}},
            }
            status, _ = await mcp.call(answer)
            assert status == 202
            _, response = await read_event(stream)
            final = milliseconds(started)
    assert "42" in response["result"]["content"][0]["text"]
    print(f"[{variant}] sampling request at {first} ms, result at {final} ms")


@pytest.mark.parametrize("variant", BUFFERING_VARIANTS)
async def test_progress_arrives_while_the_tool_still_runs(tmp_path: Path, variant: str) -> None:
    """The timings are printed as evidence; what is asserted is that the progress event was read
    while the response had not ended (a buffering proxy delivers it together with the end)."""
    server_extra = BUFFERING_VARIANTS[variant]
    async with proxied_gateway(tmp_path, server_extra=server_extra) as nginx, client_from() as http:
        mcp = HttpMcp(http, nginx.url)
        mcp.extra_headers = ACCEPT_GZIP
        await mcp.initialize()
        call = mcp.tool_call("progress", meta={"progressToken": "p"}, steps=1, delay=PROGRESS_DELAY)
        started = time.monotonic()
        async with mcp.post(call) as stream:
            assert stream.content_type == "text/event-stream"
            assert stream.headers.get("Content-Encoding") == ("gzip" if server_extra else None)
            _, progress = await read_event(stream)
            first = milliseconds(started)
            still_open = not stream.content.is_eof()
            _, response = await read_event(stream)
            final = milliseconds(started)
    assert progress["method"] == "notifications/progress"
    assert response["result"]["content"][0]["text"] == "done"
    print(f"[{variant}] first event at {first} ms, final at {final} ms (tool delay {PROGRESS_DELAY * 1000:.0f} ms)")
    assert still_open, "the progress event arrived only with the end of the response"


# --- idle streams ------------------------------------------------------------------------------


async def test_an_idle_stream_outlives_nginx_read_timeout(tmp_path: Path) -> None:
    location = location_copy(tmp_path, proxy_read_timeout=f"{SHORT_READ_TIMEOUT}s")
    settings = {"sse_keepalive": str(SHORT_KEEPALIVE)}
    async with proxied_gateway(tmp_path, settings, location) as nginx, client_from() as http:
        mcp = HttpMcp(http, nginx.url)
        await mcp.initialize()
        async with mcp.get() as stream:
            assert stream.status == 200
            opened = time.monotonic()
            comments = 0
            while time.monotonic() - opened < IDLE_HOLD:
                assert await read_comment(stream) == ": keep-alive"
                comments += 1
            idle = milliseconds(opened)
            update = {"uri": "test://after-idle"}
            status, _ = await mcp.call(mcp.tool_call("notify", method="notifications/resources/updated", params=update))
            assert status == 200
            _, event = await read_event(stream)
    assert event == {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": update}
    print(f"idle for {idle} ms (nginx read timeout {SHORT_READ_TIMEOUT} s), {comments} keep-alives, then an event")


async def test_control_nginx_cuts_a_stream_whose_keepalives_are_too_rare(tmp_path: Path) -> None:
    """Proves the shortened timeout is in force, so the test above means something."""
    location = location_copy(tmp_path, proxy_read_timeout=f"{SHORT_READ_TIMEOUT}s")
    settings = {"sse_keepalive": str(RARE_KEEPALIVE)}
    async with proxied_gateway(tmp_path, settings, location) as nginx, client_from() as http:
        mcp = HttpMcp(http, nginx.url)
        await mcp.initialize()
        async with mcp.get() as stream:
            assert await read_comment(stream) == ": keep-alive"  # the first goes out at once
            with pytest.raises((EOFError, ClientPayloadError)):
                await read_comment(stream)  # the next would come after RARE_KEEPALIVE
        assert "upstream timed out" in nginx.error_log


# --- client addresses --------------------------------------------------------------------------


def spoofing_headers(index: int) -> dict[str, str]:
    """A different forged client address for every request: believed, they would spread one
    client's requests over many rate-limit buckets."""
    forged = f"{SPOOFED_NETWORK}{9 + index}"
    return {"X-Forwarded-For": forged, "X-Real-IP": forged, "Forwarded": f"for={forged}"}


def audit_records(path: Path) -> list[JsonObj]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("spoof", [False, True], ids=["plain", "spoofed-headers"])
async def test_limits_and_audit_see_the_address_nginx_saw(tmp_path: Path, spoof: bool) -> None:
    audit = tmp_path / "audit.log"
    settings = {"ratelimit_requests_ip": REQUEST_LIMIT, "audit_log": str(audit)}
    async with (
        proxied_gateway(tmp_path, settings) as nginx,
        client_from(CLIENT_A) as http_a,
        client_from(CLIENT_B) as http_b,
    ):
        a = HttpMcp(http_a, nginx.url)
        b = HttpMcp(http_b, nginx.url)
        if spoof:
            a.extra_headers = spoofing_headers(0)
        await a.initialize()  # two requests: initialize, notifications/initialized
        statuses = []
        for index in range(1, REQUESTS_ALLOWED):
            if spoof:
                a.extra_headers = spoofing_headers(index)
            status, _ = await a.call(a.tool_call("echo", text="hi"))
            statuses.append(status)
        await b.initialize()  # another address: its own allowance
        status_b, _ = await b.call(b.tool_call("echo", text="hi"))
    assert statuses == [200] * (REQUESTS_ALLOWED - 2) + [429]
    assert status_b == 200

    records = audit_records(audit)
    opened = {record["client_ip"] for record in records if record["event"] == "session.open"}
    blocked = [record["client_ip"] for record in records if record["event"] == "ratelimit.block"]
    assert opened == {CLIENT_A, CLIENT_B}
    assert blocked == [CLIENT_A]
    assert {record["client_ip"] for record in records} - {None} == {CLIENT_A, CLIENT_B}
    assert SPOOFED_NETWORK not in audit.read_text()


# --- body size -----------------------------------------------------------------------------------


def padded_ping(size: int) -> bytes:
    """A ping of exactly `size` bytes (the padding rides in `_meta`, which a server ignores)."""
    head, tail = b'{"jsonrpc":"2.0","id":7,"method":"ping","params":{"_meta":{"pad":"', b'"}}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def test_nginx_and_the_gateway_accept_the_same_largest_body(tmp_path: Path) -> None:
    limit = nginx_size(nginx_directives(SERVER_SNIPPET)["client_max_body_size"][0])
    async with proxied_gateway(tmp_path, {"max_message_bytes": str(limit)}) as nginx, client_from() as http:
        mcp = HttpMcp(http, nginx.url)
        await mcp.initialize()
        # Exactly the cap (16 times nginx's own default) passes nginx and the gateway.
        status, messages = await mcp.call(padded_ping(limit))
        assert (status, messages) == (200, [{"jsonrpc": "2.0", "id": 7, "result": {}}])
        # One byte more: nginx refuses it itself (an HTML page, not the gateway's JSON error).
        async with mcp.post(padded_ping(limit + 1)) as response:
            assert response.status == 413
            assert response.content_type == "text/html"
            assert "nginx" in response.headers["Server"]
