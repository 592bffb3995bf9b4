"""Tool policy over HTTP against the real echo server: filtered lists, refused calls that never
reach the child, 403 step-up challenges by annotation class, the gateway listing tools itself,
invalidation on list_changed, pagination and 2025-03-26 batches."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application
from pytest_aiohttp import AiohttpClient

from gateway import create_app, jsonrpc
from gateway.auth.static import digest_of
from gateway.sessions.router import ASK_ID_PREFIX
from tests.support.mcp import LATEST, Mcp, text_of
from tests.support.settings import make_settings, public_host
from tests.support.types import JsonObj

READER = "reader-token-0123456789"  # no scope
WRITER = "writer-token-0123456789"  # tools:write
ADMIN = "admin-token-0123456789"  # tools:write and tools:destructive
PUBLIC = "https://mcp.example.com"
WRITE, DESTRUCTIVE = "tools:write", "tools:destructive"
# The echo server's tools by annotation class (see tests/servers/echo_server.py).
READ_ONLY_TOOLS = {"read_note", "received", "request_ids", "retag"}
WRITE_TOOLS = {"write_note"}
CHALLENGE = (
    f'Bearer realm="mcp-gateway", resource_metadata="{PUBLIC}/.well-known/oauth-protected-resource/mcp", '
    'scope="{scope}", error="insufficient_scope", error_description="The access token lacks a required scope"'
)


class TokenMcp(Mcp):
    """The test client, presenting one bearer token (if any) on every request."""

    def __init__(self, client: TestClient[Any, Application], token: str | None) -> None:
        super().__init__(client)
        self.token = token

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        token = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return super().headers({**token, **(extra or {})})


def scoped(**extra: Any) -> dict[str, Any]:
    """Settings with three static tokens holding none, one or both tool scopes."""
    tokens = [
        {"principal": "reader", "sha256": digest_of(READER)},
        {"principal": "writer", "sha256": digest_of(WRITER), "scopes": [WRITE]},
        {"principal": "admin", "sha256": digest_of(ADMIN), "scopes": [WRITE, DESTRUCTIVE]},
    ]
    return {
        "auth": "static",
        "static_tokens": tokens,
        "public_url": PUBLIC,
        "tool_scope_write": WRITE,
        "tool_scope_destructive": DESTRUCTIVE,
        **extra,
    }


TokenGateway = Callable[..., Awaitable[TokenMcp]]


@pytest.fixture
def gateway(aiohttp_client: AiohttpClient) -> TokenGateway:
    """`await gateway(token, *echo_flags, version=..., **settings)`: an initialized session."""

    async def start(token: str | None, *flags: str, version: str = LATEST, **settings: Any) -> TokenMcp:
        gateway_settings = make_settings(*flags, **settings)
        client = await aiohttp_client(create_app(gateway_settings), headers=public_host(gateway_settings))
        mcp = TokenMcp(client, token)
        await mcp.initialize(version)
        return mcp

    return start


def logged_denials(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str | None]]:
    records = [vars(record) for record in caplog.records if record.name == "gateway.policy"]
    return [(record["tool"], record["reason"], record["scope"]) for record in records]


async def listed(mcp: Mcp) -> set[str]:
    response = await mcp.request("tools/list")
    return {tool["name"] for tool in response["result"]["tools"]}


async def received(mcp: Mcp) -> list[list[Any]]:
    """The [method, tool name] of every request the child has received (this one included)."""
    return list(json.loads(text_of(await mcp.call_tool("received"))))


async def all_tools(gateway: TokenGateway) -> set[str]:
    return await listed(await gateway(None))


# --- names ---------------------------------------------------------------------------------------


async def test_denied_names_are_not_listed(gateway: TokenGateway) -> None:
    everything = await all_tools(gateway)
    mcp = await gateway(None, tool_deny=["delete_*", "crash"])
    assert await listed(mcp) == everything - {"delete_note", "crash"}


async def test_allow_list_and_deny_wins(gateway: TokenGateway) -> None:
    mcp = await gateway(None, tool_allow=["*_note", "received"], tool_deny=["delete_*"])
    assert await listed(mcp) == {"read_note", "write_note", "received"}
    response = await mcp.call_tool("echo", text="hi")
    assert response["error"] == {"code": jsonrpc.INVALID_PARAMS, "message": "Tool not allowed: echo"}


async def test_a_denied_call_never_reaches_the_child(gateway: TokenGateway, caplog: pytest.LogCaptureFixture) -> None:
    mcp = await gateway(None, tool_deny=["delete_note"])
    with caplog.at_level(logging.INFO, logger="gateway.policy"):
        status, messages = await mcp.post(
            {"jsonrpc": "2.0", "id": "d-1", "method": "tools/call", "params": {"name": "delete_note"}}
        )
    assert status == 200
    assert messages == [
        {"jsonrpc": "2.0", "id": "d-1", "error": {"code": -32602, "message": "Tool not allowed: delete_note"}}
    ]
    assert ["tools/call", "delete_note"] not in await received(mcp)
    assert text_of(await mcp.call_tool("echo", text="still serving")) == "still serving"
    assert logged_denials(caplog) == [("delete_note", "denied", None)]


async def test_a_refused_name_is_bounded_and_printable(gateway: TokenGateway) -> None:
    mcp = await gateway(None, tool_deny=["bad*"])
    response = await mcp.call_tool("bad\x07" + "x" * 10_000)
    message = response["error"]["message"]
    assert message.startswith("Tool not allowed: bad?xxx")
    assert message.endswith("…")
    assert len(message) < 200


# --- scopes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "hidden"),
    [(READER, "write and destructive"), (WRITER, "destructive"), (ADMIN, "nothing")],
    ids=["no-scope", "write-scope", "both-scopes"],
)
async def test_lists_show_what_the_caller_may_use(gateway: TokenGateway, token: str, hidden: str) -> None:
    everything = await all_tools(gateway)
    mcp = await gateway(token, **scoped())
    expected = {
        "write and destructive": READ_ONLY_TOOLS,
        "destructive": READ_ONLY_TOOLS | WRITE_TOOLS,
        "nothing": everything,
    }[hidden]
    assert await listed(mcp) == expected


@pytest.mark.parametrize(
    ("token", "tool", "scope"),
    [
        (READER, "write_note", WRITE),
        (READER, "delete_note", f"{DESTRUCTIVE} {WRITE}"),
        (READER, "echo", f"{DESTRUCTIVE} {WRITE}"),  # unannotated: destructive by default
        (WRITER, "delete_note", f"{DESTRUCTIVE} {WRITE}"),
    ],
    ids=["write-without-scope", "destructive-without-scopes", "unannotated", "destructive-with-write-only"],
)
async def test_a_call_without_its_scope_is_403(
    gateway: TokenGateway, caplog: pytest.LogCaptureFixture, tmp_path: Path, *, token: str, tool: str, scope: str
) -> None:
    audit_log = tmp_path / "audit.jsonl"
    mcp = await gateway(token, **scoped(), audit_log=str(audit_log))
    message = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool}}
    with caplog.at_level(logging.INFO, logger="gateway.policy"):
        async with mcp.http.post("/mcp", json=message, headers=mcp.headers()) as response:
            assert response.status == 403
            assert response.headers["WWW-Authenticate"] == CHALLENGE.format(scope=scope)
            body = await response.json()
    assert body == {
        "jsonrpc": "2.0",
        "id": 7,
        "error": {"code": jsonrpc.INVALID_REQUEST, "message": "The access token lacks a required scope"},
    }
    assert ["tools/call", tool] not in await received(mcp)
    assert logged_denials(caplog) == [(tool, "scope", scope)]
    audited = [json.loads(line) for line in audit_log.read_text().splitlines()]
    refusals = [(line["reason"], line["tool"], line["scope"]) for line in audited if line["event"] == "auth.fail"]
    assert refusals == [("insufficient_scope", tool, scope)]


@pytest.mark.parametrize(
    ("token", "tool", "answer"),
    [(READER, "read_note", "read"), (WRITER, "write_note", "write"), (ADMIN, "delete_note", "delete")],
    ids=["read-only", "write", "destructive"],
)
async def test_a_call_with_its_scope_is_forwarded(gateway: TokenGateway, token: str, tool: str, answer: str) -> None:
    mcp = await gateway(token, **scoped())
    assert text_of(await mcp.call_tool(tool)) == answer


async def test_a_call_before_any_list_makes_the_gateway_list_every_page(gateway: TokenGateway) -> None:
    mcp = await gateway(READER, "--page-size", "4", **scoped())
    seen = await received(mcp)  # a read-only tool, listed on the last page
    pages = -(-len(await all_tools(gateway)) // 4)
    assert seen == [["initialize", None], *[["tools/list", None]] * pages, ["tools/call", "received"]]
    # Everything is known now: further calls, even to a tool the child lacks, list nothing again.
    assert text_of(await mcp.call_tool("read_note")) == "read"
    # A tool the child does not list counts as destructive (the policy fails closed).
    status, _ = await mcp.post({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "no_such_tool"}})
    assert status == 403
    assert [entry for entry in await received(mcp) if entry[0] == "tools/list"] == [["tools/list", None]] * pages


async def test_a_list_that_does_not_come_in_time_is_cancelled_and_refuses_the_call(gateway: TokenGateway) -> None:
    mcp = await gateway(ADMIN, "--slow-first-list", "30", request_timeout=0.5, **scoped())
    status, messages = await mcp.post({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}})
    assert status == 504
    assert messages[0]["error"] == {
        "code": jsonrpc.REQUEST_TIMEOUT,
        "message": "The MCP server did not list its tools in time",
    }
    # The next call lists again (promptly now); the child was told the first listing was abandoned.
    cancellations = json.loads(text_of(await mcp.call_tool("cancelled")))
    assert [(c["reason"], c["running"]) for c in cancellations] == [("The gateway stopped waiting", True)]
    assert cancellations[0]["requestId"].startswith(ASK_ID_PREFIX)  # the gateway's own id namespace
    assert ["tools/call", "echo"] not in await received(mcp)


async def test_tools_learned_from_the_clients_own_list(gateway: TokenGateway) -> None:
    mcp = await gateway(READER, **scoped())
    await listed(mcp)
    status, _ = await mcp.post({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "write_note"}})
    assert status == 403
    assert [entry for entry in await received(mcp) if entry[0] == "tools/list"] == [["tools/list", None]]


async def test_list_changed_forgets_what_was_learned(gateway: TokenGateway) -> None:
    mcp = await gateway(READER, **scoped())
    assert text_of(await mcp.call_tool("read_note")) == "read"
    assert text_of(await mcp.call_tool("retag", tool="read_note", annotations={"destructiveHint": True})) == "retagged"
    status, _ = await mcp.post({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_note"}})
    assert status == 403  # without the invalidation, the stale read-only class would let it through
    assert "read_note" not in await listed(mcp)
    await mcp.call_tool("retag", tool="read_note", annotations={"readOnlyHint": True})
    assert text_of(await mcp.call_tool("read_note")) == "read"


async def test_pagination_survives_filtering(gateway: TokenGateway) -> None:
    mcp = await gateway(READER, "--page-size", "5", **scoped())
    names: set[str] = set()
    cursors: list[str] = []
    cursor: str | None = None
    while True:
        response = await mcp.request("tools/list", {"cursor": cursor} if cursor else {})
        result: JsonObj = response["result"]
        names |= {tool["name"] for tool in result["tools"]}
        cursor = result.get("nextCursor")
        if cursor is None:
            break
        cursors.append(cursor)
    assert names == READ_ONLY_TOOLS
    total = len(await all_tools(gateway))
    assert cursors == [str(offset) for offset in range(5, total, 5)]


# --- batches (2025-03-26) ------------------------------------------------------------------------


def call(request_id: int, name: str) -> JsonObj:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": name, "arguments": {}}}


async def test_a_batch_refuses_only_its_denied_calls(gateway: TokenGateway) -> None:
    mcp = await gateway(None, version="2025-03-26", tool_deny=["delete_note"])
    status, messages = await mcp.post([call(1, "read_note"), call(2, "delete_note"), call(3, "write_note")])
    assert status == 200
    by_id = {message["id"]: message for message in messages}
    assert sorted(by_id) == [1, 2, 3]
    assert text_of(by_id[1]) == "read"
    assert by_id[2]["error"] == {"code": -32602, "message": "Tool not allowed: delete_note"}
    assert text_of(by_id[3]) == "write"
    assert ["tools/call", "delete_note"] not in await received(mcp)


async def test_a_batch_with_a_call_lacking_its_scope_is_refused_whole(gateway: TokenGateway) -> None:
    mcp = await gateway(READER, version="2025-03-26", **scoped())
    status, messages = await mcp.post([call(1, "read_note"), call(2, "write_note")])
    assert status == 403
    assert messages[0]["error"]["code"] == jsonrpc.INVALID_REQUEST
    calls = [entry for entry in await received(mcp) if entry[0] == "tools/call"]
    assert calls == [["tools/call", "received"]]
