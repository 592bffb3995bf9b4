"""`mcp-gateway connect` in front of servers that refuse `initialize` and speak 2026-07-28 only.

The official SDK's *stdio* client (handshake era) launches the bridge, whose remote is the SDK
test server behind a middleware that refuses the handshake era: every scenario a legacy client
of such a server runs must pass (the handshake answered from `server/discover`, requests for
input turned into requests to the client, subscriptions served by a listen on the server).

A scripted 2026-07-28 server shows what the SDK's does not let a test see: the routing headers
and the envelope of every POST, the bridge's own ids, a refused input request, too many rounds,
a cancellation closing the request's stream, the listen reopened when a subscription changes
and reconnected when it drops. And a dual-era server keeps the bridge on the handshake path.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import Iterator
from typing import Any, Final

import mcp
import pytest
from aiohttp import web
from mcp import StdioServerParameters
from multidict import CIMultiDictProxy
from pytest_aiohttp import AiohttpServer

from tests.support.connect_process import TOKEN, TOKEN_VAR, ConnectProcess, bridge_argv, running_connect
from tests.support.sdk_scenarios import LEGACY_CLIENT_SCENARIOS, Scenario
from tests.support.servers import SERVERS, served_http
from tests.support.types import JsonObj
from tests.support.waits import WAIT, eventually

pytestmark = pytest.mark.slow

MODERN: Final = "2026-07-28"
VERSION_KEY: Final = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_KEY: Final = "io.modelcontextprotocol/clientCapabilities"
SUBSCRIPTION_KEY: Final = "io.modelcontextprotocol/subscriptionId"
SERVER_INFO_KEY: Final = "io.modelcontextprotocol/serverInfo"


@pytest.fixture(scope="module")
def modern_url() -> Iterator[str]:
    """The SDK test server, refusing the handshake era (tests/servers/sdk_http_modern_server.py)."""
    yield from served_http(SERVERS / "sdk_http_modern_server.py")


@pytest.fixture(scope="module")
def dual_url() -> Iterator[str]:
    """The SDK test server on the SDK's own transport, serving both eras."""
    yield from served_http(SERVERS / "sdk_http_server.py")


def bridged_client(url: str) -> Any:
    """A client factory (see sdk_scenarios) whose stdio server is the bridge to `url`."""
    argv = bridge_argv(url, "--bearer-env", TOKEN_VAR)

    def make(**kwargs: Any) -> mcp.Client:
        server = StdioServerParameters(command=argv[0], args=argv[1:], env={TOKEN_VAR: TOKEN})
        return mcp.Client(server, mode="legacy", **kwargs)

    return make


@pytest.mark.parametrize("scenario", LEGACY_CLIENT_SCENARIOS, ids=lambda s: s.__name__.removeprefix("scenario_"))
async def test_legacy_client_of_a_modern_only_server(scenario: Scenario, modern_url: str) -> None:
    await scenario(bridged_client(modern_url))


async def test_the_sdk_server_line_by_line(modern_url: str) -> None:
    """What the SDK client does not show: the handshake's answer, ping, the bridge's own ids for
    its requests to the client, and a refused one failing the client's request."""
    async with running_connect(modern_url) as bridge:
        init = await bridge.initialize(capabilities={"elicitation": {}})
        result = init["result"]
        assert result["protocolVersion"] == "2025-11-25"  # the client's own
        assert result["serverInfo"] == {"name": "sdk-test-server", "version": "1.0.0"}
        assert result["capabilities"]["resources"]["subscribe"] is True
        assert "logging" in result["capabilities"]
        assert (await bridge.request("p", "ping")) == {"jsonrpc": "2.0", "id": "p", "result": {}}

        call = {"name": "resolved_user", "arguments": {"question": "Name?"}}
        await bridge.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call})
        asked = await bridge.receive()
        assert asked["method"] == "elicitation/create"
        assert asked["params"]["message"] == "Name?"
        assert isinstance(asked["id"], str)
        assert asked["id"].startswith("mcp-gateway-")
        await bridge.send({"jsonrpc": "2.0", "id": asked["id"], "error": {"code": -1, "message": "user closed it"}})
        refused, _ = await bridge.answer_to(1)
        assert refused["error"]["message"] == "The client refused elicitation/create: user closed it"

        # The next request is served as before: the refusal cost one request.
        listed = await bridge.request(2, "tools/list")
        assert "resultType" not in listed["result"]
        assert "_meta" not in listed["result"]  # the server's identity, which only 2026-07-28 carries
        assert await bridge.close_stdin() == 0
    bridge.assert_clean_stdout()
    assert "asking server/discover" in bridge.stderr_text()
    assert TOKEN not in bridge.stderr_text()


