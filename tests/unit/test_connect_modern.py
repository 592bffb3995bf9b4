"""The routing headers of the bridge's 2026-07-28 POSTs, as the server checks them against the body
(`gateway.eras.envelope.check`, the gateway's own check, accepts every one of them)."""

from __future__ import annotations

import pytest

from gateway.client.modern import routing_headers
from gateway.eras import envelope
from gateway.jsonrpc import JsonObject

META: JsonObject = {envelope.PROTOCOL_VERSION_KEY: "2026-07-28", envelope.CLIENT_CAPABILITIES_KEY: {}}

CASES = [
    pytest.param("tools/call", {"name": "add"}, "add", id="a-tool"),
    pytest.param("prompts/get", {"name": "greet"}, "greet", id="a-prompt"),
    pytest.param("resources/read", {"uri": "test://items/42"}, "test://items/42", id="a-resource"),
    pytest.param("tools/call", {"name": "héllo"}, "=?base64?aMOpbGxv?=", id="not-ascii"),
    pytest.param("tools/call", {"name": " padded "}, "=?base64?IHBhZGRlZCA=?=", id="outer-spaces"),
    pytest.param("tools/call", {"name": "=?base64?eA==?="}, "=?base64?PT9iYXNlNjQ/ZUE9PT89?=", id="looks-encoded"),
    pytest.param("tools/list", {}, None, id="names-nothing"),
    pytest.param("server/discover", {"name": "x"}, None, id="a-name-of-no-meaning"),
]


@pytest.mark.parametrize(("method", "params", "name"), CASES)
def test_routing_headers(method: str, params: JsonObject, name: str | None) -> None:
    headers = routing_headers(method, params)
    assert headers[envelope.VERSION_HEADER] == "2026-07-28"
    assert headers[envelope.METHOD_HEADER] == method
    assert headers.get(envelope.NAME_HEADER) == name
    checked = envelope.check(
        method, {**params, "_meta": META}, lambda header: [headers[header]] if header in headers else []
    )
    assert isinstance(checked, envelope.Envelope), checked


def test_a_name_that_is_not_a_string_is_not_mirrored() -> None:
    assert envelope.NAME_HEADER not in routing_headers("tools/call", {"name": 5})
