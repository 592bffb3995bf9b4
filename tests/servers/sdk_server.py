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

from typing import Any

from mcp.server import ServerRequestContext
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    MCPServer,
    UserMessage,
)
from mcp.types import (
    EmptyResult,
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


if __name__ == "__main__":
    # Serves until stdin reaches EOF, then exits with status 0.
    mcp.run("stdio")
