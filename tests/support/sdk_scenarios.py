"""Transport-independent end-to-end scenarios driven by the official SDK client.

Every scenario takes a *client factory*: a callable that accepts ``mcp.Client``
keyword arguments (``sampling_callback=...``, ``message_handler=...``) and
returns an un-entered ``mcp.Client`` connected to ``tests/servers/sdk_server.py``
somehow: directly over stdio, or through the gateway over Streamable HTTP. The
factory decides the transport and the mode (``mode="legacy"``: the initialize
handshake); scenarios only assert protocol behaviour.

Every wait is bounded: each scenario runs under ``anyio.fail_after`` and waits
for asynchronously delivered notifications on events, never on sleeps.
Notification callbacks run in tasks of their own, so a tool's result can reach
the caller before the callbacks for the notifications that preceded it have
run; scenarios therefore wait for the expected notifications after the call.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import anyio
import mcp
from mcp.client.session import ClientRequestContext, ElicitationFnT, IncomingMessage
from mcp.shared.subscriptions import ResourceUpdated, ToolsListChanged
from mcp.types import (
    CallToolResult,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequestFormParams,
    ElicitRequestParams,
    ElicitResult,
    EmptyResult,
    ListRootsResult,
    LoggingMessageNotificationParams,
    ResourceUpdatedNotification,
    Root,
    SubscribeRequest,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    ToolListChangedNotification,
    UnsubscribeRequest,
    UnsubscribeRequestParams,
)
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS

ClientFactory = Callable[..., mcp.Client]
"""Called with ``mcp.Client`` keyword arguments; returns an un-entered client."""

Scenario = Callable[[ClientFactory], Awaitable[None]]

SCENARIO_TIMEOUT = 30.0
"""Upper bound for a whole scenario (spawning the server included)."""

NOTIFICATION_TIMEOUT = 10.0
"""Upper bound for an expected notification to arrive after the call that caused it."""

SERVER_NAME = "sdk-test-server"
SAMPLED_TEXT = "sampled reply from the client"
GREETING_URI = "test://greeting"


def bounded(scenario: Scenario) -> Scenario:
    """Run ``scenario`` under a ``SCENARIO_TIMEOUT`` deadline."""

    @functools.wraps(scenario)
    async def run(make_client: ClientFactory) -> None:
        with anyio.fail_after(SCENARIO_TIMEOUT):
            await scenario(make_client)

    return run


def text_of(result: CallToolResult) -> str:
    """The single text block of a successful tool result."""
    assert not result.is_error, result
    assert len(result.content) == 1, result.content
    block = result.content[0]
    assert isinstance(block, TextContent), block
    return block.text


@bounded
async def scenario_handshake(make_client: ClientFactory) -> None:
    """The initialize handshake negotiates a handshake-era version and relays capabilities."""
    async with make_client() as client:
        assert client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
        assert client.server_info is not None
        assert client.server_info.name == SERVER_NAME
        caps = client.server_capabilities
        assert caps.tools is not None
        assert caps.prompts is not None
        assert caps.logging is not None
        assert caps.resources is not None
        assert caps.resources.subscribe is True


@bounded
async def scenario_tools(make_client: ClientFactory) -> None:
    """tools/list shows every tool; tools/call returns text and structured content."""
    async with make_client() as client:
        listed = await client.list_tools()
        names = {tool.name for tool in listed.tools}
        expected = {"add", "echo", "slow_progress", "log_then_answer", "ask_llm", "ask_user", "touch_resource"}
        assert expected <= names, names
        add_tool = next(tool for tool in listed.tools if tool.name == "add")
        assert set(add_tool.input_schema["properties"]) == {"a", "b"}

        added = await client.call_tool("add", {"a": 2, "b": 3})
        assert text_of(added) == "5"
        assert added.structured_content == {"result": 5}

        echoed = await client.call_tool("echo", {"text": "héllo, wörld"})
        assert text_of(echoed) == "héllo, wörld"

        # An invalid call is a tool error result, not a protocol error.
        bad = await client.call_tool("add", {"a": "two", "b": 3})
        assert bad.is_error


@bounded
async def scenario_resources(make_client: ClientFactory) -> None:
    """resources/list, resources/read, resources/templates/list and a templated read."""
    async with make_client() as client:
        listed = await client.list_resources()
        assert GREETING_URI in {str(resource.uri) for resource in listed.resources}

        read = await client.read_resource(GREETING_URI)
        assert len(read.contents) == 1
        contents = read.contents[0]
        assert isinstance(contents, TextResourceContents)
        assert contents.text == "hello from sdk server"

        templates = await client.list_resource_templates()
        assert "test://items/{item_id}" in {t.uri_template for t in templates.resource_templates}

        item = await client.read_resource("test://items/42")
        item_contents = item.contents[0]
        assert isinstance(item_contents, TextResourceContents)
        assert item_contents.text == "item 42"
        assert str(item_contents.uri) == "test://items/42"


@bounded
async def scenario_prompts(make_client: ClientFactory) -> None:
    """prompts/list and prompts/get."""
    async with make_client() as client:
        listed = await client.list_prompts()
        greet = next(prompt for prompt in listed.prompts if prompt.name == "greet")
        assert [arg.name for arg in greet.arguments or []] == ["name"]

        got = await client.get_prompt("greet", {"name": "Grace"})
        assert len(got.messages) == 1
        message = got.messages[0]
        assert message.role == "user"
        assert isinstance(message.content, TextContent)
        assert "Grace" in message.content.text


@bounded
async def scenario_progress(make_client: ClientFactory, steps: int = 5) -> None:
    """Each ``notifications/progress`` reaches the ``progress_callback`` of ``call_tool``."""
    seen: list[tuple[float, float | None, str | None]] = []
    all_seen = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))
        if len(seen) >= steps:
            all_seen.set()

    async with make_client() as client:
        result = await client.call_tool("slow_progress", {"steps": steps}, progress_callback=on_progress)
        assert text_of(result) == "done"
        with anyio.fail_after(NOTIFICATION_TIMEOUT):
            await all_seen.wait()
    assert len(seen) == steps, seen
    assert sorted(progress for progress, _, _ in seen) == [float(step) for step in range(1, steps + 1)]
    assert {total for _, total, _ in seen} == {float(steps)}


@bounded
async def scenario_logging(make_client: ClientFactory) -> None:
    """A ``notifications/message`` sent during a call reaches ``logging_callback``."""
    received: list[LoggingMessageNotificationParams] = []
    got_one = anyio.Event()

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        received.append(params)
        got_one.set()

    async with make_client(logging_callback=on_log) as client:
        result = await client.call_tool("log_then_answer", {"message": "audit trail"})
        assert text_of(result) == "logged: audit trail"
        with anyio.fail_after(NOTIFICATION_TIMEOUT):
            await got_one.wait()
    assert len(received) == 1, received
    assert received[0].level == "info"
    assert received[0].data == "audit trail"
    assert received[0].logger == SERVER_NAME


@bounded
async def scenario_sampling(make_client: ClientFactory) -> None:
    """A tool's ``sampling/createMessage`` request is answered by ``sampling_callback``."""
    prompts: list[str] = []

    async def sample(context: ClientRequestContext, params: CreateMessageRequestParams) -> CreateMessageResult:
        content = params.messages[0].content
        assert isinstance(content, TextContent), content
        prompts.append(content.text)
        return CreateMessageResult(
            role="assistant",
            content=TextContent(type="text", text=SAMPLED_TEXT),
            model="test-model",
            stop_reason="endTurn",
        )

    async with make_client(sampling_callback=sample) as client:
        result = await client.call_tool("ask_llm", {"prompt": "What is 6 x 7?"})
        assert text_of(result) == SAMPLED_TEXT
    assert prompts == ["What is 6 x 7?"]


