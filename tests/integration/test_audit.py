"""The audit log through the real app: every event type written as one JSON line with its
envelope and details, each session-close reason, request ids and trace context, argument
digests and opt-in redaction, and no token in any line."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.static import digest_of
from gateway.observe.logs import JsonFormatter
from tests.support.mcp import ACCEPT_BOTH, LATEST, Mcp
from tests.support.types import Gateway
from tests.support.waits import eventually

ALICE = "alice-audit-token-0123456789"
WRONG = "not-a-known-token-5555"
PUBLIC = "https://mcp.example.com"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
ENVELOPE = {"schema", "ts", "event", "request_id", "trace_id", "span_id", "client_ip", "principal", "issuer", "session"}
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": LATEST, "capabilities": {}}}


def audit_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the audit log, each parsed as the JSON object it must be."""
    lines = [line for line in path.read_text().splitlines() if line]
    return [json.loads(line) for line in lines]


def events(path: Path, name: str) -> list[dict[str, Any]]:
    return [line for line in audit_lines(path) if line["event"] == name]


def static_auth(path: Path) -> dict[str, Any]:
    tokens = [{"principal": "alice", "sha256": digest_of(ALICE), "scopes": ["tools"]}]
    return {"auth": "static", "static_tokens": tokens, "public_url": PUBLIC, "audit_log": str(path)}


async def test_a_scripted_session_writes_every_event_with_its_fields(gateway: Gateway, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    mcp = await gateway(**static_auth(log), stdout_violation_limit=5)
    alice = {"Authorization": f"Bearer {ALICE}"}

    for authorization in (None, f"Bearer {WRONG}", "Bearer two tokens"):
        headers = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH}
        if authorization:
            headers["Authorization"] = authorization
        async with mcp.http.post("/mcp", json=INIT, headers=headers) as response:
            assert response.status in (400, 401)

    headers = {**mcp.headers(alice), "X-Request-ID": "client-req-1", "traceparent": TRACEPARENT}
    async with mcp.http.post("/mcp", json=INIT, headers=headers) as response:
        assert response.status == 200
        assert response.headers["X-Request-ID"] == "client-req-1"
        mcp.session_id = response.headers["Mcp-Session-Id"]
        mcp.version = (await response.json())["result"]["protocolVersion"]
    arguments = {"text": "hello", "password": "hunter2"}
    answer = await mcp.request("tools/call", {"name": "echo", "arguments": arguments}, headers=alice)
    assert answer["result"]["content"][0]["text"] == "hello"
    await mcp.request("tools/call", {"name": "garbage", "arguments": {"lines": 1}}, headers=alice)
    async with mcp.http.delete("/mcp", headers=mcp.headers(alice)) as response:
        assert response.status == 204
    session_label = mcp.session_id[:8]

    everything = audit_lines(log)
    assert all(line.keys() >= ENVELOPE and line["schema"] == 1 for line in everything)
    assert all(line["ts"].endswith("Z") for line in everything)

    (config,) = events(log, "config.loaded")
    assert config["settings"]["auth"] == "static"
    assert config["settings"]["audit_log"] == str(log)

    failures = {line["reason"]: line for line in events(log, "auth.fail")}
    assert set(failures) == {"missing", "invalid_token", "malformed"}
    assert failures["invalid_token"]["fingerprint"] == digest_of(WRONG)[:12]
    assert all(line["client_ip"] == "127.0.0.1" and line["principal"] is None for line in failures.values())

    oks = events(log, "auth.ok")
    assert len(oks) == 4  # initialize, two calls, DELETE
    assert oks[0]["principal"] == "alice"
    assert oks[0]["scopes"] == ["tools"]
    assert oks[0]["request_id"] == "client-req-1"
    assert oks[0]["trace_id"] == TRACE_ID
    assert oks[0]["span_id"] == "00f067aa0ba902b7"
    assert len({line["request_id"] for line in oks}) == 4  # each request named apart

    (spawn,) = events(log, "child.spawn")
    assert spawn["session"] == session_label
    assert isinstance(spawn["pid"], int)
    assert spawn["spawn_ms"] > 0
    assert spawn["command"] == sys.executable
    (opened,) = events(log, "session.open")
    assert opened["principal"] == "alice"
    assert opened["protocol_version"] == LATEST
    assert opened["pid"] == spawn["pid"]
    assert opened["request_id"] == "client-req-1"

    requests = {line.get("name", line["method"]): line for line in events(log, "mcp.request")}
    assert set(requests) == {"initialize", "echo", "garbage"}
    echo = requests["echo"]
    assert echo["outcome"] == "ok"
    assert echo["session"] == session_label
    assert echo["principal"] == "alice"
    assert echo["arguments_digest"].startswith("sha256:")
    assert "arguments" not in echo
    assert echo["bytes_in"] > 0
    assert echo["bytes_out"] > 0
    assert echo["duration_ms"] >= 0
    assert requests["initialize"]["outcome"] == "ok"

    (violation,) = events(log, "child.violation")
    assert violation["kind"] == "not_json"
    assert violation["count"] == 1
    assert violation["limit"] == 5
    assert violation["sample"] == "this is not json"

    (closed,) = events(log, "session.close")
    assert closed["reason"] == "client"
    assert closed["session"] == session_label
    assert closed["duration_s"] > 0
    (exited,) = events(log, "child.exit")
    assert exited["pid"] == spawn["pid"]
    assert exited["reason"] == "client"
    assert exited["exit_code"] == 0 or exited["signal"] is not None

    text = log.read_text()
    assert ALICE not in text
    assert WRONG not in text
    assert "hunter2" not in text


