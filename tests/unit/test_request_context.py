"""Incoming request ids and W3C trace context: kept when well formed, replaced or ignored otherwise."""

from __future__ import annotations

import uuid

import pytest

from gateway.request_context import MAX_REQUEST_ID, incoming_id, trace_ids

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize("value", ["r-1", "A.b_c:d/e+f=g@h", "x" * MAX_REQUEST_ID])
def test_safe_ids_are_kept(value: str) -> None:
    assert incoming_id(value) == value


@pytest.mark.parametrize("value", [None, "", "x" * (MAX_REQUEST_ID + 1), "a b", "a\tb", 'a"b', "a\u00e9", "{json}"])
def test_other_ids_are_replaced_with_a_uuid(value: str | None) -> None:
    made = incoming_id(value)
    assert made != value
    assert uuid.UUID(made).version == 4


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"00-{TRACE}-{SPAN}-01", (TRACE, SPAN)),
        (f" 00-{TRACE}-{SPAN}-00 ", (TRACE, SPAN)),
        (f"01-{TRACE}-{SPAN}-01", (TRACE, SPAN)),  # a future version keeps the same leading fields
        (f"ff-{TRACE}-{SPAN}-01", (None, None)),
        (f"00-{'0' * 32}-{SPAN}-01", (None, None)),
        (f"00-{TRACE}-{'0' * 16}-01", (None, None)),
        (f"00-{TRACE.upper()}-{SPAN}-01", (None, None)),
        (f"00-{TRACE}-{SPAN}", (None, None)),
        ("garbage", (None, None)),
        (None, (None, None)),
    ],
)
def test_traceparent(header: str | None, expected: tuple[str | None, str | None]) -> None:
    assert trace_ids(header) == expected
