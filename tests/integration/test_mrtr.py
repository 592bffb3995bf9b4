"""A legacy child's requests to its client, carried to 2026-07-28 clients as requests for input:
the round trip at the protocol level (against the echo server, whose `elicit`, `sample` and
`roots` tools ask their client and answer with what it said), and every way a `requestState`
can be wrong — altered, expired, used twice, another principal's — each refused with the
reason and losing nothing."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from gateway import create_app, keys
from gateway.auth.static import digest_of
from tests.support.mcp import Modern
from tests.support.servers import SDK_SERVER
from tests.support.settings import make_settings, public_host
from tests.support.types import JsonObj
from tests.support.waits import eventually

PUBLIC = "https://mcp.example.com"
TOKENS = {"alice": "alice-token", "bob": "bob-token"}
EVERYTHING: JsonObj = {"elicitation": {}, "sampling": {}, "roots": {}}
# What each tool asks, and an answer a client could give.
ASKS: dict[str, tuple[str, JsonObj, JsonObj]] = {
    "elicit": ("elicitation/create", {"message": "who?"}, {"action": "accept", "content": {"name": "Ada"}}),
    "sample": (
        "sampling/createMessage",
        {"prompt": "p"},
        {"role": "assistant", "content": {"type": "text", "text": "sampled"}, "model": "m"},
    ),
    "roots": ("roots/list", {}, {"roots": [{"uri": "file:///srv", "name": "srv"}]}),
}


async def _client(aiohttp_client: AiohttpClient, **overrides: Any) -> Modern:
    settings = make_settings(**overrides)
    return Modern(await aiohttp_client(create_app(settings), headers=public_host(settings)))


def _tool(client: Modern, tool: str, capabilities: JsonObj = EVERYTHING) -> JsonObj:
    return client.message("tools/call", {"name": tool, "arguments": ASKS[tool][1]}, capabilities=capabilities)


def _retry(client: Modern, first: JsonObj, state: str, responses: JsonObj) -> JsonObj:
    """The retry of `first`: a new id, the same params, the answers and the state."""
    retry = client.message(first["method"], {k: v for k, v in first["params"].items() if k != "_meta"})
    retry["params"]["_meta"] = first["params"]["_meta"]
    retry["params"]["inputResponses"] = responses
    retry["params"]["requestState"] = state
    return retry


async def _asked(client: Modern, message: JsonObj) -> JsonObj:
    status, messages, _ = await client.post(message)
    assert status == 200, messages
    answer = messages[-1]
    assert answer["id"] == message["id"]
    result: JsonObj = answer["result"]
    assert result["resultType"] == "input_required", result
    return result


def _text(answer: JsonObj) -> str:
    return str(answer["result"]["content"][0]["text"])


@pytest.mark.parametrize("tool", list(ASKS))
async def test_a_childs_request_becomes_a_request_for_input(aiohttp_client: AiohttpClient, tool: str) -> None:
    client = await _client(aiohttp_client)
    first = _tool(client, tool)
    asked = await _asked(client, first)
    method, _, answer = ASKS[tool]
    ((key, request),) = asked["inputRequests"].items()
    assert request["method"] == method
    assert "id" not in request
    assert "jsonrpc" not in request
    retry = _retry(client, first, asked["requestState"], {key: answer})
    status, messages, _ = await client.post(retry)
    assert status == 200
    final = messages[-1]
    assert final["id"] == retry["id"]  # answered under the retry's own id
    assert final["result"]["resultType"] == "complete"
    assert json.loads(_text(final)) == answer  # the child got the client's answer as its response


async def test_an_undeclared_capability_is_never_asked_for(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)
    answer = await client.call_tool("elicit", {"message": "who?"}, capabilities={"sampling": {}})
    assert answer["result"]["resultType"] == "complete"
    assert _text(answer) == "error: The client did not declare the elicitation capability"


async def _state(client: Modern) -> tuple[JsonObj, JsonObj]:
    first = _tool(client, "elicit")
    return first, await _asked(client, first)


def _tampered(state: str) -> str:
    head, payload, mac = state.split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    return f"{head}.{flipped}.{mac}"


async def _refused(client: Modern, message: JsonObj) -> str:
    status, messages, _ = await client.post(message)
    assert status == 400, messages
    error = messages[0]["error"]
    assert error["code"] == -32602
    return str(error["message"])


async def test_an_altered_state_is_refused_and_the_call_still_resumes(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)
    first, asked = await _state(client)
    answers = {"input-1": ASKS["elicit"][2]}
    assert "signature" in await _refused(client, _retry(client, first, _tampered(asked["requestState"]), answers))
    for forged in ("mcpgw1.e30.AAAA", "mcpgw1.\u00e9.AAAA", asked["requestState"] + "=", asked["requestState"] + "A"):
        assert "signature" in await _refused(client, _retry(client, first, forged, answers)), forged
    other = _retry(client, first, asked["requestState"], answers)
    other["params"]["name"] = "sample"  # the state of a call of `elicit` names no call of `sample`
    assert "another request" in await _refused(client, other)
    final = (await client.post(_retry(client, first, asked["requestState"], answers)))[1][-1]
    assert json.loads(_text(final))["action"] == "accept"


async def test_a_state_is_used_once(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)
    first, asked = await _state(client)
    answers = {"input-1": ASKS["elicit"][2]}
    retries = [_retry(client, first, asked["requestState"], answers) for _ in range(2)]
    # Sent at once: one takes the call over, the other is refused (the state was used, or by the
    # time it is read, the call has ended).
    outcomes = await asyncio.gather(*(client.post(retry) for retry in retries))
    assert sorted(status for status, _, _ in outcomes) == [200, 400]
    refused = next(messages for status, messages, _ in outcomes if status == 400)
    assert "used already" in refused[0]["error"]["message"] or "ended" in refused[0]["error"]["message"]
    # And after the call ended, the state names nothing.
    assert "ended" in await _refused(client, _retry(client, first, asked["requestState"], answers))


async def test_an_expired_state_cancels_the_call_at_the_child(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client, input_request_timeout=0.3)
    store = client.http.app[keys.SESSIONS]
    first, asked = await _state(client)
    # No retry comes: the call is cancelled at the child, and its request answered with an error.
    assert await eventually(lambda: store.requests_in_flight() == 0)
    reason = await _refused(client, _retry(client, first, asked["requestState"], {"input-1": ASKS["elicit"][2]}))
    assert reason == "Invalid requestState: the request it belongs to has ended"
    cancelled = json.loads(_text(await client.call_tool("cancelled")))
    assert [entry["running"] for entry in cancelled] == [True]


async def test_another_principals_state_is_refused(aiohttp_client: AiohttpClient) -> None:
    tokens = [{"principal": name, "sha256": digest_of(token)} for name, token in TOKENS.items()]
    settings = make_settings(auth="static", static_tokens=tokens, public_url=PUBLIC)
    http = await aiohttp_client(create_app(settings), headers=public_host(settings))
    alice, bob = Modern(http, token=TOKENS["alice"]), Modern(http, token=TOKENS["bob"])
    first, asked = await _state(alice)
    answers = {"input-1": ASKS["elicit"][2]}
    reason = await _refused(bob, _retry(bob, first, asked["requestState"], answers))
    # Bob is told nothing of alice's call: to him it names a request that does not exist.
    assert reason == "Invalid requestState: the request it belongs to has ended"
    final = (await alice.post(_retry(alice, first, asked["requestState"], answers)))[1][-1]
    assert json.loads(_text(final))["content"] == {"name": "Ada"}


async def test_a_request_that_could_belong_to_two_calls_is_refused(aiohttp_client: AiohttpClient) -> None:
    """A stdio server does not say which call it asks for: with two such calls in flight on one
    child, its request is answered with an error at once rather than asked of the wrong client."""
    client = await _client(aiohttp_client)
    first, asked = await _state(client)  # this call waits for its client
    second = await client.call_tool("elicit", {"message": "and you?"}, capabilities=EVERYTHING)
    assert _text(second) == "error: The gateway cannot tell which request this belongs to"
    final = (await client.post(_retry(client, first, asked["requestState"], {"input-1": ASKS["elicit"][2]})))[1][-1]
    assert json.loads(_text(final))["action"] == "accept"


async def test_a_modern_childs_own_state_goes_back_to_it(aiohttp_client: AiohttpClient) -> None:
    """A 2026-07-28 child seals its requestState with a key of its own process: with two children
    per principal, the retry goes to the child that asked, even while it is the busier one."""
    command = [sys.executable, str(SDK_SERVER), "--era", "modern"]
    client = await _client(aiohttp_client, command=command, children_per_principal=2, sse_keepalive=0.2)
    first = client.message(
        "tools/call", {"name": "resolved_user", "arguments": {"question": "who?"}}, capabilities=EVERYTHING
    )
    asked = await _asked(client, first)
    assert not asked["requestState"].startswith("mcpgw1.")  # the child's own, passed through
    ((key, request),) = asked["inputRequests"].items()
    assert request["method"] == "elicitation/create"
    busy = client.message("tools/call", {"name": "wait", "arguments": {"seconds": 5}})
    async with client.http.post(client.path, json=busy, headers=client.headers(busy)) as waiting:
        await waiting.content.readline()  # a keep-alive: the child that asked is busy now
        retry = _retry(client, first, asked["requestState"], {key: {"action": "accept", "content": {"name": "Ada"}}})
        status, messages, _ = await client.post(retry)
    assert status == 200, messages
    assert _text(messages[-1]) == "Ada"