async def test_a_dual_era_server_keeps_the_handshake(dual_url: str) -> None:
    """The server accepts `initialize`: nothing is probed, its session is used, and its requests to
    the client (which 2026-07-28 has not) reach the client as they are."""
    async with running_connect(dual_url) as bridge:
        init = await bridge.initialize(capabilities={"elicitation": {}})
        assert init["result"]["protocolVersion"] == "2025-11-25"
        call = {"name": "ask_user", "arguments": {"question": "Name?"}}
        await bridge.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call})
        asked = await bridge.receive()
        assert asked["method"] == "elicitation/create"
        assert not str(asked["id"]).startswith("mcp-gateway-")  # the server's own id
        await bridge.send(
            {"jsonrpc": "2.0", "id": asked["id"], "result": {"action": "accept", "content": {"name": "Ada"}}}
        )
        answer, _ = await bridge.answer_to(1)
        assert answer["result"]["content"][0]["text"] == "Ada"
        assert await bridge.close_stdin() == 0
    log = bridge.stderr_text()
    assert "server/discover" not in log
    assert "session (none)" not in log
    assert "session " in log
    assert "session ended" in log  # the session was ended with DELETE


# --- against a scripted server of 2026-07-28 ---------------------------------------------------


@dataclasses.dataclass
class ModernScript:
    """A server of 2026-07-28 only whose every answer is written out here."""

    posts: list[tuple[CIMultiDictProxy[str], JsonObj]] = dataclasses.field(default_factory=list)
    listens: list[JsonObj] = dataclasses.field(default_factory=list)  # each listen's filter
    closed: list[str] = dataclasses.field(default_factory=list)  # what saw its stream closed by the bridge
    others: list[str] = dataclasses.field(default_factory=list)  # GET, DELETE
    hang_started: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/mcp", self.post)
        app.router.add_route("*", "/mcp", self.other)
        return app

    async def other(self, request: web.Request) -> web.StreamResponse:
        self.others.append(request.method)
        return web.Response(status=405, headers={"Allow": "POST"})

    async def post(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.posts.append((request.headers, body))
        msg_id, method, params = body.get("id"), body.get("method"), body.get("params") or {}
        meta = params.get("_meta") or {}
        if VERSION_KEY not in meta or method == "initialize":
            error = {"code": -32022, "message": "2026-07-28 only", "data": {"supported": [MODERN], "requested": None}}
            return web.json_response({"jsonrpc": "2.0", "id": msg_id, "error": error}, status=400)
        if method == "server/discover":
            result = {
                "resultType": "complete",
                "supportedVersions": [MODERN],
                "capabilities": {"tools": {"listChanged": True}, "resources": {}},
                "instructions": "scripted",
                "ttlMs": 0,
                "cacheScope": "private",
                "_meta": {SERVER_INFO_KEY: {"name": "scripted-modern", "version": "2"}},
            }
            return _answer(msg_id, result)
        if method == "subscriptions/listen":
            return await self.listen(request, msg_id, params["notifications"])
        name = params.get("name")
        if name == "hang":
            return await self.hang(request, msg_id)
        if name == "ask_once" and "inputResponses" not in params:
            asked = {"who": {"method": "elicitation/create", "params": {"message": "who?", "requestedSchema": {}}}}
            return _answer(msg_id, {"resultType": "input_required", "inputRequests": asked, "requestState": "opaque-1"})
        if name == "state_only" and params.get("requestState") != "ready":
            return _answer(msg_id, {"resultType": "input_required", "requestState": "ready"})
        if name == "ask_forever":
            asked = {"q": {"method": "elicitation/create", "params": {"message": "again?", "requestedSchema": {}}}}
            return _answer(msg_id, {"resultType": "input_required", "inputRequests": asked, "requestState": "s"})
        return _answer(msg_id, {"resultType": "complete", "echo": params})

    async def hang(self, request: web.Request, msg_id: Any) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.hang_started.set()
        try:
            while True:  # keep-alives until the client closes the stream
                await response.write(b": keep-alive\n\n")
                await asyncio.sleep(0.02)
        except (ConnectionError, asyncio.CancelledError):  # the test server cancels on a disconnect
            self.closed.append(f"hang {msg_id}")
            raise

    async def listen(self, request: web.Request, msg_id: Any, wanted: JsonObj) -> web.StreamResponse:
        self.listens.append(wanted)
        number = len(self.listens)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        tag = {SUBSCRIPTION_KEY: msg_id}
        await _event(response, "notifications/subscriptions/acknowledged", {"_meta": tag})
        for uri in wanted.get("resourceSubscriptions", []):
            await _event(response, "notifications/resources/updated", {"uri": uri, "_meta": tag})
        if number == 2:
            return response  # the second listen drops at once: the bridge opens it again
        try:
            while not self.release.is_set():
                await response.write(b": keep-alive\n\n")
                await asyncio.sleep(0.02)
        except (ConnectionError, asyncio.CancelledError):
            self.closed.append(f"listen {number}")
            raise
        return response


def _answer(msg_id: Any, result: JsonObj) -> web.Response:
    return web.json_response({"jsonrpc": "2.0", "id": msg_id, "result": result})


async def _event(response: web.StreamResponse, method: str, params: JsonObj) -> None:
    data = json.dumps({"jsonrpc": "2.0", "method": method, "params": params})
    await response.write(f"event: message\ndata: {data}\n\n".encode())


@pytest.fixture
async def script(aiohttp_server: AiohttpServer) -> Any:
    script = ModernScript()
    server = await aiohttp_server(script.app())
    try:
        yield script, str(server.make_url("/mcp"))
    finally:
        script.release.set()


async def _initialized(bridge: ConnectProcess) -> JsonObj:
    init = await bridge.initialize(capabilities={"elicitation": {}})
    return dict(init["result"])


async def test_every_post_carries_the_envelope_and_the_routing_headers(script: Any) -> None:
    state, url = script
    async with running_connect(url) as bridge:
        result = await _initialized(bridge)
        assert result["serverInfo"] == {"name": "scripted-modern", "version": "2"}
        assert result["instructions"] == "scripted"
        assert result["capabilities"]["resources"] == {"subscribe": True}

        params = {"name": "héllo tool", "arguments": {}, "_meta": {"progressToken": "tok"}}
        echoed = await bridge.request(7, "tools/call", params)
        sent = echoed["result"]["echo"]
        assert sent["_meta"]["progressToken"] == "tok"  # the client's own _meta keys are kept
        assert sent["_meta"][VERSION_KEY] == MODERN
        assert sent["_meta"][CAPABILITIES_KEY] == {"elicitation": {}}
        assert "resultType" not in echoed["result"]
        await bridge.request(8, "resources/read", {"uri": "test://x"})
        await bridge.request(9, "tools/list")
        await bridge.send({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})
        assert await bridge.close_stdin() == 0
    by_method = {body.get("method"): (headers, body) for headers, body in state.posts}
    assert set(by_method) == {
        "initialize",
        "server/discover",
        "subscriptions/listen",
        "tools/call",
        "resources/read",
        "tools/list",
    }
    for method, (headers, body) in by_method.items():
        assert "Mcp-Session-Id" not in headers
        assert headers["Authorization"] == f"Bearer {TOKEN}"
        if method == "initialize":
            continue
        assert headers["MCP-Protocol-Version"] == MODERN
        assert headers["Mcp-Method"] == method
        assert isinstance(body["id"], str)
        assert body["id"].startswith("mcp-gateway-")
    encoded = base64.b64encode("héllo tool".encode()).decode()
    assert by_method["tools/call"][0]["Mcp-Name"] == f"=?base64?{encoded}?="
    assert by_method["resources/read"][0]["Mcp-Name"] == "test://x"
    assert "Mcp-Name" not in by_method["tools/list"][0]
    assert state.others == []  # no GET stream, no DELETE: 2026-07-28 has neither
    assert bridge.stdout
    assert json.loads(bridge.stdout[-1])["id"] == 9


async def test_a_retry_carries_the_answers_and_the_state(script: Any) -> None:
    state, url = script
    async with running_connect(url) as bridge:
        await _initialized(bridge)
        await bridge.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "ask_once"}})
        asked = await bridge.receive()
        assert asked["params"] == {"message": "who?", "requestedSchema": {}}
        answer = {"action": "accept", "content": {"name": "Ada"}}
        await bridge.send({"jsonrpc": "2.0", "id": asked["id"], "result": answer})
        done, _ = await bridge.answer_to(1)
        assert done["result"]["echo"]["inputResponses"] == {"who": answer}
        assert done["result"]["echo"]["requestState"] == "opaque-1"

        # A round that asks nothing is retried with the state alone.
        again = await bridge.request(2, "tools/call", {"name": "state_only"})
        assert again["result"]["echo"]["requestState"] == "ready"
        assert again["result"]["echo"]["inputResponses"] == {}
        assert await bridge.close_stdin() == 0
    calls = [body for _, body in state.posts if body.get("method") == "tools/call"]
    ids = [body["id"] for body in calls]
    assert len(ids) == 4
    assert len(set(ids)) == 4
    assert asked["id"] not in ids


