"""Swapping a message's id in its serialised text, without re-encoding the message."""

from __future__ import annotations

import json

import pytest

from gateway.jsonrpc import leading_id, replace_id

RESULT = b'"result":{"content":[{"type":"text","text":"\\u00e9 \\"id\\":1"}]}'


@pytest.mark.parametrize("client_id", [7, "abc", 'q"uote', "ünï"], ids=["int", "str", "escaped", "unicode"])
@pytest.mark.parametrize("container", [bytes, bytearray])
def test_splices_any_client_id(client_id: int | str, container: type[bytes] | type[bytearray]) -> None:
    line = container(b'{"jsonrpc":"2.0","id":12,' + RESULT + b"}")
    spliced = replace_id(line, 12, client_id)
    assert spliced is not None
    message = json.loads(spliced)
    assert message["id"] == client_id
    assert message["result"] == json.loads(b"{" + RESULT + b"}")["result"]


@pytest.mark.parametrize(
    "line",
    [
        b'{"jsonrpc":"2.0",' + RESULT + b',"id":12}',  # id after the result: not at the head
        b'{"jsonrpc":"2.0","id":13,' + RESULT + b"}",  # another request's id
        b'{"jsonrpc":"2.0","id":12,' + RESULT + b"}\r",  # a CR cannot go into an SSE data line
    ],
    ids=["id-last", "other-id", "carriage-return"],
)
def test_declines_when_the_head_does_not_hold_our_id(line: bytes) -> None:
    assert replace_id(line, 12, "c") is None


def test_whitespace_in_the_head_is_tolerated() -> None:
    spliced = replace_id(b'{ "jsonrpc" : "2.0" , "id" : 12 , "result" : {} }', 12, "x")
    assert spliced is not None
    assert json.loads(spliced) == {"jsonrpc": "2.0", "id": "x", "result": {}}


@pytest.mark.parametrize(
    ("client_id", "text"),
    [
        ('a"b', rb'{"jsonrpc":"2.0","id":"a\"b","method":"ping"}'),
        (-3, b'{"id":-3,"jsonrpc":"2.0","method":"ping"}'),
        ("7", b'{"jsonrpc":"2.0","id":"7","method":"ping"}'),
    ],
    ids=["escaped-quote", "negative", "numeric-string"],
)
def test_request_ids_are_replaced_by_the_gateway_id(client_id: int | str, text: bytes) -> None:
    assert json.loads(text)["id"] == client_id
    spliced = replace_id(text, client_id, 41)
    assert spliced is not None
    assert json.loads(spliced) == {**json.loads(text), "id": 41}


def test_type_must_match_too() -> None:
    assert replace_id(b'{"jsonrpc":"2.0","id":"7","method":"ping"}', 7, 1) is None
    assert replace_id(b'{"jsonrpc":"2.0","id":7,"method":"ping"}', "7", 1) is None


def test_multi_line_text_is_never_spliced() -> None:
    assert replace_id(b'{"jsonrpc":"2.0","id":7,\n"method":"ping"}', 7, 1) is None


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b'{"jsonrpc":"2.0","id":12,"result":{"content":"xxxx', 12),
        (b'{"jsonrpc":"2.0","id":"s-1","result"', "s-1"),
        (b'{"jsonrpc":"2.0","result":{"id":3', None),
        (b"garbage", None),
    ],
)
def test_leading_id(head: bytes, expected: object) -> None:
    assert leading_id(head) == expected
