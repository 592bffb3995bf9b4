from __future__ import annotations

from typing import Any

import pytest

from gateway import jsonrpc
from gateway.jsonrpc import Kind


@pytest.mark.parametrize(
    ("value", "kind", "method", "msg_id"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "ping"}, Kind.REQUEST, "ping", 1),
        ({"jsonrpc": "2.0", "id": "a", "method": "x", "params": {}}, Kind.REQUEST, "x", "a"),
        (
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            Kind.NOTIFICATION,
            "notifications/initialized",
            None,
        ),
        ({"jsonrpc": "2.0", "id": 7, "result": {}}, Kind.RESPONSE, None, 7),
        ({"jsonrpc": "2.0", "id": "s", "error": {"code": -1, "message": "m"}}, Kind.RESPONSE, None, "s"),
        ({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse"}}, Kind.RESPONSE, None, None),
    ],
    ids=["request", "request-str-id", "notification", "result", "error", "error-null-id"],
)
def test_classifies_valid_messages(value: dict[str, Any], kind: Kind, method: str | None, msg_id: object) -> None:
    message = jsonrpc.classify(value)
    assert (message.kind, message.method, message.id) == (kind, method, msg_id)
    assert message.body is value


@pytest.mark.parametrize(
    "value",
    [
        [],
        "text",
        {"id": 1, "method": "ping"},
        {"jsonrpc": "1.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1, "method": ""},
        {"jsonrpc": "2.0", "id": 1, "method": 5},
        {"jsonrpc": "2.0", "id": 1.5, "method": "ping"},
        {"jsonrpc": "2.0", "id": True, "method": "ping"},
        {"jsonrpc": "2.0", "id": [1], "method": "ping"},
        {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": "x"},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "m"}},
        {"jsonrpc": "2.0", "id": None, "result": {}},
        {"jsonrpc": "2.0", "id": 1, "error": {"code": "x", "message": "m"}},
        {"jsonrpc": "2.0", "id": 1, "error": {"code": 1}},
    ],
    ids=[
        "array",
        "string",
        "no-version",
        "wrong-version",
        "empty-method",
        "numeric-method",
        "float-id",
        "bool-id",
        "list-id",
        "string-params",
        "nothing",
        "result-and-error",
        "result-null-id",
        "error-code-type",
        "error-no-message",
    ],
)
def test_rejects_invalid_shapes(value: object) -> None:
    with pytest.raises(jsonrpc.InvalidMessage):
        jsonrpc.classify(value)


def test_encoding_is_one_compact_line() -> None:
    line = jsonrpc.encode({"jsonrpc": "2.0", "method": "m", "params": {"text": "a\nb", "ü": "ß"}})
    assert b"\n" not in line
    assert line == '{"jsonrpc":"2.0","method":"m","params":{"text":"a\\nb","ü":"ß"}}'.encode()


def test_error_response_shape() -> None:
    assert jsonrpc.error_response(None, jsonrpc.PARSE_ERROR, "bad") == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "bad"},
    }
    assert jsonrpc.error_response(3, -1, "m", {"k": 1})["error"]["data"] == {"k": 1}
