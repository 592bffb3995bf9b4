"""Backpressure in both directions: a slow reader pauses the child instead of growing memory,
and a child that stops reading its input fails the request instead of hanging it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway import keys
from gateway.sessions import child as child_module
from gateway.sessions.streams import BACKLOG_MESSAGES, CONGESTED_BYTES
from tests.support.mcp import Mcp, read_comment, read_event, text_of
from tests.support.types import Gateway
from tests.support.waits import WAIT, eventually

MiB = 1024 * 1024
# Notification size: well under the test client's line limit, large enough to fill buffers fast.
NOTE_BYTES = 32 * 1024


def _router_paused(mcp: Mcp) -> bool:
    return any(session.router.output_paused for session in mcp.http.app[keys.SESSIONS])


async def test_slow_stream_reader_pauses_the_child_and_loses_nothing(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    # Far more than the stream's congestion threshold plus what sockets can buffer.
    count = (3 * CONGESTED_BYTES) // NOTE_BYTES
    async with mcp.http.get("/mcp", headers=mcp.headers()) as stream:
        await read_comment(stream)
        flood = asyncio.ensure_future(mcp.call_tool("flood", count=count, size=NOTE_BYTES))
        # Nobody reads the stream: the gateway stops reading the child rather than buffering it all.
        assert await eventually(lambda: _router_paused(mcp))
        assert not flood.done()  # the child is blocked writing, so it cannot have answered
        seqs: list[Any] = []
        for _ in range(count):
            _, note = await read_event(stream)
            seqs.append(note["params"]["seq"])
    assert seqs == list(range(count))  # in order, nothing dropped
    assert text_of(await asyncio.wait_for(flood, WAIT)) == "flooded"
    assert not _router_paused(mcp)


async def test_child_that_stops_reading_fails_the_request(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(child_module, "STDIN_DRAIN_TIMEOUT", 0.5)
    mcp = await gateway()
    await mcp.initialize()
    assert text_of(await mcp.call_tool("stop_reading")) == "stopped"
    # More than the pipe and the gateway's write buffer hold: the write cannot complete.
    request = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x" * 2 * MiB}},
    }
    status, messages = await mcp.post(request)
    assert status == 504
    assert messages[0]["id"] == 7
    assert messages[0]["error"]["code"] == -32001
    assert await mcp.delete() == 204  # and the stuck child is still stopped cleanly


async def test_backlog_without_a_reader_keeps_the_newest(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    """With no GET stream open, the backlog is bounded: the oldest notifications go, and it says so."""
    mcp = await gateway()
    await mcp.initialize()
    count = BACKLOG_MESSAGES + 88
    assert text_of(await mcp.call_tool("flood", count=count, size=100)) == "flooded"
    async with mcp.http.get("/mcp", headers=mcp.headers()) as stream:
        seqs = [(await read_event(stream))[1]["params"]["seq"] for _ in range(BACKLOG_MESSAGES)]
    assert seqs == list(range(88, count))
    assert any("messages dropped" in record.getMessage() for record in caplog.records)


async def test_timeout_after_the_child_closed_its_input(gateway: Gateway) -> None:
    """The deadline still answers when the cancellation can no longer be written to the child."""
    mcp = await gateway("--ignore-stdin-eof", request_timeout=0.5)
    await mcp.initialize()
    assert text_of(await mcp.call_tool("close_stdin", delay=0.2)) == "closing"
    request = {"jsonrpc": "2.0", "id": "h", "method": "tools/call", "params": {"name": "hang", "arguments": {}}}
    status, messages = await asyncio.wait_for(mcp.post(request), WAIT)
    assert status == 200
    assert messages[-1]["id"] == "h"
    assert messages[-1]["error"]["code"] == -32001
