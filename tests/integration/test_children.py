"""Misbehaving stdio children, through the real app and real processes.

Each test drives tests/servers/echo_server.py into one failure mode — a crash, garbage or
oversized lines on stdout, silence, ignored signals, a grandchild holding stdout, a stderr flood,
a leaky environment, a command that cannot execute, an exit right after answering — and checks
what the HTTP client sees (status, JSON-RPC code and message) and that no process of the child's
group outlives its session.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Final

import pytest

from gateway.config.child import DEFAULT_CHILD_ENV_ALLOW
from tests.support.mcp import ACCEPT_BOTH, LATEST, Mcp, text_of
from tests.support.processes import child_pids, group_members
from tests.support.types import Gateway, JsonObj
from tests.support.waits import eventually

MiB: Final = 1024 * 1024
# JSON-RPC codes the gateway answers with (gateway/jsonrpc.py).
INVALID_REQUEST: Final = -32600
INTERNAL_ERROR: Final = -32603
SESSION_ENDED: Final = -32000
REQUEST_TIMED_OUT: Final = -32001
# A request_timeout for tests whose failure mode is "the answer never comes": a gateway that
# hangs then answers -32001 instead of the expected error, rather than hitting pytest's timeout.
NO_HANG_TIMEOUT: Final = 15.0
OVERSIZE_MESSAGE: Final = re.compile(
    r"The MCP server's response \((\d+) bytes\) exceeds the gateway's message size limit"
)
RATE_LIMITED: Final = re.compile(r"child stderr: (\d+) lines not logged \(rate limit\)")
# Variables the child's interpreter may add to its own environment (PEP 538 locale coercion).
INTERPRETER_ADDED_ENV: Final = frozenset({"LC_CTYPE"})


def rpc_error(request_id: int | str | None, code: int, message: str) -> JsonObj:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


async def call(mcp: Mcp, request_id: int | str, tool: str, **arguments: Any) -> JsonObj:
    """tools/call with a chosen client id, so the expected response can be written out whole."""
    return await mcp.request("tools/call", {"name": tool, "arguments": arguments}, id=request_id)


async def server_pid(mcp: Mcp) -> int:
    return int(text_of(await mcp.call_tool("pid")))


async def assert_session_gone(mcp: Mcp) -> None:
    """A request on the session is answered 404 "Session not found" (the client re-initializes)."""
    status, messages = await mcp.post({"jsonrpc": "2.0", "id": "after", "method": "ping"})
    assert (status, messages) == (404, [rpc_error("after", INVALID_REQUEST, "Session not found")])


async def assert_group_gone(pgid: int) -> None:
    assert await eventually(lambda: not group_members({pgid})), f"alive in group {pgid}: {group_members({pgid})}"


def messages_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger]


# --- the child exits -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [3, 42], ids=["exit-3", "exit-42"])
async def test_crash_mid_call_answers_an_error_naming_the_exit_code(gateway: Gateway, code: int) -> None:
    mcp = await gateway()
    await mcp.initialize()
    pid = await server_pid(mcp)

    response = await call(mcp, "crash-call", "crash", code=code)

    assert response == rpc_error("crash-call", SESSION_ENDED, f"Session ended: the MCP server exited with code {code}")
    await assert_session_gone(mcp)
    await assert_group_gone(pid)


@pytest.mark.parametrize("code", [0, 9], ids=["exit-0", "exit-9"])
async def test_answer_written_just_before_exit_is_delivered_then_the_session_ends(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.sessions")
    mcp = await gateway()
    await mcp.initialize()
    pid = await server_pid(mcp)

    response = await call(mcp, "last-words", "exit_after_answer", code=code)

    assert response["id"] == "last-words"
    assert text_of(response) == "bye"
    # The answer can reach the client before the exit is processed; the store's record of the
    # close is the moment the session stops being findable.
    assert await eventually(
        lambda: any(
            record.getMessage() == "session closed" and getattr(record, "reason", None) == "child_exit"
            for record in caplog.records
        )
    )
    await assert_session_gone(mcp)
    await assert_group_gone(pid)


# --- stdout that is not a message ----------------------------------------------------------------


async def test_garbage_lines_below_the_violation_limit_are_skipped(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    pid = await server_pid(mcp)

    assert text_of(await mcp.call_tool("garbage", lines=3)) == "ok"

    assert text_of(await mcp.call_tool("echo", text="still here")) == "still here"
    assert await server_pid(mcp) == pid


async def test_garbage_reaching_the_violation_limit_closes_the_session(gateway: Gateway) -> None:
    mcp = await gateway(stdout_violation_limit=3)
    await mcp.initialize()
    pid = await server_pid(mcp)

    response = await call(mcp, "garbage-call", "garbage", lines=5)

    assert response == rpc_error("garbage-call", SESSION_ENDED, "Session ended: the session was closed (violation)")
    await assert_session_gone(mcp)
    await assert_group_gone(pid)


@pytest.mark.parametrize(
    ("limit", "size"),
    [(None, 20 * MiB), (64 * 1024, 100_000)],
    ids=["20MiB-line-default-16MiB-limit", "100kB-line-64KiB-limit"],
)
async def test_oversized_response_fails_its_request_and_keeps_framing(
    gateway: Gateway, limit: int | None, size: int
) -> None:
    """The router reads the id at the head of the dropped line and answers that request at once."""
    overrides: dict[str, Any] = {"request_timeout": NO_HANG_TIMEOUT}
    if limit is not None:
        overrides["max_message_bytes"] = limit
    mcp = await gateway(**overrides)
    await mcp.initialize()
    pid = await server_pid(mcp)

    response = await call(mcp, "huge-call", "huge", size=size)

    assert response["id"] == "huge-call"
    assert response["error"]["code"] == INTERNAL_ERROR
    match = OVERSIZE_MESSAGE.fullmatch(response["error"]["message"])
    assert match is not None, response
    assert int(match.group(1)) > size  # the whole line was measured, not just the text
    # The next line after the oversized one is read as a message of its own.
    assert text_of(await mcp.call_tool("echo", text="after")) == "after"
    assert await server_pid(mcp) == pid


async def test_large_response_within_the_limit_is_delivered(gateway: Gateway) -> None:
    mcp = await gateway(max_message_bytes=64 * 1024, request_timeout=NO_HANG_TIMEOUT)
    await mcp.initialize()

    assert text_of(await mcp.call_tool("huge", size=60_000)) == "x" * 60_000


# --- silence -------------------------------------------------------------------------------------


async def test_request_timeout_answers_an_error_and_cancels_at_the_child(gateway: Gateway) -> None:
    mcp = await gateway(request_timeout=1)
    await mcp.initialize()
    message = "Request timed out: no answer from the MCP server in 1 s"

    response = await call(mcp, "hang-call", "hang")

    assert response == rpc_error("hang-call", REQUEST_TIMED_OUT, message)
    # The cancellation was written to stdin before the error was delivered, so the child has
    # read it before this next request.
    [cancellation] = json.loads(text_of(await mcp.call_tool("cancelled")))
    assert cancellation == {"requestId": cancellation["requestId"], "reason": message, "running": True}
    assert type(cancellation["requestId"]) is int  # the gateway's id for the request, not "hang-call"


# --- stopping children that resist ---------------------------------------------------------------


async def test_delete_kills_a_child_that_ignores_stdin_eof_and_sigterm(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.child")
    mcp = await gateway("--ignore-sigterm", "--ignore-stdin-eof")
    await mcp.initialize()
    pid = await server_pid(mcp)

    assert await mcp.delete() == 204

    await assert_group_gone(pid)
    assert messages_of(caplog, "gateway.child") == [
        "MCP server did not exit on stdin EOF; sending SIGTERM",
        "MCP server ignored SIGTERM; sending SIGKILL",
    ]
    await assert_session_gone(mcp)


async def test_delete_kills_the_grandchild_holding_stdout(gateway: Gateway) -> None:
    mcp = await gateway("--grandchild")
    await mcp.initialize()
    pid = await server_pid(mcp)
    assert len(group_members({pid})) == 2  # the server and its grandchild

    assert await mcp.delete() == 204

    await assert_group_gone(pid)


async def test_crash_with_a_grandchild_holding_stdout_still_answers(gateway: Gateway) -> None:
    """The exit is noticed by polling, not by pipe EOF, which the grandchild withholds."""
    mcp = await gateway("--grandchild", request_timeout=NO_HANG_TIMEOUT)
    await mcp.initialize()
    pid = await server_pid(mcp)
    assert len(group_members({pid})) == 2

    response = await call(mcp, "crash-call", "crash")

    assert response == rpc_error("crash-call", SESSION_ENDED, "Session ended: the MCP server exited with code 3")
    await assert_group_gone(pid)
    await assert_session_gone(mcp)


# --- stderr --------------------------------------------------------------------------------------


async def test_stderr_flood_is_drained_and_thinned(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    """40 000 stderr lines (at startup and from a tool) never block the child; every line is
    either logged or counted in a "not logged (rate limit)" record."""
    caplog.set_level(logging.INFO, logger="gateway.child")
    mcp = await gateway("--stderr-lines", "20000")
    await mcp.initialize()

    assert text_of(await mcp.call_tool("stderr", lines=20000)) == "ok"
    assert text_of(await mcp.call_tool("echo", text="after the flood")) == "after the flood"
    assert await mcp.delete() == 204

    def accounted() -> tuple[int, int]:
        messages = messages_of(caplog, "gateway.child")
        logged = sum(1 for m in messages if m.startswith(("child stderr: noise line", "child stderr: stderr line")))
        counted = sum(int(match.group(1)) for m in messages if (match := RATE_LIMITED.fullmatch(m)))
        return logged, counted

    # The last "not logged" record is written when the stderr pipe closes, after the DELETE.
    assert await eventually(lambda: sum(accounted()) == 40_000), accounted()
    logged, counted = accounted()
    assert logged > 0
    assert counted > 0


# --- what the child is given ---------------------------------------------------------------------


async def test_child_environment_is_the_allow_list_plus_configured_extras(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak-1")
    monkeypatch.setenv("MCP_GATEWAY_TEST_SECRET", "do-not-leak-2")
    monkeypatch.setenv("DATABASE_URL", "postgres://user:do-not-leak-3@db/app")
    mcp = await gateway(child_env={"EXTRA": "1"})
    await mcp.initialize()

    env = json.loads(text_of(await mcp.call_tool("env")))

    assert env["EXTRA"] == "1"
    assert env["PATH"] == os.environ["PATH"]
    assert set(env) - INTERPRETER_ADDED_ENV <= {*DEFAULT_CHILD_ENV_ALLOW, "EXTRA"}
    assert not [name for name, value in env.items() if "do-not-leak" in value]


async def test_child_runs_in_the_configured_directory(gateway: Gateway, tmp_path: Path) -> None:
    # Not tmp_path itself: the tests already run there, and the child would inherit it anyway.
    workdir = tmp_path / "child-cwd"
    workdir.mkdir()
    mcp = await gateway(child_cwd=workdir)
    await mcp.initialize()

    assert text_of(await mcp.call_tool("cwd")) == str(workdir.resolve())


# --- spawn failure -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"\x7fELF\x00\x01garbage that is no executable format\n", b"#!/nonexistent/interpreter\n"],
    ids=["exec-format-error", "missing-interpreter"],
)
async def test_server_that_cannot_execute_fails_initialize_with_502(
    gateway: Gateway, tmp_path: Path, content: bytes
) -> None:
    server = tmp_path / "broken-server"
    server.write_bytes(content)
    server.chmod(0o755)  # passes the settings check (an executable on PATH); exec() still fails
    mcp = await gateway(command=[str(server)])
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": LATEST, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    headers = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH}

    async with mcp.http.post(mcp.path, json=initialize, headers=headers) as response:
        status, session_id, body = response.status, response.headers.get("Mcp-Session-Id"), await response.json()

    assert status == 502
    assert session_id is None
    assert body == rpc_error(0, INTERNAL_ERROR, "The MCP server could not be started")
    assert child_pids() == set()


async def test_server_that_never_answers_initialize(gateway: Gateway) -> None:
    """The deadline answers 502 with -32001, no session is created, and the child is stopped."""
    silent = [sys.executable, "-c", "import time; time.sleep(60)"]
    mcp = await gateway(command=silent, request_timeout=0.5)
    init = {"jsonrpc": "2.0", "id": "i", "method": "initialize", "params": {"protocolVersion": LATEST}}
    async with mcp.http.post("/mcp", json=init, headers={"Accept": ACCEPT_BOTH}) as response:
        assert response.status == 502
        assert "Mcp-Session-Id" not in response.headers
        body = await response.json()
    assert body["id"] == "i"
    assert body["error"]["code"] == REQUEST_TIMED_OUT
    assert await eventually(lambda: not child_pids())
