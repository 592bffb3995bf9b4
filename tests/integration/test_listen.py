"""`subscriptions/listen` for 2026-07-28 clients, against the legacy echo server: the
acknowledgement first, then the list changes and resource updates asked for (tagged with the
subscription id), from any child of the same principal and none of another's; the resources
subscribed on the child while someone listens; the stream's end when its child ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import ClientResponse
from pytest_aiohttp import AiohttpClient

from gateway import create_app, keys
from gateway.auth.static import digest_of
from tests.support.mcp import Modern, read_comment, read_event
from tests.support.settings import make_settings, public_host
from tests.support.types import JsonObj

PUBLIC = "https://mcp.example.com"
SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"
URI = "test://watched"


async def _client(aiohttp_client: AiohttpClient, **overrides: Any) -> Modern:
    settings = make_settings(**overrides)
    return Modern(await aiohttp_client(create_app(settings), headers=public_host(settings)))


@asynccontextmanager
async def _listening(client: Modern, notifications: JsonObj) -> AsyncIterator[tuple[ClientResponse, JsonObj]]:
    """An open listen stream and what its acknowledgement honours (with the listen's `id` added)."""
    message = client.message("subscriptions/listen", {"notifications": notifications})
    async with client.http.post(client.path, json=message, headers=client.headers(message)) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        _, ack = await read_event(response)
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["_meta"][SUBSCRIPTION] == message["id"]
        yield response, {**ack["params"]["notifications"], "id": message["id"]}


def _notify(method: str, params: JsonObj) -> JsonObj:
    return {"method": method, "params": params}


async def test_the_acknowledgement_names_what_the_server_can_announce(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)
    asked = {"toolsListChanged": True, "promptsListChanged": True, "resourceSubscriptions": [URI, URI]}
    async with _listening(client, asked) as (_, honored):
        # The echo server announces tool changes and resource updates; it has no prompts.
        assert honored == {"toolsListChanged": True, "resourceSubscriptions": [URI], "id": honored["id"]}


async def test_changes_and_updates_reach_the_listener_tagged(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)
    async with _listening(client, {"toolsListChanged": True, "resourceSubscriptions": [URI]}) as (stream, _):
        # Announced by the child during others' calls: each reaches the stream that asked for it.
        await client.call_tool("notify", _notify("notifications/resources/updated", {"uri": "test://other"}))
        await client.call_tool("notify", _notify("notifications/resources/updated", {"uri": URI}))
        await client.call_tool("retag", {"tool": "echo", "annotations": None})
        _, updated = await read_event(stream)
        _, changed = await read_event(stream)
    assert updated["method"] == "notifications/resources/updated"
    assert updated["params"]["uri"] == URI  # the other URI was not asked for
    assert changed["method"] == "notifications/tools/list_changed"
    assert SUBSCRIPTION in updated["params"]["_meta"]
    assert SUBSCRIPTION in changed["params"]["_meta"]


async def test_the_child_is_subscribed_while_someone_listens(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)
    async with _listening(client, {"resourceSubscriptions": [URI]}):
        pass
    received = json.loads((await client.call_tool("received"))["result"]["content"][0]["text"])
    subscriptions = [entry for entry in received if entry[0] in ("resources/subscribe", "resources/unsubscribe")]
    assert [method for method, _ in subscriptions] == ["resources/subscribe", "resources/unsubscribe"]


async def test_a_change_through_one_child_reaches_a_listen_held_on_another(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client, children_per_principal=2, sse_keepalive=0.1)
    store = client.http.app[keys.SESSIONS]
    async with _listening(client, {"toolsListChanged": True}) as (stream, _):
        hanging = client.message("tools/call", {"name": "hang", "arguments": {}})
        async with client.http.post(client.path, json=hanging, headers=client.headers(hanging)) as busy:
            await read_comment(busy)  # the listen's child is busy with it: the next call starts another
            await client.call_tool("retag", {"tool": "echo", "annotations": None})
            assert store.children == 2
            _, changed = await read_event(stream)
    assert changed["method"] == "notifications/tools/list_changed"


async def test_another_principals_changes_never_arrive(aiohttp_client: AiohttpClient) -> None:
    tokens = [{"principal": name, "sha256": digest_of(name)} for name in ("alice", "bob")]
    settings = make_settings(auth="static", static_tokens=tokens, public_url=PUBLIC, sse_keepalive=0.1)
    http = await aiohttp_client(create_app(settings), headers=public_host(settings))
    alice, bob = Modern(http, token="alice"), Modern(http, token="bob")
    async with _listening(alice, {"toolsListChanged": True}) as (stream, _):
        await bob.call_tool("retag", {"tool": "echo", "annotations": None})
        # Only keep-alives come: bob's child announced to bob's listeners, of which there are none.
        assert await read_comment(stream) == ": keep-alive"
        await alice.call_tool("retag", {"tool": "echo", "annotations": None})
        _, changed = await read_event(stream)
    assert changed["method"] == "notifications/tools/list_changed"


async def test_the_stream_ends_with_its_result_when_its_child_ends(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)
    async with _listening(client, {"toolsListChanged": True}) as (stream, honored):
        listen_id = honored["id"]
        status, _, _ = await client.post(client.message("tools/call", {"name": "crash", "arguments": {}}))
        assert status in (200, 502)
        _, final = await asyncio.wait_for(read_event(stream), 10)
        assert final["id"] == listen_id
        assert final["result"]["_meta"][SUBSCRIPTION] == listen_id
        assert await stream.content.read() == b""  # and the stream ends


async def test_listen_needs_a_client_that_accepts_streams(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)
    message = client.message("subscriptions/listen", {"notifications": {"toolsListChanged": True}})
    status, _, _ = await client.post(message, {"Accept": "application/json"})
    assert status == 406


async def test_listens_are_bounded_per_principal_and_in_what_they_watch(aiohttp_client: AiohttpClient) -> None:
    client = await _client(aiohttp_client)
    many = [f"test://r/{n}" for n in range(100)]
    async with _listening(client, {"resourceSubscriptions": many}) as (_, honored):
        assert honored["resourceSubscriptions"] == many[:64]  # the rest is not acknowledged
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(16):
            await stack.enter_async_context(_listening(client, {"toolsListChanged": True}))
        message = client.message("subscriptions/listen", {"notifications": {"toolsListChanged": True}})
        status, messages, _ = await client.post(message)
        assert status == 429
        assert "listen streams" in messages[0]["error"]["message"]
