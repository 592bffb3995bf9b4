"""`/metrics` after scripted sessions, read with the Prometheus parser, and where it is served."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from gateway import __version__
from gateway.auth.static import digest_of
from tests.support.mcp import LATEST, Mcp
from tests.support.settings import make_settings
from tests.support.types import Gateway
from tests.support.waits import WAIT

ALICE = "alice-metrics-token-0123456789"
SCRAPER = "scraper-token-abcdef"
PUBLIC = "https://mcp.example.com"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(mcp: Mcp, headers: dict[str, str] | None = None) -> Samples:
    async with mcp.http.get("/metrics", headers=headers) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        return parse(await response.text())


async def test_counters_after_a_scripted_session(gateway: Gateway) -> None:
    tokens = [{"principal": "alice", "sha256": digest_of(ALICE)}]
    mcp = await gateway(auth="static", static_tokens=tokens, public_url=PUBLIC, audit_log="off")
    alice = {"Authorization": f"Bearer {ALICE}"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": LATEST}}
    async with mcp.http.post("/mcp", json=init, headers=mcp.headers({"Authorization": "Bearer wrong-token"})) as r:
        assert r.status == 401
    async with mcp.http.post("/mcp", json=init, headers=mcp.headers(alice)) as response:
        assert response.status == 200
        mcp.session_id = response.headers["Mcp-Session-Id"]
        mcp.version = LATEST

    during = await scrape(mcp)
    assert value(during, "mcp_gateway_sessions") == 1
    assert value(during, "mcp_gateway_children") == 1

    for text in ("one", "two"):
        await mcp.request("tools/call", {"name": "echo", "arguments": {"text": text}}, headers=alice)
    await mcp.request("tools/call", {"name": "garbage", "arguments": {"lines": 2}}, headers=alice)
    await mcp.request("tools/list", headers=alice)
    await mcp.request("vendor/custom", headers=alice)  # the echo server answers -32601
    async with mcp.http.delete("/mcp", headers=mcp.headers(alice)) as response:
        assert response.status == 204

    after = await scrape(mcp)
    assert value(after, "mcp_gateway_sessions") == 0
    assert value(after, "mcp_gateway_children") == 0
    assert value(after, "mcp_gateway_sessions_opened_total", era="legacy") == 1
    assert value(after, "mcp_gateway_sessions_closed_total", reason="client") == 1
    assert value(after, "mcp_gateway_spawn_seconds_count") == 1
    assert value(after, "mcp_gateway_requests_total", method="tools/call", outcome="ok", era="legacy") == 3
    assert value(after, "mcp_gateway_requests_total", method="tools/list", outcome="ok", era="legacy") == 1
    assert value(after, "mcp_gateway_requests_total", method="initialize", outcome="ok", era="legacy") == 1
    assert value(after, "mcp_gateway_requests_total", method="other", outcome="error", era="legacy") == 1
    assert value(after, "mcp_gateway_request_duration_seconds_count", method="tools/call") == 3
    assert value(after, "mcp_gateway_request_duration_seconds_bucket", method="tools/call", le="+Inf") == 3
    assert value(after, "mcp_gateway_child_violations_total", kind="not_json") == 2
    assert value(after, "mcp_gateway_auth_failures_total", reason="invalid_token") == 1
    assert value(after, "mcp_gateway_received_bytes_total") > 0
    assert value(after, "mcp_gateway_sent_bytes_total") > value(after, "mcp_gateway_received_bytes_total") / 10
    assert value(after, "mcp_gateway_info", version=__version__) == 1
    assert value(after, "process_open_fds") > 0


async def test_a_crashed_child_is_counted_by_reason(gateway: Gateway) -> None:
    mcp = await gateway(audit_log="off")
    await mcp.initialize()
    await mcp.post({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "crash"}})
    deadline = time.monotonic() + WAIT
    samples = await scrape(mcp)
    while value(samples, "mcp_gateway_sessions_closed_total", reason="child_exit") != 1:
        assert time.monotonic() < deadline, "the crash was never counted"
        await asyncio.sleep(0.02)
        samples = await scrape(mcp)
    assert value(samples, "mcp_gateway_requests_total", method="tools/call", outcome="closed", era="legacy") == 1
    assert value(samples, "mcp_gateway_children") == 0


async def test_a_metrics_token_is_required_when_set(gateway: Gateway) -> None:
    mcp = await gateway(metrics_token=SCRAPER, audit_log="off")
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {SCRAPER}"}):
        async with mcp.http.get("/metrics", headers=headers) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
    await scrape(mcp, {"Authorization": f"Bearer {SCRAPER}"})


@pytest.mark.parametrize(
    "settings",
    [
        {"metrics_enabled": False},
        # Beyond loopback without a token: not served on the main listener at all.
        {"host": "0.0.0.0", "auth": "static", "public_url": PUBLIC},  # noqa: S104 - the setting under test
    ],
    ids=["disabled", "public-without-token"],
)
async def test_metrics_not_served(gateway: Gateway, settings: dict[str, Any]) -> None:
    if settings.get("auth") == "static":
        settings = {**settings, "static_tokens": [{"principal": "alice", "sha256": digest_of(ALICE)}]}
    mcp = await gateway(audit_log="off", **settings)
    async with mcp.http.get("/metrics") as response:
        assert response.status == 404


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_listener_of_its_own(gateway: Gateway) -> None:
    port = _free_port()
    mcp = await gateway(metrics_port=port, audit_log="off")
    await mcp.initialize()
    async with mcp.http.get("/metrics") as response:
        assert response.status == 404  # not on the main listener
    async with aiohttp.ClientSession() as client, client.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        assert value(parse(await response.text()), "mcp_gateway_sessions") == 1


def test_a_public_metrics_listener_needs_a_token() -> None:
    with pytest.raises(ValidationError, match="needs metrics_token"):
        make_settings(metrics_port=9100, metrics_host="0.0.0.0")  # noqa: S104 - the setting under test
    settings = make_settings(metrics_port=9100, metrics_host="0.0.0.0", metrics_token=SCRAPER)  # noqa: S104
    assert settings.metrics_port == 9100
