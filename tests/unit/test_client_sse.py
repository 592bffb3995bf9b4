"""The SSE decoder: the WHATWG parsing rules, any chunking, and a hard bound per event."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.client.sse import OVERSIZE_HEAD_BYTES, SseDecoder, SseEvent

LIMIT = 64


def decode(stream: bytes, cuts: list[int] | None = None, limit: int = LIMIT) -> list[SseEvent]:
    decoder = SseDecoder(limit)
    points = sorted({cut % (len(stream) + 1) for cut in cuts or []} | {0, len(stream)})
    events: list[SseEvent] = []
    for start, end in itertools.pairwise(points):
        events.extend(decoder.feed(stream[start:end]))
    return events


def data_of(events: list[SseEvent]) -> list[bytes]:
    return [event.data for event in events if event.data]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: a\n\n", [b"a"]),
        (b"data:a\n\n", [b"a"]),
        (b"data:  a\n\n", [b" a"]),  # only one leading space is removed
        (b"data: a\ndata: b\n\n", [b"a\nb"]),
        (b"data: a\r\n\r\ndata: b\r\rdata: c\n\n", [b"a", b"b", b"c"]),
        (b": keep-alive\n\ndata: x\n: inside\n\n", [b"x"]),
        (b"data: x\n", []),  # not dispatched until the blank line
        (b"event: other\ndata: x\n\n", [b"x"]),
        (b"data\n\n", []),  # a field without a colon has an empty value
    ],
    ids=["space", "no-space", "two-spaces", "multi-line", "crlf-and-cr", "comments", "unfinished", "event", "bare"],
)
def test_parsing_rules(stream: bytes, expected: list[bytes]) -> None:
    assert data_of(decode(stream)) == expected


def test_ids_persist_and_priming_events_carry_them() -> None:
    events = decode(b"id: 1.0\ndata:\n\ndata: a\n\nid: 1.2\nretry: 250\ndata: b\n\n")
    assert [(e.data, e.last_event_id, e.retry_ms) for e in events] == [
        (b"", "1.0", None),
        (b"a", "1.0", None),
        (b"b", "1.2", 250),
    ]


def test_event_type_is_reported() -> None:
    (event,) = decode(b"event: endpoint\ndata: /x\n\n")
    assert event.event_type == "endpoint"


stream_events = st.lists(st.text(alphabet='ab{}":', max_size=30), max_size=8)


@settings(max_examples=300, deadline=None)
@given(stream_events, st.lists(st.integers(min_value=0), max_size=20), st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_any_chunking_and_line_ending_yields_the_same_events(data: list[str], cuts: list[int], eol: bytes) -> None:
    stream = b"".join(b": ping" + eol + b"data: " + item.encode() + eol + eol for item in data)
    events = decode(stream, cuts)
    assert [event.data for event in events] == [item.encode() for item in data]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=LIMIT + 1, max_value=LIMIT * 40), st.lists(st.integers(min_value=0), max_size=30))
def test_an_oversized_event_is_reported_once_and_the_stream_stays_aligned(size: int, cuts: list[int]) -> None:
    big = b'{"id":7,' + b"x" * size + b"}"
    stream = b"data: " + big + b"\n\ndata: ok\n\n"
    events = decode(stream, cuts)
    assert [(event.oversize, event.data if not event.oversize else None) for event in events] == [
        (True, None),
        (False, b"ok"),
    ]
    assert events[0].data == big[: len(events[0].data)]
    assert events[0].data.startswith(b'{"id":7,')
    assert len(events[0].data) <= OVERSIZE_HEAD_BYTES


def test_many_small_data_lines_adding_up_past_the_limit_are_oversize() -> None:
    stream = b"".join(b"data: " + b"y" * 10 + b"\n" for _ in range(20)) + b"\ndata: ok\n\n"
    events = decode(stream)
    assert [event.oversize for event in events] == [True, False]
    assert events[1].data == b"ok"
