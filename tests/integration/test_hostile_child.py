"""A misbehaving child's stdout, replayed as it was found: every line is handled on its own, an
unusable answer still answers its request (with an error, at once), and a child that closes its
stdout while it keeps running ends its session like one that exited. Real echo children writing
the exact bytes (the `raw` tool writes its lines in one system call, so they arrive as one chunk).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway import keys
from tests.support.mcp import Mcp, text_of
from tests.support.processes import live_processes
from tests.support.types import Gateway
from tests.support.waits import WAIT, eventually


async def raw_call(mcp: Mcp, lines: list[str], *, answer: bool) -> tuple[int, list[dict[str, Any]]]:
    """Call the echo server's `raw` tool: it writes `lines` ({id} replaced by the request's id)."""
    message = {
        "jsonrpc": "2.0",
        "id": mcp.next_id(),
        "method": "tools/call",
        "params": {"name": "raw", "arguments": {"lines": lines, "answer": answer}},
    }
    async with asyncio.timeout(WAIT):
        return await mcp.post(message)


def violations(mcp: Mcp) -> int:
    return sum(session.router.violations for session in mcp.http.app[keys.SESSIONS])


BAD_ANSWERS = {
    "nan-id-last": '{"jsonrpc":"2.0","result":{"content":[],"x":NaN},"id":{id}}',
    "surrogate-id-last": '{"jsonrpc":"2.0","result":{"content":[{"type":"text","text":"\\ud800"}]},"id":{id}}',
    "nan-id-first": '{"jsonrpc":"2.0","id":{id},"result":{"content":[],"x":NaN}}',
    "infinity-id-first": '{"jsonrpc":"2.0","id":{id},"result":{"x":Infinity}}',
    "1e400": '{"jsonrpc":"2.0","id":{id},"result":{"x":1e400}}',
    "duplicate-id": '{"jsonrpc":"2.0","id":{id},"result":{},"id":{id}}',
    "deep": '{"jsonrpc":"2.0","id":{id},"result":{"x":' + "[" * 100 + "]" * 100 + "}}",
    "case-folded-keys": '{"jsonrpc":"2.0","id":{id},"result":{},"Result":{}}',
}
NOT_JSONRPC = {
    "neither-result-nor-error": '{"jsonrpc":"2.0","id":{id}}',
    "error-code-a-string": '{"jsonrpc":"2.0","id":{id},"error":{"code":"x","message":"m"}}',
    "wrong-version": '{"jsonrpc":"1.0","id":{id},"result":{}}',
}


@pytest.mark.parametrize("line", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
async def test_an_answer_the_gateway_cannot_use_answers_its_request_with_an_error_at_once(
    gateway: Gateway, line: str
) -> None:
    """Before: the request got no answer and no deadline (keep-alives flowed forever), or NaN at
    the head of the line passed through raw. Now: an error naming the problem, a violation counted,
    and the session goes on."""
    mcp: Mcp = await gateway()
    await mcp.initialize()
    status, messages = await raw_call(mcp, [line], answer=False)
    assert status == 200
    error = messages[-1]["error"]
    assert error["code"] == -32603
    assert "not valid JSON" in error["message"]
    assert "NaN" not in json.dumps(messages)
    assert violations(mcp) == 1
    assert text_of(await mcp.call_tool("echo", text="still here")) == "still here"


@pytest.mark.parametrize("line", NOT_JSONRPC.values(), ids=NOT_JSONRPC.keys())
async def test_an_answer_that_is_not_json_rpc_answers_its_request_with_an_error_at_once(
    gateway: Gateway, line: str
) -> None:
    mcp: Mcp = await gateway()
    await mcp.initialize()
    status, messages = await raw_call(mcp, [line], answer=False)
    assert status == 200
    assert messages[-1]["error"]["code"] == -32603
    assert "not valid JSON-RPC" in messages[-1]["error"]["message"]
    assert violations(mcp) == 1


async def test_one_bad_item_of_a_batch_answer_costs_that_item_alone(gateway: Gateway) -> None:
    mcp: Mcp = await gateway()
    await mcp.initialize()
    batch = '[{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"kept"}},'
    batch += '{"jsonrpc":"2.0","id":{id},"result":{"content":[{"type":"text","text":"the answer"}]}}]'
    status, messages = await raw_call(mcp, [batch], answer=False)
    assert status == 200
    assert text_of(messages[-1]) == "the answer"


async def test_a_line_too_deep_to_parse_costs_that_line_alone(gateway: Gateway) -> None:
    """A 100,000-deep line used to raise RecursionError inside the pipe callback and lose the rest
    of its chunk, the real answer with it. In one chunk: the deep line, then the answer."""
    mcp: Mcp = await gateway()
    await mcp.initialize()
    deep = "[" * 100_000 + "]" * 100_000
    answer = '{"jsonrpc":"2.0","id":{id},"result":{"content":[{"type":"text","text":"real answer"}]}}'
    status, messages = await raw_call(mcp, [deep, answer], answer=False)
    assert status == 200
    assert text_of(messages[-1]) == "real answer"
    assert violations(mcp) == 1


async def test_lines_around_a_bad_one_all_arrive(gateway: Gateway) -> None:
    mcp: Mcp = await gateway()
    await mcp.initialize()
    lines = [
        '{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"before"}}',
        '{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":NaN}}',
        '{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"after"}}',
    ]
    status, messages = await raw_call(mcp, lines, answer=True)
    assert status == 200
    logged = [message["params"]["data"] for message in messages if message.get("method") == "notifications/message"]
    assert logged == ["before", "after"]
    assert text_of(messages[-1]) == "written"


async def test_a_child_that_closes_stdout_but_keeps_running_ends_its_session(gateway: Gateway) -> None:
    mcp: Mcp = await gateway()
    await mcp.initialize()
    pid = int(text_of(await mcp.call_tool("pid")))
    assert text_of(await mcp.call_tool("close_stdout")) == "closing"
    store = mcp.http.app[keys.SESSIONS]
    assert await eventually(lambda: len(store) == 0 and store.children == 0)
    assert pid not in {live for live, _, _ in live_processes()}
    status, _ = await mcp.post({"jsonrpc": "2.0", "id": 99, "method": "ping"})
    assert status == 404


async def test_a_request_in_flight_when_stdout_closes_gets_an_error(gateway: Gateway) -> None:
    mcp: Mcp = await gateway()
    await mcp.initialize()
    hang = asyncio.create_task(
        mcp.post({"jsonrpc": "2.0", "id": 50, "method": "tools/call", "params": {"name": "hang"}})
    )
    await asyncio.sleep(0)
    await mcp.call_tool("close_stdout")
    async with asyncio.timeout(WAIT):
        status, messages = await hang
    assert status == 200
    assert "closed its output" in messages[-1]["error"]["message"]
