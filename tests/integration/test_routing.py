"""Where each message goes: the right POST, the GET stream, or the backlog — never two places."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from tests.support.mcp import Mcp, parse_sse, read_comment, read_event, text_of
from tests.support.types import Gateway, JsonObj
from tests.support.waits import WAIT, eventually


def call(name: str, msg_id: object, **arguments: Any) -> JsonObj:
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


async def test_concurrent_requests_with_colliding_ids(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    slow = mcp.post(call("sleep", 1, seconds=0.3))
    fast = [mcp.post(call("echo", 1, text=f"t{i}")) for i in range(5)]
    results = await asyncio.gather(slow, *fast)
    assert all(status == 200 for status, _ in results)
    assert [m[-1]["id"] for _, m in results] == [1] * 6
    assert text_of(results[0][1][-1]) == "slept"
    assert [text_of(m[-1]) for _, m in results[1:]] == [f"t{i}" for i in range(5)]


async def test_sessions_never_see_each_others_messages(gateway: Gateway) -> None:
    alice = await gateway()
    await alice.initialize()
    bob = Mcp(alice.http)
    await bob.initialize()
    assert alice.session_id != bob.session_id
    async with (
        alice.http.get("/mcp", headers=alice.headers()) as alice_stream,
        bob.http.get("/mcp", headers=bob.headers()) as bob_stream,
    ):
        await read_comment(alice_stream)
        await read_comment(bob_stream)
        await alice.call_tool("notify", method="notifications/resources/list_changed")
        await bob.call_tool("notify", method="notifications/tools/list_changed")
        _, for_alice = await read_event(alice_stream)
        _, for_bob = await read_event(bob_stream)
    assert for_alice["method"] == "notifications/resources/list_changed"
    assert for_bob["method"] == "notifications/tools/list_changed"
    # Same client ids in both sessions, each answered in its own session.
    assert text_of(await alice.request("tools/call", {"name": "pid", "arguments": {}}, id=1)) != text_of(
        await bob.request("tools/call", {"name": "pid", "arguments": {}}, id=1)
    )


async def test_server_request_rides_the_only_post_in_flight(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize(capabilities={"sampling": {}})
    async with mcp.http.post("/mcp", json=call("sample", "q", prompt="hi"), headers=mcp.headers()) as stream:
        assert stream.content_type == "text/event-stream"
        _, request = await read_event(stream)
        assert request["method"] == "sampling/createMessage"
        answer = {
            "jsonrpc": "2.0",
            "id": request["id"],
            "result": {"role": "assistant", "content": {"type": "text", "text": "42"}},
        }
        status, body = await mcp.post(answer)
        assert (status, body) == (202, [])
        _, response = await read_event(stream)
    assert response["id"] == "q"
    assert "42" in text_of(response)


async def test_server_request_goes_to_get_stream_when_ambiguous(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize(capabilities={"roots": {}})
    async with mcp.http.get("/mcp", headers=mcp.headers()) as stream:
        await read_comment(stream)
        busy = asyncio.ensure_future(mcp.post(call("sleep", "s", seconds=30)))
        asked = asyncio.ensure_future(mcp.post(call("roots", "r")))
        _, request = await read_event(stream)
        assert request["method"] == "roots/list"
        await mcp.post({"jsonrpc": "2.0", "id": request["id"], "result": {"roots": []}})
        status, messages = await asyncio.wait_for(asked, WAIT)
    assert status == 200
    assert [m.get("method") for m in messages] == [None]  # only the response: nothing else on that POST
    assert json.loads(text_of(messages[-1])) == {"roots": []}
    busy.cancel()


async def test_backlog_waits_for_the_next_get(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    for i in range(3):
        await mcp.call_tool("notify", method="notifications/resources/updated", params={"uri": f"test://{i}"})
    async with mcp.http.get("/mcp", headers=mcp.headers()) as stream:
        uris = [(await read_event(stream))[1]["params"]["uri"] for _ in range(3)]
    assert uris == ["test://0", "test://1", "test://2"]


async def test_get_stream_resumes_from_last_event_id(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    async with mcp.http.get("/mcp", headers=mcp.headers()) as stream:
        await read_comment(stream)
        for i in range(3):
            await mcp.call_tool("notify", method="notifications/resources/updated", params={"uri": f"u{i}"})
        ids = [(await read_event(stream))[0] for _ in range(3)]
    assert ids == ["0.1", "0.2", "0.3"]
    async with mcp.http.get("/mcp", headers={**mcp.headers(), "Last-Event-ID": "0.1"}) as stream:
        replayed = [await read_event(stream) for _ in range(2)]
    assert [(event_id, body["params"]["uri"]) for event_id, body in replayed] == [("0.2", "u1"), ("0.3", "u2")]


async def test_post_stream_resumes_on_get(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    request = {
        **call("progress", 9, steps=4),
        "params": {"name": "progress", "arguments": {"steps": 4}, "_meta": {"progressToken": "t"}},
    }
    async with mcp.http.post("/mcp", json=request, headers=mcp.headers()) as stream:
        first_id, first = await read_event(stream)
    assert first["method"] == "notifications/progress"
    assert first_id is not None
    async with mcp.http.get("/mcp", headers={**mcp.headers(), "Last-Event-ID": first_id}) as resumed:
        events = parse_sse(await asyncio.wait_for(resumed.text(), WAIT))
    bodies = [json.loads(data) for _, data in events]
    assert [b["params"]["progress"] for b in bodies[:-1]] == [2, 3, 4]
    assert bodies[-1]["id"] == 9
    assert text_of(bodies[-1]) == "done"


async def test_a_2025_11_25_post_stream_starts_with_the_priming_event(gateway: Gateway) -> None:
    """An event id before any message, a reconnection delay and no data: a client that loses the
    connection at once resumes from it, on GET, and gets the whole answer."""
    mcp = await gateway()
    await mcp.initialize(version="2025-11-25")
    request = call("sleep", 3, seconds=0.5)
    async with mcp.http.post("/mcp", json=request, headers={**mcp.headers(), "Accept": "text/event-stream"}) as stream:
        head = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), WAIT)
    match = re.fullmatch(rb"id: (\d+\.0)\nretry: (\d+)\ndata:\n\n", head)
    assert match is not None, head
    assert int(match.group(2)) > 0
    primed = match.group(1).decode()
    async with mcp.http.get("/mcp", headers={**mcp.headers(), "Last-Event-ID": primed}) as resumed:
        events = parse_sse(await asyncio.wait_for(resumed.text(), WAIT))
    assert [json.loads(data)["id"] for _, data in events] == [3]


@pytest.mark.parametrize("version", ["2025-06-18", "2025-03-26"])
async def test_older_post_streams_start_with_their_first_message(gateway: Gateway, version: str) -> None:
    mcp = await gateway()
    await mcp.initialize(version=version)
    request = call("sleep", 4, seconds=0.1)
    async with mcp.http.post("/mcp", json=request, headers={**mcp.headers(), "Accept": "text/event-stream"}) as stream:
        body = await asyncio.wait_for(stream.read(), WAIT)
    events = [block for block in body.split(b"\n\n") if block and not block.startswith(b":")]  # no keep-alives
    assert len(events) == 1, body
    assert events[0].startswith(b"id: ")
    assert b"retry:" not in body
    assert [json.loads(data)["id"] for _, data in parse_sse(body.decode())] == [4]


async def test_progress_for_a_json_only_client_goes_to_get(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    request = {
        **call("progress", 1, steps=2),
        "params": {"name": "progress", "arguments": {"steps": 2}, "_meta": {"progressToken": 5}},
    }
    async with mcp.http.post("/mcp", json=request, headers={**mcp.headers(), "Accept": "application/json"}) as response:
        assert response.content_type == "application/json"
        assert (await response.json())["id"] == 1
    async with mcp.http.get("/mcp", headers=mcp.headers()) as stream:
        progress = [(await read_event(stream))[1]["params"]["progress"] for _ in range(2)]
    assert progress == [1, 2]


async def test_slow_answer_switches_to_sse_with_keepalives(gateway: Gateway) -> None:
    mcp = await gateway(sse_keepalive=0.1)
    await mcp.initialize()
    async with mcp.http.post("/mcp", json=call("sleep", 1, seconds=0.5), headers=mcp.headers()) as response:
        assert response.content_type == "text/event-stream"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert response.headers["Cache-Control"].startswith("no-cache")
        body = await response.text()
    assert ": keep-alive" in body
    assert text_of(json.loads(parse_sse(body)[-1][1])) == "slept"


async def test_get_stream_keepalive(gateway: Gateway) -> None:
    mcp = await gateway(sse_keepalive=0.1)
    await mcp.initialize()
    async with mcp.http.get("/mcp", headers=mcp.headers()) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        assert [await read_comment(stream) for _ in range(3)] == [": keep-alive"] * 3


async def test_idle_ttl_counts_only_idle_time(gateway: Gateway) -> None:
    mcp = await gateway(session_idle_ttl=0.3)
    await mcp.initialize()
    # A request in flight for longer than the TTL keeps the session.
    assert text_of(await mcp.call_tool("sleep", seconds=0.8)) == "slept"
    # So does an open GET stream.
    async with mcp.http.get("/mcp", headers=mcp.headers()) as stream:
        await read_comment(stream)
        await asyncio.sleep(0.8)
        assert text_of(await mcp.call_tool("echo", text="alive")) == "alive"
    # Idle now: it ends.
    assert await eventually(lambda: _sessions(mcp) == 0)
    status, _ = await mcp.post(call("echo", 2, text="x"))
    assert status == 404


async def test_absolute_lifetime(gateway: Gateway) -> None:
    mcp = await gateway(session_max_lifetime=0.3)
    await mcp.initialize()
    async with mcp.http.post("/mcp", json=call("hang", 1), headers=mcp.headers()) as response:
        body = await response.json()
    assert body["error"]["code"] == -32000
    assert "lifetime" in body["error"]["message"]


async def test_cancellation_is_forwarded_with_the_gateway_id(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    hung = asyncio.ensure_future(mcp.post(call("hang", "h")))
    assert await eventually(lambda: _in_flight(mcp))
    assert await mcp.notify("notifications/cancelled", {"requestId": "h", "reason": "user"}) == 202
    seen = json.loads(text_of(await mcp.call_tool("cancelled")))
    # The child saw the cancellation under the integer id the gateway gave the request, and it
    # matched the running task: the client's "h" never reached the child.
    assert [(type(c["requestId"]), c["reason"], c["running"]) for c in seen] == [(int, "user", True)]
    hung.cancel()


async def test_timeout_answers_and_cancels_at_the_child(gateway: Gateway) -> None:
    mcp = await gateway(request_timeout=1.0)  # initialize is answered within it even on a loaded machine
    await mcp.initialize()
    status, messages = await mcp.post(call("hang", "slow"))
    assert status == 200
    assert messages[-1]["id"] == "slow"
    assert messages[-1]["error"]["code"] == -32001
    seen = json.loads(text_of(await mcp.call_tool("cancelled")))
    assert len(seen) == 1
    assert seen[0]["running"] is True
    assert "timed out" in seen[0]["reason"]


def _sessions(mcp: Mcp) -> int:
    from gateway import keys

    return len(mcp.http.app[keys.SESSIONS])


def _in_flight(mcp: Mcp) -> bool:
    from gateway import keys

    return any(session.router.in_flight for session in mcp.http.app[keys.SESSIONS])


async def test_resuming_an_unknown_stream_is_gone(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    async with mcp.http.get("/mcp", headers={**mcp.headers(), "Last-Event-ID": "99.1"}) as response:
        assert response.status == 410
        assert (await response.json())["error"]["code"] == -32600


async def test_a_new_get_takes_over_the_standalone_stream(gateway: Gateway) -> None:
    """One consumer at a time: a reconnecting client replaces its half-open predecessor."""
    mcp = await gateway()
    await mcp.initialize()
    async with mcp.http.get("/mcp", headers=mcp.headers()) as old:
        await read_comment(old)
        async with mcp.http.get("/mcp", headers=mcp.headers()) as new:
            await read_comment(new)
            rest = await asyncio.wait_for(old.content.read(), WAIT)  # returns only at end of stream
            assert b"data:" not in rest
            await mcp.call_tool("notify", method="notifications/tools/list_changed")
            # Well inside the 15 s keep-alive: the new consumer is woken by the push itself.
            _, message = await read_event(new, timeout=5)
    assert message["method"] == "notifications/tools/list_changed"
