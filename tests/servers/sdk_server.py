"""A stdio MCP server built with the official SDK (``mcp`` 2.3), for end-to-end tests.

Run it as ``python tests/servers/sdk_server.py``; it speaks newline-delimited
JSON-RPC on stdin/stdout and serves handshake-era clients (the ``initialize``
handshake, protocol versions 2024-11-05 .. 2025-11-25) as well as 2026-07-28
clients. Each feature below is exercised by ``tests/support/sdk_scenarios.py``:

* tools: ``add``, ``echo``, ``slow_progress`` (progress notifications),
  ``log_then_answer`` (``notifications/message``), ``ask_llm`` (a
  ``sampling/createMessage`` request to the client), ``ask_user`` (a form-mode
  ``elicitation/create`` request) and ``touch_resource`` (a
  ``notifications/resources/updated`` for a subscribed URI), and ``peek``
  (annotated read-only), ``save`` (writes, not destructive) and ``wipe``
  (destructive) for the gateway's tool policy;
* resources: ``test://greeting`` and the template ``test://items/{item_id}``;
* prompts: ``greet``;
* ``resources/subscribe`` / ``resources/unsubscribe`` (``resources.subscribe``
  capability) and ``logging/setLevel`` (``logging`` capability).

Server-to-client requests pass ``related_request_id`` (the id of the
``tools/call`` that triggered them). Over stdio every message shares one pipe,
so this only matters to transports that route per request (Streamable HTTP).

Sampling (``ServerSession.create_message``) and logging (``Context.info``) are
deprecated by the SDK as of protocol 2026-07-28 (SEP-2577); they are the
documented way to reach handshake-era clients, so they are used on purpose and
the ``MCPDeprecationWarning`` they emit at run time goes to this process's stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from typing import Annotated, Any, cast

import anyio
from mcp.server import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ListRoots,
    MCPServer,
    Resolve,
    Sample,
    UserMessage,
)
from mcp.server.stdio import stdio_server
from mcp.types import (
    CreateMessageResult,
    EmptyResult,
    ListRootsResult,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    ToolAnnotations,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel

GREETING_URI = "test://greeting"
GREETING_TEXT = "hello from sdk server"

mcp = MCPServer("sdk-test-server", version="1.0.0")

# One process serves exactly one client session (one stdio connection), so
# process-wide state is per-session state.
subscriptions: set[str] = set()


# --------------------------------------------------------------------- tools


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@mcp.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@mcp.tool()
async def slow_progress(steps: int, ctx: Context) -> str:
    """Report progress `steps` times, then return "done"."""
    # report_progress is a no-op unless the request carried _meta.progressToken;
    # the SDK client sets it (to its JSON-RPC request id) whenever call_tool is
    # given a progress_callback.
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps, f"step {step}/{steps}")
    return "done"


@mcp.tool()
async def log_then_answer(message: str, ctx: Context) -> str:
    """Send `message` as an info-level log notification, then answer."""
    await ctx.info(message, logger_name="sdk-test-server")  # type: ignore[deprecated]  # legacy logging is the point
    return f"logged: {message}"


@mcp.tool()
async def ask_llm(prompt: str, ctx: Context) -> str:
    """Ask the client's LLM (sampling/createMessage) and return its text."""
    result = await ctx.session.create_message(
        [SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
        max_tokens=64,
        related_request_id=ctx.request_context.request_id,
    )
    content = result.content
    return content.text if isinstance(content, TextContent) else f"<{content.type} content>"


class UserName(BaseModel):
    """The form shown to the user by ask_user."""

    name: str


@mcp.tool()
async def ask_user(question: str, ctx: Context) -> str:
    """Ask the user for a name (form-mode elicitation/create).

    Returns the accepted name, or the action ("decline" or "cancel") otherwise.
    """
    outcome = await ctx.elicit(question, UserName)
    if isinstance(outcome, AcceptedElicitation):
        return outcome.data.name
    return outcome.action


@mcp.tool()
async def touch_resource(uri: str, ctx: Context) -> str:
    """Send notifications/resources/updated for `uri` if the client subscribed to it."""
    if uri not in subscriptions:
        return f"not subscribed: {uri}"
    # Connection-scoped (not tied to this request), as the spec intends.
    await ctx.session.send_resource_updated(uri)
    return f"notified: {uri}"


@mcp.tool()
async def wait(seconds: float) -> str:
    """Sleep `seconds` (at most 30), then return "waited"."""
    await anyio.sleep(min(seconds, 30.0))
    return "waited"


@mcp.tool()
async def announce(uri: str, ctx: Context) -> str:
    """Announce that the tool list changed and that resource `uri` was updated, to whoever listens:
    a 2026-07-28 client's listen streams, or a handshake-era client (the update only if it
    subscribed to `uri`)."""
    await ctx.notify_tools_changed()
    await ctx.notify_resource_updated(uri)
    if ctx.request_context.session.client_params is not None:  # a handshake-era connection
        await ctx.session.send_tool_list_changed()
        if uri in subscriptions:
            await ctx.session.send_resource_updated(uri)
    return f"announced: {uri}"


@mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
def peek() -> str:
    """Read the note."""
    return "peeked"


@mcp.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
def save(text: str) -> str:
    """Write the note (nothing is destroyed)."""
    return f"saved: {text}"


@mcp.tool(annotations=ToolAnnotations(destructive_hint=True))
def wipe() -> str:
    """Delete the note."""
    return "wiped"


# ----------------------------------------------------------------- resources


@mcp.resource(GREETING_URI, name="greeting", mime_type="text/plain")
def greeting() -> str:
    """A static text resource."""
    return GREETING_TEXT


@mcp.resource("test://items/{item_id}", name="item", mime_type="text/plain")
def item(item_id: str) -> str:
    """A templated text resource."""
    return f"item {item_id}"


# ------------------------------------------------------------------- prompts


@mcp.prompt()
def greet(name: str) -> list[UserMessage]:
    """A one-message prompt greeting `name`."""
    return [UserMessage(f"Please greet {name} warmly.")]


# ------------------------------------------- handshake-era protocol methods

# MCPServer serves no resources/subscribe, resources/unsubscribe or
# logging/setLevel (removed in 2026-07-28). The SDK's documented way to provide
# them for handshake-era clients is the low-level Server.add_request_handler;
# MCPServer exposes no public accessor to its low-level server, hence the
# private attribute. Registering them also advertises `resources.subscribe`
# and `logging` in the initialize result.


async def on_subscribe(ctx: ServerRequestContext[Any], params: SubscribeRequestParams) -> EmptyResult:
    subscriptions.add(params.uri)
    return EmptyResult()


async def on_unsubscribe(ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams) -> EmptyResult:
    subscriptions.discard(params.uri)
    return EmptyResult()


async def on_set_level(ctx: ServerRequestContext[Any], params: SetLevelRequestParams) -> EmptyResult:
    # Accepted so the logging capability is complete; this server's messages are all info-level.
    return EmptyResult()


_lowlevel = mcp._lowlevel_server
_lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
_lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)
_lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, on_set_level)


