"""Shared rate limits on a real redis-server: two gateway apps sharing one limit, and the
fail-open / fail-closed policies with Redis stopped (requests and `/ready`)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway import create_app
from tests.conftest import WAIT, AiohttpClient, Mcp, make_settings

Gateway = Callable[..., Awaitable[Mcp]]
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
REDIS = shutil.which("redis-server")


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"async+redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS is not None
        argv = [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(argv, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while not self._answers():
            assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=WAIT)
            self.process = None


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def app_client(aiohttp_client: AiohttpClient, **settings: Any) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(make_settings(audit_log="off", **settings)))


async def ping_status(client: TestClient[Any, Any]) -> int:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with client.post("/mcp", json=PING, headers=headers) as response:
        return response.status


async def ready(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    async with client.get("/ready") as response:
        return response.status, await response.json()


async def test_two_gateways_share_one_limit(aiohttp_client: AiohttpClient, redis: RedisServer) -> None:
    first = await app_client(aiohttp_client, ratelimit_storage=redis.url, ratelimit_requests_ip="3/minute")
    second = await app_client(aiohttp_client, ratelimit_storage=redis.url, ratelimit_requests_ip="3/minute")
    assert await ping_status(first) == 400  # counted, then refused for lack of a session
    assert await ping_status(second) == 400
    assert await ping_status(first) == 400
    assert await ping_status(second) == 429  # the fourth request, whichever replica takes it
    assert await ping_status(first) == 429
    assert (await ready(first))[1]["ratelimit_storage"] == "ok"


async def test_fail_open_serves_when_redis_is_down(aiohttp_client: AiohttpClient, redis: RedisServer) -> None:
    client = await app_client(
        aiohttp_client, ratelimit_storage=redis.url, ratelimit_requests_ip="1/minute", ratelimit_storage_failure="open"
    )
    assert await ping_status(client) == 400
    assert await ping_status(client) == 429
    redis.stop()
    assert await ping_status(client) == 400  # served, without a limit
    status, body = await ready(client)
    assert status == 200
    assert body["ratelimit_storage"] == "down"


async def test_fail_closed_refuses_when_redis_is_down(aiohttp_client: AiohttpClient, redis: RedisServer) -> None:
    client = await app_client(aiohttp_client, ratelimit_storage=redis.url, ratelimit_storage_failure="closed")
    assert await ping_status(client) == 400
    redis.stop()
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with client.post("/mcp", json=PING, headers=headers) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        assert "Rate limiting is unavailable" in (await response.json())["error"]["message"]
    status, body = await ready(client)
    assert status == 503
    assert body["ratelimit_storage"] == "down"
    redis.start()  # back on the same port: the gateway recovers without a restart
    assert await ping_status(client) == 400
    assert (await ready(client))[0] == 200