async def test_a_server_that_keeps_asking_is_refused_after_the_rounds(script: Any) -> None:
    _, url = script
    async with running_connect(url) as bridge:
        await _initialized(bridge)
        await bridge.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "ask_forever"}})
        asked_ids = []
        while True:
            message = await bridge.receive()
            if "method" not in message:
                break
            assert message["method"] == "elicitation/create"
            asked_ids.append(message["id"])
            await bridge.send({"jsonrpc": "2.0", "id": message["id"], "result": {"action": "decline"}})
        assert message["id"] == 1
        assert message["error"]["message"] == "The MCP server kept asking for input"
        assert len(asked_ids) == 10
        assert len(set(asked_ids)) == 10
        assert await bridge.close_stdin() == 0


async def test_cancelling_closes_the_request_stream(script: Any) -> None:
    state, url = script
    async with running_connect(url) as bridge:
        await _initialized(bridge)
        await bridge.send({"jsonrpc": "2.0", "id": "slow", "method": "tools/call", "params": {"name": "hang"}})
        async with asyncio.timeout(WAIT):
            await state.hang_started.wait()
        (hung,) = [body["id"] for _, body in state.posts if (body.get("params") or {}).get("name") == "hang"]
        await bridge.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "slow"}})
        assert await eventually(lambda: f"hang {hung}" in state.closed), state.closed
        assert (await bridge.request("after", "tools/list"))["result"]["echo"]["_meta"][VERSION_KEY] == MODERN
        assert await bridge.close_stdin() == 0
    assert "slow" not in [json.loads(line).get("id") for line in bridge.stdout]
    assert [body.get("method") for _, body in state.posts].count("notifications/cancelled") == 0


