"""Property-based fuzzing of everything a client and a child can send, against a live gateway
process and a live session.

For every generated input: never a 5xx; every answer a clear refusal or a protocol answer; no
request outlives its deadline (the HTTP timeout is the request timeout plus a margin); no pending
entry is left behind (`mcp_gateway_requests_in_flight` back to 0); the session still answers a
ping. After all of it, the gateway's log holds no traceback and no error record.

The client surface: bodies (any JSON, JSON-RPC-shaped envelopes with repeated keys, odd numbers
and strings, deep nesting, batches, raw bytes), headers (Content-Type, Accept, protocol version,
Content-Encoding, Origin) and `Last-Event-ID`; 2026-07-28 requests on no session (their `_meta`
envelope, routing headers and request states of every shape). The child surface: stdout lines of the same kinds,
written by the echo server's `raw` tool in one chunk ahead of its real answer.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.mcp import ACCEPT_BOTH, LATEST, parse_sse
from tests.support.servers import echo_command
from tests.support.settings import CHILD_ISOLATION

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT = 20.0  # seconds to wait for the "serving" log record
REQUEST_TIMEOUT = 4.0  # the gateway's request_timeout while fuzzing: a hang shows up fast
HTTP_TIMEOUT = REQUEST_TIMEOUT + 6.0  # an answer later than this is a hang past the deadline
IN_FLIGHT = re.compile(rb"^mcp_gateway_requests_in_flight (\S+)$", re.MULTILINE)


def http(url: str, body: bytes | None, headers: dict[str, str], method: str = "POST") -> tuple[int, bytes]:
    """(status, body) of one request to the gateway under test (a loopback http URL)."""
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310 - the test gateway
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310 - the same
            if response.headers.get("Content-Type", "").startswith("text/event-stream") and method == "GET":
                return response.status, b""  # a live stream: its status is the answer
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass
class Served:
    url: str
    log: Path
    headers: dict[str, str] = field(default_factory=dict)

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        return http(self.url, body, {**self.headers, **(headers or {})})

    def in_flight(self) -> float:
        _, text = http(self.url.removesuffix("/mcp") + "/metrics", None, {}, method="GET")
        match = IN_FLIGHT.search(text)
        assert match is not None, text[:500]
        return float(match.group(1))

    def assert_healthy(self) -> None:
        """Nothing left pending (answers are delivered before the response ends, so no wait is
        needed) and the session still answers."""
        assert self.in_flight() == 0
        status, body = self.post(b'{"jsonrpc":"2.0","id":"health","method":"ping"}')
        assert (status, json.loads(body)["result"]) == (200, {}), body


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # The log goes to a file: a pipe nobody drains would block the gateway once full.
    log = tmp_path_factory.mktemp("fuzz") / "gateway.log"
    argv = [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--port",
        "0",
        "--request-timeout",
        str(REQUEST_TIMEOUT),
        "--stdout-violation-limit",
        "1000000",  # the child fuzzer sends bad lines on purpose: the session must outlive them
        "--ratelimit-requests-ip",
        "",
        "--ratelimit-public-ip",
        "",  # /metrics is read after every example
        "--child-isolation",
        CHILD_ISOLATION,
        "--",
        *echo_command(),
    ]
    with log.open("w") as sink:
        gateway = subprocess.Popen(argv, stderr=sink, stdout=subprocess.DEVNULL)
    try:
        url = _serving_url(log)
        base = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH}
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": LATEST}}
        request = urllib.request.Request(url, data=json.dumps(init).encode(), headers=base)  # noqa: S310
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310
            session = response.headers["Mcp-Session-Id"]
        yield Served(url, log, {**base, "Mcp-Session-Id": session, "MCP-Protocol-Version": LATEST})
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    errors = [record for record in records if record.get("level") in ("error", "critical") or "exc_info" in record]
    assert not errors, f"the gateway logged errors while fuzzed: {errors[:3]}"
    assert "Traceback" not in log.read_text()


def _serving_url(log: Path) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if "url" in record:
                return str(record["url"])
        time.sleep(0.05)
    raise AssertionError(f"the gateway never logged its URL:\n{log.read_text()}")


# --- generators of JSON text (not values: repeated keys and non-standard numbers must be expressible)

ODD_SCALARS = [
    "null", "true", "false", "0", "-0", "1.5", "-1e-400", "1e308", "1e400", "-1e400", "NaN", "Infinity",
    "-Infinity", "12345678901234567890123456789", "9" * 5000, '"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude00"',
    '"\\u0000"', '"\\\\ud800"', '"ok"', '""', '"\\n\\r"', '"\u00b2"',
]  # fmt: skip
KEYS = ["jsonrpc", "id", "method", "params", "result", "error", "name", "arguments", "_meta", "progressToken", "x"]
METHODS = [
    "ping", "tools/list", "tools/call", "resources/list", "prompts/list", "notifications/cancelled",
    "notifications/progress", "notifications/initialized", "initialize", "x/y", "", "logging/setLevel",
]  # fmt: skip
TOOLS = ["echo", "no_such_tool", "progress", "log", "notify", "big", 7]

scalar_text = (
    st.sampled_from(ODD_SCALARS)
    | st.integers().map(str)
    | st.floats(allow_nan=False, allow_infinity=False).map(json.dumps)
    | st.text(max_size=12).map(json.dumps)
)


def _object(members: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in members) + "}"


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _member(value: object) -> str:
    if isinstance(value, dict):
        return _object(list(value.items()))
    assert isinstance(value, str)
    return value


value_text = st.recursive(
    scalar_text,
    lambda children: (
        st.lists(children, max_size=4).map(_array)
        | st.lists(st.tuples(st.sampled_from(KEYS), children), max_size=4).map(_object)
    ),
    max_leaves=10,
) | st.integers(min_value=60, max_value=3000).map(lambda depth: "[" * depth + "]" * depth)

params_text = st.one_of(
    value_text,
    st.fixed_dictionaries(
        {"name": st.sampled_from(TOOLS).map(json.dumps)},
        optional={
            "arguments": st.fixed_dictionaries(
                {}, optional={"text": scalar_text, "size": st.integers(0, 100).map(str)}
            ),
            "_meta": st.fixed_dictionaries({}, optional={"progressToken": scalar_text}),
            "requestId": scalar_text,
        },
    ).map(lambda members: _object([(key, _member(value)) for key, value in members.items()])),
)
member_text = {
    "jsonrpc": st.sampled_from(['"2.0"', '"2.0"', '"1.0"', "2", "null"]),
    "id": st.integers(-(2**63), 2**63).map(str) | scalar_text,
    "method": st.sampled_from(METHODS).map(json.dumps) | scalar_text,
    "params": params_text,
    "result": value_text,
    "error": value_text,
}
envelope_text = st.lists(
    st.sampled_from(list(member_text)).flatmap(lambda key: member_text[key].map(lambda value: (key, value))),
    min_size=1,
    max_size=7,
).map(_object)  # keys repeat whenever the draw repeats them
body_text = (
    envelope_text
    | st.lists(envelope_text, max_size=4).map(_array)
    | value_text
    | st.lists(st.sampled_from(["{", "}", "[", "]", ",", ":", '"', "1", "\\", " "]), max_size=30).map("".join)
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(["application/json", "text/plain", "application/json; charset=utf-8", ""]),
        "Accept": st.sampled_from(["application/json", "text/event-stream", "*/*", "text/html", ""]),
        "MCP-Protocol-Version": st.sampled_from(["2025-03-26", "2025-06-18", "2026-07-28", "bogus", ""]),
        "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity"]),
        "Origin": st.sampled_from(["http://localhost:3000", "https://evil.example", "null"]),
    },
)


def _assert_clear_answer(status: int, body: bytes) -> None:
    assert status < 500, body
    if status in (202, 204) or not body:
        assert body == b""
        return
    text = body.decode()
    events = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    decoded = [json.loads(event) for event in events if event] if events else [json.loads(text)]
    for item in decoded:
        for message in item if isinstance(item, list) else [item]:
            assert message["jsonrpc"] == "2.0"
            assert ("result" in message) != ("error" in message) or "method" in message


FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=body_text, extra=headers)
def test_any_body_and_headers_get_a_clear_answer_and_leave_nothing_behind(
    served: Served, body: str, extra: dict[str, str]
) -> None:
    _assert_clear_answer(*served.post(body.encode("utf-8", "surrogatepass"), extra))
    served.assert_healthy()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300))
def test_any_bytes_get_a_clear_answer(served: Served, body: bytes) -> None:
    _assert_clear_answer(*served.post(body))
    served.assert_healthy()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    last_event_id=st.text(max_size=30)
    | st.builds(lambda a, b: f"{a}.{b}", st.integers(-5, 10**30), st.integers(-5, 10**30))
    | st.sampled_from(["\u00b2.1", "1" * 5000 + ".1", "0.0", "0.1", "1.1", ".", "0."])
)
def test_any_last_event_id_gets_a_clear_answer(served: Served, last_event_id: str) -> None:
    try:
        value = last_event_id.encode("latin-1").decode("latin-1")
    except UnicodeEncodeError:
        value = last_event_id.encode("utf-8").decode("latin-1")  # what reaches the wire for non-Latin-1 text
    value = value.replace("\r", "").replace("\n", "")
    headers = {**served.headers, "Accept": "text/event-stream", "Last-Event-ID": value}
    status, _ = http(served.url, None, headers, method="GET")
    assert status < 500
    served.assert_healthy()


# --- 2026-07-28 requests (no session) ---------------------------------------------------------------

MODERN_METHODS = ["tools/list", "tools/call", "server/discover", "resources/read", "prompts/get", "ping", "x/y"]
meta_text = st.fixed_dictionaries(
    {
        "io.modelcontextprotocol/protocolVersion": st.sampled_from(['"2026-07-28"', '"2026-07-28"', '"2025-11-25"'])
        | scalar_text
    },
    optional={
        "io.modelcontextprotocol/clientCapabilities": st.just("{}") | value_text,
        "io.modelcontextprotocol/clientInfo": value_text,
        "io.modelcontextprotocol/logLevel": st.sampled_from(['"debug"', '"error"', '"loud"']) | scalar_text,
        "progressToken": scalar_text,
    },
).map(lambda members: _object(list(members.items())))
modern_params = st.fixed_dictionaries(
    {"_meta": meta_text},
    optional={
        "name": st.sampled_from(TOOLS).map(json.dumps),
        "uri": st.sampled_from(['"test://x"', '"\u00e9"']) | scalar_text,
        "arguments": st.just('{"text":"t"}') | value_text,
        "requestState": st.sampled_from(['"mcpgw1.e30.AAAA"', '"mcpgw1."', '"opaque"']) | scalar_text,
        "inputResponses": value_text,
    },
).map(lambda members: _object(list(members.items())))
modern_body = st.fixed_dictionaries(
    {"jsonrpc": st.just('"2.0"'), "method": st.sampled_from(MODERN_METHODS).map(json.dumps), "params": modern_params},
    optional={"id": st.integers(-(2**63), 2**63).map(str) | scalar_text},
).map(lambda members: _object(list(members.items())))
routing = st.fixed_dictionaries(
    {},
    optional={
        "MCP-Protocol-Version": st.sampled_from(["2026-07-28", "2026-07-28", "2025-11-25", "bogus"]),
        "Mcp-Method": st.sampled_from([*MODERN_METHODS, ""]),
        "Mcp-Name": st.sampled_from(["echo", "=?base64?ZWNobw==?=", "=?base64?ZWNobx==?=", "=?base64?!?=", ""]),
        "Mcp-Session-Id": st.sampled_from(["nope", ""]),
        "Last-Event-ID": st.sampled_from(["1.1", "x"]),
    },
)


@FUZZ
@given(body=modern_body, extra=routing)
def test_any_modern_request_gets_a_clear_answer_and_leaves_nothing_behind(
    served: Served, body: str, extra: dict[str, str]
) -> None:
    """Envelopes, routing headers and request states of every shape, on no session: a clear answer,
    never a session id, nothing pending after it."""
    headers = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH, **extra}
    status, answer = http(served.url, body.encode("utf-8", "surrogatepass"), headers)
    _assert_clear_answer(status, answer)
    served.assert_healthy()


# --- the child's stdout ---------------------------------------------------------------------------

child_id = st.sampled_from(["{id}", "{id}", '"{id}"', "7", '"srv-1"', "null"])
child_member = {
    "jsonrpc": st.sampled_from(['"2.0"', '"2.0"', "1"]),
    "id": child_id | scalar_text,
    "method": st.sampled_from(["notifications/message", "notifications/progress", "sampling/createMessage", "x"]).map(
        json.dumps
    ),
    "params": params_text,
    "result": value_text,
    "error": value_text | st.just('{"code":-1,"message":"m"}'),
}
child_line = (
    st.lists(
        st.sampled_from(list(child_member)).flatmap(lambda key: child_member[key].map(lambda value: (key, value))),
        min_size=1,
        max_size=6,
    ).map(_object)
    | value_text
    | st.text(max_size=40)
)


@FUZZ
@given(lines=st.lists(child_line, min_size=1, max_size=4))
def test_any_child_output_answers_its_request_and_leaves_nothing_behind(served: Served, lines: list[str]) -> None:
    """The echo server writes the lines (its request's id wherever a line says {id}) in one chunk,
    then its real answer: the request gets exactly one answer in time, usable or an error."""
    call = {
        "jsonrpc": "2.0",
        "id": "fuzz",
        "method": "tools/call",
        "params": {"name": "raw", "arguments": {"lines": [line.replace("\n", " ") for line in lines]}},
    }
    status, body = served.post(json.dumps(call).encode())
    _assert_clear_answer(status, body)
    assert status == 200
    text = body.decode()
    events = [data for _, data in parse_sse(text)] if body.startswith((b"id:", b":")) else [text]
    answers = [message for message in map(json.loads, events) if message.get("id") == "fuzz"]
    assert len(answers) == 1, events
    served.assert_healthy()
