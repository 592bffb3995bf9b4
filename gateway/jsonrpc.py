"""JSON-RPC 2.0 as MCP uses it: classifying decoded messages, error shapes, compact encoding.

This module owns the question "what kind of message is this?" for both directions and the
error codes the gateway itself emits. It does no I/O. Invariants: every byte a client or a child
sends goes through `decode`, which refuses what two JSON parsers could read differently (repeated
keys, `NaN`, out-of-range numbers, lone surrogates, absurd nesting), so anything the gateway
decides on is what the child will read, and anything it re-encodes can be encoded; and a
`Message` only exists for a value that has a valid JSON-RPC 2.0 shape (a request, a notification
or a response), so the layers above never re-check shapes.
"""

from __future__ import annotations

import enum
import json
import math
import re
from typing import Any, Final, TypeGuard

JsonObject = dict[str, Any]
RequestId = str | int

# Standard JSON-RPC codes.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
# Implementation-defined codes, the same numbers the MCP SDKs use for these conditions.
CONNECTION_CLOSED: Final = -32000
REQUEST_TIMEOUT: Final = -32001
REQUEST_CANCELLED: Final = -32800  # a request its peer cancelled (LSP's code); only ever seen inside the gateway

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode(value: object) -> bytes:
    """Serialise compactly as UTF-8: no embedded newlines, as the stdio framing requires."""
    return _encoder.encode(value).encode()


# Deepest nesting of arrays and objects a message may have. MCP messages in the field nest a
# dozen levels (a JSON Schema inside a tool inside a result); this leaves ample room and keeps
# any re-encoding far from the interpreter's recursion limit.
MAX_DEPTH: Final = 64
# Cheap screens over the text: only a message that trips one is examined the exact way. A lone
# surrogate can only arrive escaped (raw ones are refused by the strict UTF-8 decode).
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89abcdefABCDEF]")
# Control characters, which some parsers drop from keys (see `_unique_members`).
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# Integers of more digits than this may exceed a double (1.8e308): they are out of range.
MAX_INT_DIGITS: Final = 308
# For measuring depth on the text alone (see `_deeper_than`).
_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE: Final = bytes(set(range(256)) - set(b'[]{}"'))


class StrictJsonError(ValueError):
    """Text that is JSON to a lenient parser but that the gateway refuses to act on."""


def _refuse_constant(name: str) -> Any:
    raise StrictJsonError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise StrictJsonError("a number is out of range")
    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise StrictJsonError(f"duplicate key {repeated[:64]!r}")
    # Some parsers match keys loosely (Go's encoding/json ignores case and folds 'ſ' and 'K'; some
    # drop control characters): keys that are one key to such a parser are a repeated key too.
    if len(members) > 1 and len({_folded(key) for key in members}) != len(members):
        raise StrictJsonError("keys that differ only in case or control characters")
    return members


def _folded(key: str) -> str:
    folded = key.casefold()
    return folded if folded.isprintable() else _CONTROL.sub("", folded)


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:  # beyond a double: another parser reads infinity or null
        raise StrictJsonError("a number is out of range")
    return int(text)


_decoder = json.JSONDecoder(
    object_pairs_hook=_unique_members,
    parse_constant=_refuse_constant,
    parse_float=_finite_float,
    parse_int=_bounded_int,
)


def decode(data: bytes | bytearray) -> Any:
    """Parse one untrusted JSON text strictly; `ValueError` (with the reason) when it is refused.

    Refused: anything but UTF-8 (MCP requires it; `json.loads` alone also takes UTF-16, UTF-32, a
    byte-order mark and encoded surrogates), `NaN` and `Infinity`, numbers beyond a double's range,
    lone surrogates, nesting deeper than `MAX_DEPTH`, and a key repeated in any object — exactly,
    or but for case and control characters (two parsers could read different values: the gateway
    deciding on one, the child acting on the other).
    """
    if json.detect_encoding(data) != "utf-8":
        raise ValueError("JSON-RPC messages must be UTF-8 without a byte-order mark")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("JSON-RPC messages must be valid UTF-8") from None
    try:
        value = _decoder.decode(text)
    except RecursionError:
        raise StrictJsonError(f"nested deeper than {MAX_DEPTH} levels") from None
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and _deeper_than(data, MAX_DEPTH):
        raise StrictJsonError(f"nested deeper than {MAX_DEPTH} levels")
    if b"\\u" in data and _SURROGATE_ESCAPE.search(text) is not None:
        try:
            _encoder.encode(value).encode()
        except UnicodeEncodeError:
            raise StrictJsonError("a string holds a lone surrogate") from None
    return value