async def test_the_listen_follows_the_subscriptions(script: Any) -> None:
    state, url = script
    async with running_connect(url) as bridge:
        await _initialized(bridge)
        # The server offers tool-list changes: a listen is held from the start.
        assert await eventually(lambda: len(state.listens) == 1)
        assert state.listens[0] == {"toolsListChanged": True}

        # Subscribing is answered once the listen carrying it is acknowledged; that listen's
        # stream sends the update, which reaches the client without the subscription id.
        assert (await bridge.request(1, "resources/subscribe", {"uri": "test://a"}))["result"] == {}
        assert state.listens[1] == {"toolsListChanged": True, "resourceSubscriptions": ["test://a"]}
        assert await eventually(lambda: "listen 1" in state.closed)  # the first one was closed
        updated = await bridge.receive()
        assert updated == {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "test://a"}}
        # That second listen dropped: the bridge opened it again, with the same filter.
        assert await eventually(lambda: len(state.listens) == 3)
        assert state.listens[2] == state.listens[1]
        assert (await bridge.receive())["params"] == {"uri": "test://a"}

        assert (await bridge.request(2, "resources/unsubscribe", {"uri": "test://a"}))["result"] == {}
        assert state.listens[3] == {"toolsListChanged": True}
        assert await eventually(lambda: "listen 3" in state.closed)
        assert await bridge.close_stdin() == 0
    # The listen held at the end was closed at shutdown.
    assert await eventually(lambda: "listen 4" in state.closed)
    bridge.assert_clean_stdout()