def _elicitation_answering(result: ElicitResult, questions: list[str]) -> ElicitationFnT:
    """An ``elicitation_callback`` that checks the form, records its message and answers ``result``."""

    async def elicit(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        assert isinstance(params, ElicitRequestFormParams), params
        assert params.requested_schema["properties"]["name"]["type"] == "string"
        questions.append(params.message)
        return result

    return elicit


@bounded
async def scenario_elicitation(make_client: ClientFactory) -> None:
    """A tool's form-mode ``elicitation/create`` request is answered by ``elicitation_callback``."""
    questions: list[str] = []
    accept = _elicitation_answering(ElicitResult(action="accept", content={"name": "Ada"}), questions)
    async with make_client(elicitation_callback=accept) as client:
        result = await client.call_tool("ask_user", {"question": "Who wrote the first program?"})
        assert text_of(result) == "Ada"
    assert questions == ["Who wrote the first program?"]


@bounded
async def scenario_elicitation_declined(make_client: ClientFactory) -> None:
    """A declined elicitation reaches the tool as the "decline" action."""
    questions: list[str] = []
    decline = _elicitation_answering(ElicitResult(action="decline"), questions)
    async with make_client(elicitation_callback=decline) as client:
        result = await client.call_tool("ask_user", {"question": "Your name?"})
        assert text_of(result) == "decline"
    assert questions == ["Your name?"]


@bounded
async def scenario_resource_subscription(make_client: ClientFactory) -> None:
    """resources/subscribe, then a ``notifications/resources/updated`` reaches ``message_handler``.

    ``Client.subscribe_resource`` / ``unsubscribe_resource`` (and the
    ``ClientSession`` ones) are deprecated in SDK 2.3 and emit
    ``MCPDeprecationWarning`` when called, so the plain typed requests are sent
    through ``ClientSession.send_request``; the wire traffic is identical.
    """
    updated = anyio.Event()
    updated_uris: list[str] = []

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            updated_uris.append(str(message.params.uri))
            if str(message.params.uri) == GREETING_URI:
                updated.set()

    async with make_client(message_handler=on_message) as client:
        resources_caps = client.server_capabilities.resources
        assert resources_caps is not None
        assert resources_caps.subscribe is True

        # Not subscribed yet: the server has nothing to notify.
        before = await client.call_tool("touch_resource", {"uri": GREETING_URI})
        assert text_of(before) == f"not subscribed: {GREETING_URI}"

        await client.session.send_request(
            SubscribeRequest(params=SubscribeRequestParams(uri=GREETING_URI)), EmptyResult
        )
        touched = await client.call_tool("touch_resource", {"uri": GREETING_URI})
        assert text_of(touched) == f"notified: {GREETING_URI}"
        with anyio.fail_after(NOTIFICATION_TIMEOUT):
            await updated.wait()
        assert updated_uris == [GREETING_URI]

        await client.session.send_request(
            UnsubscribeRequest(params=UnsubscribeRequestParams(uri=GREETING_URI)), EmptyResult
        )
        after = await client.call_tool("touch_resource", {"uri": GREETING_URI})
        assert text_of(after) == f"not subscribed: {GREETING_URI}"


ALL_SCENARIOS: tuple[Scenario, ...] = (
    scenario_handshake,
    scenario_tools,
    scenario_resources,
    scenario_prompts,
    scenario_progress,
    scenario_logging,
    scenario_sampling,
    scenario_elicitation,
    scenario_elicitation_declined,
    scenario_resource_subscription,
)
"""Every scenario, for parametrized test modules (one per transport)."""


# --- 2026-07-28 clients -----------------------------------------------------------------------
# The scenarios above that hold in both eras (tools, resources, prompts, progress), and these,
# whose tools ask for input through resolvers: standalone requests to a handshake-era client,
# requests for input (MRTR) to a 2026-07-28 one.


@bounded
async def scenario_modern_logging(make_client: ClientFactory) -> None:
    """A call that set a log level receives the log messages at that level, and no other call does."""
    received: list[LoggingMessageNotificationParams] = []
    got_one = anyio.Event()

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        received.append(params)
        got_one.set()

    async with make_client(logging_callback=on_log) as client:
        quiet = await client.call_tool("log_then_answer", {"message": "unheard"})
        assert text_of(quiet) == "logged: unheard"
    async with make_client(logging_callback=on_log, log_level="info") as client:
        result = await client.call_tool("log_then_answer", {"message": "audit trail"})
        assert text_of(result) == "logged: audit trail"
        with anyio.fail_after(NOTIFICATION_TIMEOUT):
            await got_one.wait()
    assert [(params.level, params.data) for params in received] == [("info", "audit trail")]


@bounded
async def scenario_input_elicitation(make_client: ClientFactory) -> None:
    """A form elicitation the tool needs is answered by ``elicitation_callback``; a decline too."""
    questions: list[str] = []
    accept = _elicitation_answering(ElicitResult(action="accept", content={"name": "Ada"}), questions)
    async with make_client(elicitation_callback=accept) as client:
        result = await client.call_tool("resolved_user", {"question": "Who wrote the first program?"})
        assert text_of(result) == "Ada"
        # Asked again, answered again: every call asks afresh.
        again = await client.call_tool("resolved_user", {"question": "And the second?"})
        assert text_of(again) == "Ada"
    assert questions == ["Who wrote the first program?", "And the second?"]


@bounded
async def scenario_input_sampling(make_client: ClientFactory) -> None:
    """A sampling request the tool needs is answered by ``sampling_callback``."""
    prompts: list[str] = []

    async def sample(context: ClientRequestContext, params: CreateMessageRequestParams) -> CreateMessageResult:
        content = params.messages[0].content
        assert isinstance(content, TextContent), content
        prompts.append(content.text)
        return CreateMessageResult(
            role="assistant", content=TextContent(type="text", text=SAMPLED_TEXT), model="test-model"
        )

    async with make_client(sampling_callback=sample) as client:
        result = await client.call_tool("resolved_llm", {"prompt": "What is 6 x 7?"})
        assert text_of(result) == SAMPLED_TEXT
    assert prompts == ["What is 6 x 7?"]


@bounded
async def scenario_input_roots(make_client: ClientFactory) -> None:
    """A roots request the tool needs is answered by ``list_roots_callback``."""
    asked = 0

    async def roots(context: ClientRequestContext) -> ListRootsResult:
        nonlocal asked
        asked += 1
        return ListRootsResult(roots=[Root(uri=ROOT_URI, name="work")])

    async with make_client(list_roots_callback=roots) as client:
        result = await client.call_tool("resolved_roots", {})
        assert text_of(result) == ROOT_URI
    assert asked == 1


@bounded
async def scenario_listen(make_client: ClientFactory) -> None:
    """A listen stream receives the tool-list change and the resource update that another client of
    the same principal causes, and nothing it did not ask for."""
    async with (
        make_client() as listening,
        listening.listen(tools_list_changed=True, resource_subscriptions=[GREETING_URI]) as sub,
    ):
        assert sub.honored is not None
        assert sub.honored.tools_list_changed is True
        assert sub.honored.resource_subscriptions == [GREETING_URI]
        async with make_client() as other:
            assert text_of(await other.call_tool("announce", {"uri": "test://items/1"})) == "announced: test://items/1"
            assert text_of(await other.call_tool("announce", {"uri": GREETING_URI})) == f"announced: {GREETING_URI}"
        events: list[object] = []
        with anyio.fail_after(NOTIFICATION_TIMEOUT):
            async for event in sub:
                events.append(event)
                if any(isinstance(seen, ResourceUpdated) for seen in events):
                    break
    assert [type(event) for event in events].count(ToolsListChanged) >= 1
    assert [event.uri for event in events if isinstance(event, ResourceUpdated)] == [GREETING_URI]


ROOT_URI = "file:///srv/work"

MODERN_SCENARIOS: tuple[Scenario, ...] = (
    scenario_tools,
    scenario_resources,
    scenario_prompts,
    scenario_progress,
    scenario_modern_logging,
    scenario_input_elicitation,
    scenario_input_sampling,
    scenario_input_roots,
    scenario_listen,
)
"""What a 2026-07-28 client does, against a server of any era."""


# --- handshake-era clients of a server of 2026-07-28 only -----------------------------------


@bounded
async def scenario_legacy_subscription(make_client: ClientFactory) -> None:
    """resources/subscribe, then the tool-list change and the update of the subscribed resource
    that a tool announces reach ``message_handler`` (on the session's standalone stream)."""
    changed, updated = anyio.Event(), anyio.Event()
    updated_uris: list[str] = []

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, ToolListChangedNotification):
            changed.set()
        elif isinstance(message, ResourceUpdatedNotification):
            updated_uris.append(str(message.params.uri))
            updated.set()

    async with make_client(message_handler=on_message) as client:
        await client.session.send_request(
            SubscribeRequest(params=SubscribeRequestParams(uri=GREETING_URI)), EmptyResult
        )
        await client.call_tool("announce", {"uri": "test://items/1"})  # not subscribed: never arrives
        assert text_of(await client.call_tool("announce", {"uri": GREETING_URI})) == f"announced: {GREETING_URI}"
        with anyio.fail_after(NOTIFICATION_TIMEOUT):
            await changed.wait()
            await updated.wait()
    assert updated_uris == [GREETING_URI]


LEGACY_CLIENT_SCENARIOS: tuple[Scenario, ...] = (
    scenario_handshake,
    scenario_tools,
    scenario_resources,
    scenario_prompts,
    scenario_progress,
    scenario_logging,
    scenario_input_elicitation,
    scenario_input_sampling,
    scenario_input_roots,
    scenario_legacy_subscription,
)
"""What a handshake-era client does that a server of any era serves (the tools that ask for
input do it through resolvers, which a 2026-07-28 server can)."""