async def _close_reason(mcp: Mcp, log: Path, reason: str) -> None:
    if reason == "client":
        assert await mcp.delete() == 204
    elif reason == "child_exit":
        await mcp.post({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "crash"}})
    elif reason == "violation":
        await mcp.post({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "garbage"}})
    elif reason == "shutdown":
        await mcp.http.close()
    elif reason == "evicted":
        await Mcp(mcp.http).initialize()  # at the address cap: the idle session gives way
    assert await eventually(lambda: bool(events(log, "child.exit")))


@pytest.mark.parametrize(
    ("reason", "settings"),
    [
        ("client", {}),
        ("idle_ttl", {"session_idle_ttl": 0.2}),
        ("lifetime", {"session_max_lifetime": 0.3}),
        ("evicted", {"max_sessions_per_ip": 1}),
        ("child_exit", {}),
        ("violation", {"stdout_violation_limit": 1}),
        ("shutdown", {}),
    ],
)
async def test_every_close_reason_is_recorded(gateway: Gateway, tmp_path: Path, reason: str, settings: Any) -> None:
    log = tmp_path / "audit.jsonl"
    mcp = await gateway(audit_log=str(log), **settings)
    await mcp.initialize()
    await _close_reason(mcp, log, reason)
    (closed,) = events(log, "session.close")
    assert closed["reason"] == reason
    assert closed["principal"] == "anonymous"
    assert closed["client_ip"] == "127.0.0.1"
    (exited,) = events(log, "child.exit")
    assert exited["reason"] == reason
    if reason == "child_exit":
        assert exited["exit_code"] == 3
        assert exited["signal"] is None


async def test_a_failed_initialize_spawns_and_exits_but_opens_no_session(gateway: Gateway, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    mcp = await gateway(audit_log=str(log), command=[sys.executable, "-c", "pass"])
    status, _ = await mcp.post(INIT)
    assert status == 502
    assert await eventually(lambda: bool(events(log, "child.exit")))
    assert events(log, "child.spawn")
    assert not events(log, "session.open")
    assert not events(log, "session.close")


async def test_opted_in_arguments_are_written_redacted(gateway: Gateway, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    mcp = await gateway(audit_log=str(log), audit_tool_arguments=True)
    await mcp.initialize()
    secret = "ghp_" + "a1B2" * 9
    arguments = {
        "text": f"use Bearer {ALICE} and {secret}",
        "api_key": "k-123",
        "nested": {"password": "hunter2", "query": "q"},
        "max_tokens": 7,
    }
    await mcp.request("tools/call", {"name": "echo", "arguments": arguments})
    (call,) = [line for line in events(log, "mcp.request") if line["method"] == "tools/call"]
    assert call["arguments"] == {
        "text": "use Bearer [REDACTED] and [REDACTED]",
        "api_key": "[REDACTED]",
        "nested": {"password": "[REDACTED]", "query": "q"},
        "max_tokens": 7,
    }
    text = log.read_text()
    assert ALICE not in text
    assert secret not in text
    assert "hunter2" not in text


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123", True),
        ("trace:42/x=y@z", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("has space", False),
        ("newline\\nforged", False),
        ("", False),
        (None, False),
    ],
)
async def test_request_ids_are_kept_when_safe_else_made(gateway: Gateway, sent: str | None, kept: bool) -> None:
    mcp = await gateway()
    headers = {} if sent is None else {"X-Request-ID": sent}
    async with mcp.http.get("/health", headers=headers) as response:
        returned = response.headers["X-Request-ID"]
    if kept:
        assert returned == sent
    else:
        assert returned != sent
        assert len(returned) == 36


async def test_refusals_and_streams_name_their_request(gateway: Gateway) -> None:
    mcp = await gateway()
    async with mcp.http.post("/mcp", data=b"{", headers=mcp.headers({"X-Request-ID": "bad-body"})) as response:
        assert response.status == 400
        assert response.headers["X-Request-ID"] == "bad-body"
    await mcp.initialize()
    async with mcp.http.get("/mcp", headers=mcp.headers({"Accept": "text/event-stream", "X-Request-ID": "sse-1"})) as r:
        assert r.status == 200
        assert r.headers["X-Request-ID"] == "sse-1"
    async with mcp.http.get("/nowhere", headers={"X-Request-ID": "missing-route"}) as response:
        assert response.status == 404
        assert response.headers["X-Request-ID"] == "missing-route"


async def test_audit_can_be_turned_off(gateway: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mcp = await gateway(audit_log="off")
    await mcp.initialize()
    await mcp.delete()
    assert '"event"' not in capsys.readouterr().out
    assert not (tmp_path / "audit.jsonl").exists()


async def test_stdout_is_the_default_destination(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    mcp = await gateway()
    await mcp.initialize()
    out = capsys.readouterr().out
    names = {json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")}
    assert {"config.loaded", "child.spawn", "session.open", "mcp.request"} <= names


async def test_operational_log_lines_name_the_request(gateway: Gateway) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        mcp = await gateway(audit_log="off")
        async with mcp.http.post("/mcp", json=INIT, headers=mcp.headers({"X-Request-ID": "init-7"})) as response:
            assert response.status == 200
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    starting = [line for line in lines if line["msg"] == "session starting"]
    assert starting
    assert starting[0]["request_id"] == "init-7"
