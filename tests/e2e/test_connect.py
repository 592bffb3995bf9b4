"""`mcp-gateway connect` line by line: a real bridge process, a real gateway (static bearer auth)
in front of the echo server, and a scripted Streamable HTTP server for what the gateway never
does on purpose (keep-alives inside a POST's stream, multi-line data, CR line endings, GET
stream drops, HTTP failures, DELETE 405).

What must hold: every client request gets exactly one answer (or none once cancelled), stdout
carries JSON-RPC lines only, the token never reaches stderr, an expired session is re-created
behind the client's back, oversized lines never desynchronise stdin, and stdin EOF ends the
remote session and the process with status 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
from collections.abc import Mapping
from typing import Any

import pytest
from aiohttp import ClientSession, web
from multidict import CIMultiDictProxy
from pytest_aiohttp import AiohttpServer

from gateway import keys
from gateway.sessions.store import SessionStore
from tests.support.connect_process import TOKEN, TOKEN_VAR, gateway_settings, running_connect, serve_gateway
from tests.support.processes import child_pids
from tests.support.servers import ECHO_SERVER
from tests.support.types import JsonObj
from tests.support.waits import WAIT, eventually

pytestmark = pytest.mark.slow

ECHO = [sys.executable, str(ECHO_SERVER)]


def tool_call(name: str, **arguments: Any) -> JsonObj:
    return {"name": name, "arguments": arguments}


def text_of(response: JsonObj) -> str:
    return str(response["result"]["content"][0]["text"])


@pytest.fixture
async def echo_gateway(aiohttp_server: AiohttpServer) -> tuple[str, SessionStore]:
    url, app = await serve_gateway(aiohttp_server, gateway_settings(ECHO))
    return url, app[keys.SESSIONS]


# --- against the gateway -----------------------------------------------------------------------


async def test_calls_progress_and_a_server_request_round_trip(echo_gateway: tuple[str, SessionStore]) -> None:
    url, _ = echo_gateway
    async with running_connect(url) as bridge:
        init = await bridge.initialize(capabilities={"sampling": {}})
        assert init["result"]["serverInfo"]["name"] == "echo-server"

        tools = await bridge.request(1, "tools/list")
        assert "echo" in {tool["name"] for tool in tools["result"]["tools"]}
        assert text_of(await bridge.request(2, "tools/call", tool_call("echo", text="héllo"))) == "héllo"

        # Several events for one request: the progress notifications, then the result.
        params = {**tool_call("progress", steps=3), "_meta": {"progressToken": "tok"}}
        await bridge.send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params})
        answer, before = await bridge.answer_to(3)
        assert [m["params"]["progress"] for m in before] == [1, 2, 3]
        assert {m["method"] for m in before} == {"notifications/progress"}
        assert text_of(answer) == "done"

        # sampling/createMessage arrives on stdout; the client's answer is POSTed back.
        await bridge.send(
            {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": tool_call("sample", prompt="hi")}
        )
        sampling = await bridge.receive()
        assert sampling["method"] == "sampling/createMessage"
        reply = {"role": "assistant", "content": {"type": "text", "text": "sampled"}, "model": "m"}
        await bridge.send({"jsonrpc": "2.0", "id": sampling["id"], "result": reply})
        answer, _ = await bridge.answer_to(4)
        assert json.loads(text_of(answer)) == reply

        assert await bridge.close_stdin() == 0
    bridge.assert_clean_stdout()


async def test_requests_do_not_wait_for_each_other(echo_gateway: tuple[str, SessionStore]) -> None:
    url, _ = echo_gateway
    async with running_connect(url) as bridge:
        await bridge.initialize()
        await bridge.send({"jsonrpc": "2.0", "id": "slow", "method": "tools/call", "params": tool_call("hang")})
        # Answered while the first request is still in flight.
        assert text_of(await bridge.request("fast", "tools/call", tool_call("echo", text="x"))) == "x"
        # Cancelling abandons the hanging request: the server is told, the client gets no answer.
        cancel = {"requestId": "slow", "reason": "user"}
        await bridge.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": cancel})
        seen = json.loads(text_of(await bridge.request("check", "tools/call", tool_call("cancelled"))))
        # (the gateway rewrites request ids, so the server names it by the gateway's id)
        assert [(entry["reason"], entry["running"]) for entry in seen] == [("user", True)]
        assert await bridge.close_stdin() == 0
    answered = [json.loads(line).get("id") for line in bridge.stdout]
    assert "slow" not in answered


async def test_an_expired_session_is_reinitialized_transparently(echo_gateway: tuple[str, SessionStore]) -> None:
    url, store = echo_gateway
    async with running_connect(url) as bridge:
        await bridge.initialize()
        assert text_of(await bridge.request(1, "tools/call", tool_call("echo", text="before"))) == "before"
        (old,) = list(store)

        # End the session behind the bridge's back, as an idle TTL or a restart would.
        headers = {"Mcp-Session-Id": old.id, "Authorization": f"Bearer {TOKEN}"}
        async with ClientSession() as http, http.delete(url, headers=headers) as response:
            assert response.status == 204
        assert len(store) == 0

        assert text_of(await bridge.request(2, "tools/call", tool_call("echo", text="after"))) == "after"
        (new,) = list(store)
        assert new.id != old.id
        assert await bridge.close_stdin() == 0
    # The replayed initialize was the bridge's own: its response never reached the client.
    assert [json.loads(line)["id"] for line in bridge.stdout] == ["init", 1, 2]


async def test_a_second_initialize_ends_the_first_session(echo_gateway: tuple[str, SessionStore]) -> None:
    url, store = echo_gateway
    async with running_connect(url) as bridge:
        await bridge.initialize()
        first_pid = int(text_of(await bridge.request(1, "tools/call", tool_call("pid"))))
        (first,) = list(store)

        await bridge.initialize()  # a client reconnecting over the same bridge process
        second_pid = int(text_of(await bridge.request(2, "tools/call", tool_call("pid"))))
        (second,) = list(store)  # the first session was DELETEd, not left to expire

        assert second.id != first.id
        assert second_pid != first_pid
        assert await eventually(lambda: first_pid not in child_pids()), child_pids()
        assert await bridge.close_stdin() == 0


async def test_stdin_eof_ends_the_session_and_the_process(echo_gateway: tuple[str, SessionStore]) -> None:
    url, store = echo_gateway
    async with running_connect(url) as bridge:
        await bridge.initialize()
        server_pid = int(text_of(await bridge.request(1, "tools/call", tool_call("pid"))))
        assert len(store) == 1
        assert await bridge.close_stdin() == 0
        assert len(store) == 0  # the bridge sent DELETE before it exited
    assert await eventually(lambda: server_pid not in child_pids()), child_pids()
    assert await eventually(lambda: not child_pids()), child_pids()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
async def test_a_signal_ends_the_session_and_exits_zero(
    echo_gateway: tuple[str, SessionStore], signum: signal.Signals
) -> None:
    url, store = echo_gateway
    async with running_connect(url) as bridge:
        await bridge.initialize()
        await bridge.request(1, "ping")
        assert len(store) == 1
        bridge.process.send_signal(signum)
        async with asyncio.timeout(WAIT):
            assert await bridge.process.wait() == 0
        assert len(store) == 0


async def test_oversized_and_invalid_lines(echo_gateway: tuple[str, SessionStore]) -> None:
    url, _ = echo_gateway
    async with running_connect(url, "--max-message-bytes", "2048") as bridge:
        await bridge.initialize()
        big = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": tool_call("echo", text="x" * 5000)}
        await bridge.send(big)
        refused = await bridge.receive()
        assert refused["id"] == 7
        assert refused["error"]["code"] == -32600
        assert "2048" in refused["error"]["message"]

        # The id written last cannot be read from the head: the line is dropped without an answer.
        await bridge.send(json.dumps({"jsonrpc": "2.0", "method": "x", "params": {"p": "y" * 5000}, "id": 8}).encode())
        await bridge.send(b"{not json")
        parse_error = await bridge.receive()
        assert parse_error == {"jsonrpc": "2.0", "id": None, "error": parse_error["error"]}
        assert parse_error["error"]["code"] == -32700

        await bridge.send(b'{"jsonrpc": "2.0", "id": 9, "method": 5}')
        invalid = await bridge.receive()
        assert (invalid["id"], invalid["error"]["code"]) == (9, -32600)

        # Still aligned: the next message is answered normally.
        assert text_of(await bridge.request(10, "tools/call", tool_call("echo", text="ok"))) == "ok"
        # The server's messages are bounded too.
        too_big = await bridge.request(11, "tools/call", tool_call("big", size=4000))
        assert "larger than --max-message-bytes" in too_big["error"]["message"]
        # The client's answer to a server request is too large: the server hears an error instead.
        await bridge.send({"jsonrpc": "2.0", "id": 12, "method": "tools/call", "params": tool_call("sample")})
        sampling = await bridge.receive()
        assert sampling["method"] == "sampling/createMessage"
        huge = {"role": "assistant", "content": {"type": "text", "text": "z" * 5000}, "model": "m"}
        await bridge.send({"jsonrpc": "2.0", "id": sampling["id"], "result": huge})
        answer, _ = await bridge.answer_to(12)
        assert text_of(answer).startswith("error: message larger than --max-message-bytes")
        assert await bridge.close_stdin() == 0
    bridge.assert_clean_stdout()
    assert [json.loads(line)["id"] for line in bridge.stdout] == ["init", 7, None, 9, 10, 11, sampling["id"], 12]


async def test_no_stdout_pollution_and_no_token_in_stderr(echo_gateway: tuple[str, SessionStore]) -> None:
    url, _ = echo_gateway
    async with running_connect(url) as bridge:  # --log-level debug
        await bridge.initialize()
        await bridge.request(1, "tools/call", tool_call("log", message="note"))
        await bridge.request(2, "tools/call", tool_call("stderr", lines=3))
        await bridge.request(3, "nonexistent/method")
        await bridge.send(b"garbage")
        await bridge.receive()
        assert await bridge.close_stdin() == 0
    bridge.assert_clean_stdout()
    stderr = bridge.stderr_text()
    assert "bridging stdio to" in stderr  # logs do go to stderr
    assert TOKEN not in stderr


async def test_a_wrong_token_is_an_error_naming_the_auth_failure(echo_gateway: tuple[str, SessionStore]) -> None:
    url, store = echo_gateway
    async with running_connect(url, token="not-the-token") as bridge:
        init = await bridge.initialize()
        message = init["error"]["message"]
        assert "refused the credentials (HTTP 401 (invalid_token" in message
        assert f"${TOKEN_VAR}" in message
        failed = await bridge.request(1, "tools/list")
        assert "error" in failed
        assert await bridge.close_stdin() == 0
    assert len(store) == 0
    assert "not-the-token" not in bridge.stderr_text()


async def test_unreachable_server_answers_with_an_error(unused_tcp_port: int) -> None:
    async with running_connect(f"http://127.0.0.1:{unused_tcp_port}/mcp") as bridge:
        init = await bridge.request("init", "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
        assert init["error"]["code"] == -32000
        assert "cannot reach the MCP server" in init["error"]["message"]
        assert await bridge.close_stdin() == 0


# --- against a scripted server -----------------------------------------------------------------


@dataclasses.dataclass
class Script:
    """A minimal Streamable HTTP server whose every answer is written out here."""

    posts: list[tuple[Mapping[str, str], JsonObj]] = dataclasses.field(default_factory=list)
    gets: list[CIMultiDictProxy[str]] = dataclasses.field(default_factory=list)
    deletes: list[CIMultiDictProxy[str]] = dataclasses.field(default_factory=list)
    sessions: int = 0
    get_status: int | None = None  # answer every GET with this status instead of a stream
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    answered: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/mcp", self.post)
        app.router.add_get("/mcp", self.get)
        app.router.add_delete("/mcp", self.delete)
        return app

    async def post(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.posts.append((request.headers, body))
        method, msg_id = body.get("method"), body.get("id")
        if method == "initialize":
            self.sessions += 1
            result = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "scripted"}}
            headers = {"Mcp-Session-Id": f"scripted-{self.sessions}"}
            return web.json_response({"jsonrpc": "2.0", "id": msg_id, "result": result}, headers=headers)
        if msg_id is None or method is None:
            if msg_id == "srv-ping":
                self.answered.set()
            return web.Response(status=202)
        if method == "stream":
            return await self.stream(request, msg_id)
        if method == "fail/500":
            return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")
        if method == "fail/jsonrpc":
            error = {"code": -32602, "message": "bad params", "data": {"field": "x"}}
            return web.json_response({"jsonrpc": "2.0", "id": None, "error": error}, status=400)
        if method == "expire" and request.headers.get("Mcp-Session-Id") == "scripted-1":
            return web.Response(status=404)
        return web.json_response({"jsonrpc": "2.0", "id": msg_id, "result": {"session": self.sessions}})

    async def stream(self, request: web.Request, msg_id: Any) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}}
        pretty = "\r\n".join(f"data: {line}" for line in json.dumps(progress, indent=2).splitlines())
        await response.write(b": keep-alive\n\nid: p-0\nretry: 10\ndata:\n\n")  # comment, priming event
        await response.write(pretty.encode() + b"\r\n\r\n: keep-alive\r\r")
        await response.write(
            b"event: message\ndata: " + json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": {}}).encode()
        )
        await response.write(b"\n\n")
        return response

    async def get(self, request: web.Request) -> web.StreamResponse:
        self.gets.append(request.headers)
        if self.get_status is not None:
            return web.Response(status=self.get_status)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if len(self.gets) == 1:  # a server→client request, then the stream drops
            ping = {"jsonrpc": "2.0", "id": "srv-ping", "method": "ping"}
            await response.write(b"id: g-1\nretry: 10\ndata: " + json.dumps(ping).encode() + b"\n\n")
            return response
        note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "again"}}
        await response.write(b"id: g-2\ndata: " + json.dumps(note).encode() + b"\n\n")
        await self.release.wait()  # held open until the test ends
        return response

    async def delete(self, request: web.Request) -> web.StreamResponse:
        self.deletes.append(request.headers)
        return web.Response(status=405)


async def test_against_a_scripted_server(aiohttp_server: AiohttpServer) -> None:
    script = Script()
    server = await aiohttp_server(script.app())
    try:
        await _scripted_session(str(server.make_url("/mcp")), script)
    finally:
        script.release.set()


async def _scripted_session(url: str, script: Script) -> None:
    async with running_connect(url) as bridge:
        await bridge.initialize()

        # The standalone stream's request reaches the client, whose answer is POSTed back.
        ping = await bridge.receive()
        assert ping == {"jsonrpc": "2.0", "id": "srv-ping", "method": "ping"}
        await bridge.send({"jsonrpc": "2.0", "id": "srv-ping", "result": {}})
        async with asyncio.timeout(WAIT):
            await script.answered.wait()
        # The stream dropped; the reconnection resumes after the last event seen.
        note = await bridge.receive()
        assert note["params"]["data"] == "again"
        assert [headers.get("Last-Event-ID") for headers in script.gets] == [None, "g-1"]
        assert {headers["Mcp-Session-Id"] for headers in script.gets} == {"scripted-1"}
        assert {headers["MCP-Protocol-Version"] for headers in script.gets} == {"2025-06-18"}

        # Keep-alives and priming events are skipped; multi-line data becomes one compact line.
        answer = await bridge.request(1, "stream")
        assert answer == {"jsonrpc": "2.0", "id": 1, "result": {}}
        assert bridge.unclaimed == [
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}}
        ]
        bridge.unclaimed.clear()

        relayed = await bridge.request(2, "fail/jsonrpc")
        assert relayed == {
            "jsonrpc": "2.0",
            "id": 2,
            "error": {"code": -32602, "message": "bad params", "data": {"field": "x"}},
        }
        failed = await bridge.request(3, "fail/500")
        assert failed["error"] == {"code": -32000, "message": "the MCP server answered HTTP 502 Bad Gateway"}

        # 404 on a request with a session: initialize again (the client's own params), retry once.
        renewed = await bridge.request(4, "expire")
        assert renewed == {"jsonrpc": "2.0", "id": 4, "result": {"session": 2}}
        replayed = [body for _, body in script.posts if body.get("method") == "initialize"]
        assert len(replayed) == 2
        assert replayed[1]["params"] == replayed[0]["params"]
        assert replayed[1]["id"] != replayed[0]["id"]
        after_replay = [body.get("method") for _, body in script.posts][-3:]
        assert after_replay == ["initialize", "notifications/initialized", "expire"]

        assert await bridge.close_stdin() == 0  # DELETE answered 405: fine
    assert [headers["Mcp-Session-Id"] for headers in script.deletes] == ["scripted-2"]
    bridge.assert_clean_stdout()
    for headers, _ in script.posts:
        assert headers["Accept"] == "application/json, text/event-stream"
        assert headers["Authorization"] == f"Bearer {TOKEN}"


async def test_a_server_without_a_standalone_stream(aiohttp_server: AiohttpServer) -> None:
    """GET answered 405: no stream, and no reconnection attempts either."""
    script = Script(get_status=405)
    server = await aiohttp_server(script.app())
    async with running_connect(str(server.make_url("/mcp"))) as bridge:
        await bridge.initialize()
        assert await eventually(lambda: len(script.gets) == 1)
        assert await eventually(lambda: "offers no standalone stream (405)" in bridge.stderr_text())
        assert (await bridge.request(1, "ping"))["result"] == {"session": 1}
        assert await bridge.close_stdin() == 0
    assert len(script.gets) == 1
