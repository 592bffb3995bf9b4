"""Shared rate limits on a real redis-server: two gateway apps sharing one limit, and the
fail-open / fail-closed policies with Redis stopped (requests and `/ready`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway import create_app
from tests.support.redis_process import REDIS, RedisServer
from tests.support.settings import make_settings

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


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
