"""Arbitrary input to a live session never crashes the gateway: every answer is a clear refusal
or a protocol answer, never a 500, and the session keeps working afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ACCEPT_BOTH, LATEST, echo_command

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT = 20.0  # seconds to wait for the "serving" log record
HTTP_TIMEOUT = 10.0


def http_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a POST to the gateway under test (a loopback http URL)."""
    request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 - the test gateway's URL
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310 - the same
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@dataclass
class Served:
    url: str
    headers: dict[str, str]

    def post(self, body: bytes) -> tuple[int, bytes]:
        status, _, answer = http_post(self.url, body, self.headers)
        return status, answer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # The log goes to a file: a pipe nobody drains would block the gateway once full.
    log = tmp_path_factory.mktemp("fuzz") / "gateway.log"
    argv = [sys.executable, "-m", "gateway", "serve", "--port", "0", "--", *echo_command()]
    with log.open("w") as sink:
        gateway = subprocess.Popen(argv, stderr=sink)
    try:
        url = _serving_url(log)
        base = Served(url, {"Content-Type": "application/json", "Accept": ACCEPT_BOTH})
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": LATEST}}
        _, headers, _ = http_post(url, json.dumps(init).encode(), base.headers)
        session = headers["Mcp-Session-Id"]
        yield Served(url, {**base.headers, "Mcp-Session-Id": session, "MCP-Protocol-Version": LATEST})
    finally:
        gateway.terminate()
        gateway.wait(timeout=15)


def _serving_url(log: Path) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if "url" in record:
                return str(record["url"])
        time.sleep(0.05)
    raise AssertionError(f"the gateway never logged its URL:\n{log.read_text()}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
jsonrpc_like = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "1.0", 2]), "method": st.sampled_from(["ping", "tools/list", "x/y", ""])},
    optional={"id": json_values, "params": json_values, "result": json_values, "error": json_values},
)


def _assert_clear_answer(status: int, body: bytes) -> None:
    assert status != 500
    if status in (202, 204):
        assert body == b""
        return
    text = body.decode()
    messages = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")] or [json.loads(text)]
    for message in messages if not isinstance(messages[0], list) else messages[0]:
        assert message["jsonrpc"] == "2.0"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values | jsonrpc_like | st.lists(jsonrpc_like, max_size=3))
def test_any_json_gets_a_clear_answer(served: Served, value: Any) -> None:
    _assert_clear_answer(*served.post(json.dumps(value).encode()))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200))
def test_any_bytes_get_a_clear_answer(served: Served, body: bytes) -> None:
    _assert_clear_answer(*served.post(body))


def test_the_session_still_works_after_the_fuzzing(served: Served) -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "ok"}}}
    status, body = served.post(json.dumps(call).encode())
    assert status == 200
    assert json.loads(body)["result"]["content"][0]["text"] == "ok"