def _deeper_than(text: bytes | bytearray, limit: int) -> bool:
    """Whether the arrays and objects of valid JSON `text` nest deeper than `limit`.

    Measured on the text at C speed: escaped backslashes and quotes go, then everything but
    brackets (braces become brackets) and quotes, then what lies between quotes (strings); each
    pass of `replace` then removes exactly the innermost level (every adjacent pair is innermost).
    """
    if b"\\" in text:
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = text.translate(_BRACKETS, _NOT_STRUCTURE)
    if b'"' in structure:
        structure = b"".join(structure.split(b'"')[::2])
    for _ in range(limit):
        if not structure:
            return False
        structure = structure.replace(b"[]", b"")
    return bool(structure)


class Kind(enum.Enum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"


class InvalidMessage(ValueError):
    """A decoded JSON value that is not a JSON-RPC 2.0 message."""


class Message:
    """One classified JSON-RPC message; `body` is the decoded object itself, not a copy."""

    __slots__ = ("body", "id", "kind", "method")

    def __init__(self, kind: Kind, body: JsonObject, method: str | None, msg_id: RequestId | None) -> None:
        self.kind = kind
        self.body = body
        self.method = method
        self.id = msg_id

    @property
    def params(self) -> JsonObject:
        params = self.body.get("params")
        return params if isinstance(params, dict) else {}

    def __repr__(self) -> str:
        return f"Message({self.kind.value}, method={self.method!r}, id={self.id!r})"


def is_request_id(value: object) -> TypeGuard[RequestId]:
    """MCP request ids are strings or integers; JSON booleans are not numbers here."""
    return isinstance(value, str | int) and not isinstance(value, bool)


def classify(value: object) -> Message:
    """Classify one decoded JSON value; raise `InvalidMessage` when its shape is wrong."""
    if not isinstance(value, dict):
        raise InvalidMessage("a JSON-RPC message must be a JSON object")
    if value.get("jsonrpc") != "2.0":
        raise InvalidMessage('"jsonrpc" must be "2.0"')
    method = value.get("method")
    if method is not None:
        if not isinstance(method, str) or not method:
            raise InvalidMessage('"method" must be a non-empty string')
        params = value.get("params")
        if params is not None and not isinstance(params, dict | list):
            raise InvalidMessage('"params" must be an object or an array')
        if "id" not in value:
            return Message(Kind.NOTIFICATION, value, method, None)
        msg_id = value["id"]
        if not is_request_id(msg_id):
            raise InvalidMessage('a request "id" must be a string or an integer')
        return Message(Kind.REQUEST, value, method, msg_id)
    if "result" in value or "error" in value:
        if ("result" in value) == ("error" in value):
            raise InvalidMessage('a response carries exactly one of "result" and "error"')
        msg_id = value.get("id")
        # An error answering a message whose id could not be read carries a null id.
        if not (is_request_id(msg_id) or (msg_id is None and "error" in value)):
            raise InvalidMessage('a response "id" must be a string or an integer')
        if "error" in value and not _valid_error(value["error"]):
            raise InvalidMessage('"error" must be an object with an integer "code" and a "message"')
        return Message(Kind.RESPONSE, value, None, msg_id)
    raise InvalidMessage('a JSON-RPC message needs "method", "result" or "error"')


def _valid_error(error: object) -> bool:
    return (
        isinstance(error, dict)
        and isinstance(error.get("code"), int)
        and not isinstance(error.get("code"), bool)
        and isinstance(error.get("message"), str)
    )


def error_response(msg_id: RequestId | None, code: int, message: str, data: Any = None) -> JsonObject:
    """A JSON-RPC error response; `msg_id` None when the request's id could not be read."""
    error: JsonObject = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": msg_id, "error": error}


def notification(method: str, params: JsonObject) -> JsonObject:
    return {"jsonrpc": "2.0", "method": method, "params": params}


# The top-level "id" of a message written first, or right after "jsonrpc" — as the MCP SDKs and
# most serialisers write it. Only the head of the text is examined: the id is at depth one there.
_LEADING_ID = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*(-?\d+|"(?:[^"\\\r\n]|\\.)*")\s*[,}]')


def leading_id(text: bytes | bytearray) -> RequestId | None:
    """The id at the head of a serialised message, if it is written there."""
    match = _LEADING_ID.match(text)
    if match is None:
        return None
    value = json.loads(match.group(1))
    return value if is_request_id(value) else None


def replace_id(text: bytes | bytearray, expected: RequestId | None, replacement: RequestId | None) -> bytes | None:
    """`text` with its top-level id `expected` replaced by `replacement`, without re-encoding it.

    None when the id is not at the head of the text or the text is not one line; the caller then
    encodes the parsed message instead. This keeps large messages from being serialised twice.
    """
    if b"\n" in text or b"\r" in text:
        return None
    match = _LEADING_ID.match(text)
    if match is None:
        return None
    found = json.loads(match.group(1))
    if found != expected or type(found) is not type(expected):
        return None
    start, end = match.span(1)
    view = memoryview(text)
    return b"".join((view[:start], encode(replacement), view[end:]))
