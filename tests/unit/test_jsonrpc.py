from __future__ import annotations

import re
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


# --- strict decoding: what two parsers could read differently is refused -------------------------

STRICT_REFUSALS = {
    "duplicate-id": (b'{"jsonrpc":"2.0","id":3,"method":"ping","id":3}', "duplicate key 'id'"),
    "duplicate-in-params": (b'{"params":{"name":"a","name":"b"}}', "duplicate key 'name'"),
    "duplicate-deep": (b'{"params":{"a":[{"b":1,"b":2}]}}', "duplicate key 'b'"),
    "duplicate-in-batch": (b'[{"id":1},{"id":1,"id":2}]', "duplicate key 'id'"),
    "case-folded-key": (b'{"method":"ping","Method":"tools/call"}', "differ only in case"),
    "long-s-key": ('{"ſ":1,"s":2}'.encode(), "differ only in case"),
    "kelvin-key": ('{"\u212a":1,"k":2}'.encode(), "differ only in case"),
    "nul-suffixed-key": (b'{"name\\u0000":"a","name":"b"}', "control characters"),
    "integer-beyond-a-double": (b'{"x":1' + b"0" * 308 + b"}", "out of range"),
    "nan": (b'{"x":NaN}', "NaN is not a JSON number"),
    "infinity": (b'{"x":-Infinity}', "-Infinity is not a JSON number"),
    "overflow": (b'{"x":1e400}', "out of range"),
    "overflow-by-digits": (b'{"x":' + b"1" * 400 + b".0}", "out of range"),
    "lone-high-surrogate": (b'{"x":"\\ud800"}', "lone surrogate"),
    "lone-low-surrogate": (b'{"x":"a\\udc00"}', "lone surrogate"),
    "surrogate-in-key": (b'{"\\ud800":1}', "lone surrogate"),
    "encoded-surrogate": ('"\udcff"'.encode("utf-8", "surrogatepass"), "valid UTF-8"),
    "invalid-utf8": (b'"\xff"', "valid UTF-8"),
    "utf16": ('{"a":1}'.encode("utf-16"), "UTF-8"),
    "depth-65": (b"[" * 65 + b"]" * 65, "nested deeper than 64"),
    "depth-65-mixed": (b'{"a":' * 33 + b"[" * 32 + b"1" + b"]" * 32 + b"}" * 33, "nested deeper than 64"),
    "depth-100000": (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64"),
}


@pytest.mark.parametrize(("text", "reason"), STRICT_REFUSALS.values(), ids=STRICT_REFUSALS.keys())
def test_strict_decoding_refuses_what_parsers_disagree_on(text: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        jsonrpc.decode(text)


STRICT_ACCEPTS = {
    "surrogate-pair": (b'{"x":"\\ud83d\\ude00"}', {"x": "\U0001f600"}),
    "escaped-backslash-then-u": (b'{"x":"\\\\ud800"}', {"x": "\\ud800"}),
    "depth-64": (b"[" * 64 + b"]" * 64, None),
    "brackets-in-strings": (b'{"a":"' + b"[" * 200 + b'","b":"\\"[[["}', {"a": "[" * 200, "b": '"[[['}),
    "escaped-quote-before-brackets": (b'{"a":"\\\\","b":' + b"[" * 63 + b"]" * 63 + b"}", None),
    "same-key-in-sibling-objects": (b'[{"id":1},{"id":1}]', [{"id": 1}, {"id": 1}]),
    "underflow-is-zero": (b'{"x":-1e-400}', {"x": -0.0}),
    "big-integer": (b'{"x":' + b"9" * 308 + b"}", {"x": int("9" * 308)}),
    "keys-differing-in-more-than-case": (b'{"name":1,"names":2}', {"name": 1, "names": 2}),
    "max-double": (b'{"x":1.7976931348623157e308}', {"x": 1.7976931348623157e308}),
}


@pytest.mark.parametrize(("text", "expected"), STRICT_ACCEPTS.values(), ids=STRICT_ACCEPTS.keys())
def test_strict_decoding_accepts_standard_json(text: bytes, expected: object) -> None:
    value = jsonrpc.decode(text)
    if expected is not None:
        assert value == expected