# ------------------------------------------------ input through resolvers (both eras)
# A resolver's request is a standalone request to a handshake-era client and a request for input
# (`input_required`, with the SDK's own sealed requestState) to a 2026-07-28 one.


def _ask_name(question: str) -> Elicit[UserName]:
    return Elicit(question, UserName)


def _ask_model(prompt: str) -> Sample:
    return Sample([SamplingMessage(role="user", content=TextContent(type="text", text=prompt))], max_tokens=64)


def _ask_roots() -> ListRoots:
    return ListRoots()


@mcp.tool()
def resolved_user(question: str, name: Annotated[UserName, Resolve(_ask_name)]) -> str:
    """Ask the user for a name through a resolver; returns it."""
    return name.name


@mcp.tool()
def resolved_llm(prompt: str, sampled: Annotated[CreateMessageResult, Resolve(_ask_model)]) -> str:
    """Ask the client's LLM through a resolver; returns its text."""
    content = sampled.content
    return content.text if isinstance(content, TextContent) else f"<{content.type} content>"


@mcp.tool()
def resolved_roots(roots: Annotated[ListRootsResult, Resolve(_ask_roots)]) -> str:
    """Ask the client for its roots through a resolver; returns their URIs, comma-separated."""
    return ",".join(str(root.uri) for root in roots.roots)


# ------------------------------------------------------------------ one era only
# `--era legacy` serves handshake-era clients only (as most published servers do): a request
# carrying the 2026-07-28 envelope is an unknown method. `--era modern` serves 2026-07-28 only:
# `initialize`, or any request without the envelope, is refused with the versions it serves.
MODERN_KEY = "io.modelcontextprotocol/protocolVersion"


class _OneEra:
    """stdin, as the SDK reads it, with the other era's requests answered here instead."""

    def __init__(self, era: str, stdin: anyio.AsyncFile[str], stdout: anyio.AsyncFile[str]) -> None:
        self.era = era
        self.stdin = stdin
        self.stdout = stdout

    def __aiter__(self) -> _OneEra:
        return self

    async def __anext__(self) -> str:
        while True:
            line = await self.stdin.readline()
            if not line:
                raise StopAsyncIteration
            refusal = self._refusal(line)
            if refusal is None:
                return line
            await self.stdout.write(json.dumps(refusal) + "\n")
            await self.stdout.flush()

    def _refusal(self, line: str) -> dict[str, Any] | None:
        try:
            message = json.loads(line)
        except ValueError:
            return None
        if not isinstance(message, dict) or "method" not in message or "id" not in message:
            return None
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        modern = isinstance(meta, dict) and MODERN_KEY in meta and message["method"] != "initialize"
        if self.era == "legacy" and modern:
            error = {"code": -32601, "message": "Method not found"}
        elif self.era == "modern" and not modern:
            requested = params.get("protocolVersion") if isinstance(params, dict) else None
            error = {
                "code": -32022,
                "message": "This server serves only protocol version 2026-07-28",
                "data": {"supported": ["2026-07-28"], "requested": requested},
            }
        else:
            return None
        return {"jsonrpc": "2.0", "id": message["id"], "error": error}


async def _serve(era: str) -> None:
    stdout = anyio.wrap_file(io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", line_buffering=True))
    stdin = anyio.wrap_file(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8"))
    if era != "dual":
        stdin = cast("anyio.AsyncFile[str]", _OneEra(era, stdin, stdout))
    # The handshake says what `announce` sends: the tool list changes.
    announced = NotificationOptions(tools_changed=True)
    async with stdio_server(stdin=stdin, stdout=stdout) as (read_stream, write_stream):
        lowlevel = mcp._lowlevel_server
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options(announced))


if __name__ == "__main__":
    # Serves until stdin reaches EOF, then exits with status 0.
    parser = argparse.ArgumentParser(description="A stdio MCP server built with the official SDK, for tests.")
    parser.add_argument("--era", choices=("dual", "legacy", "modern"), default="dual")
    anyio.run(_serve, parser.parse_args().era)
