"""The stdout framer never desynchronises, whatever the chunking and however long the lines."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.framing import OVERSIZE_HEAD_BYTES, LineFramer

LIMIT = 32


class Recorder:
    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.oversize: list[tuple[int, bytes]] = []

    def line(self, data: bytearray | bytes) -> None:
        self.lines.append(bytes(data))

    def too_long(self, size: int, head: bytes) -> None:
        self.oversize.append((size, head))


def feed_chunks(stream: bytes, cuts: list[int], limit: int = LIMIT) -> Recorder:
    recorder = Recorder()
    framer = LineFramer(limit, recorder.line, recorder.too_long)
    points = sorted({cut % (len(stream) + 1) for cut in cuts} | {0, len(stream)})
    for start, end in itertools.pairwise(points):
        framer.feed(stream[start:end])
    framer.close()
    return recorder


line_bytes = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"x"))


@settings(max_examples=300, deadline=None)
@given(st.lists(line_bytes, max_size=12), st.lists(st.integers(min_value=0), max_size=20))
def test_any_chunking_yields_the_same_lines(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    got = feed_chunks(stream, cuts)
    visible = [line for line in lines if line and not line.isspace()]
    assert got.lines == [line for line in visible if len(line) <= LIMIT]
    assert [size for size, _ in got.oversize] == [len(line) for line in lines if len(line) > LIMIT]
    for (_, head), line in zip(got.oversize, [line for line in lines if len(line) > LIMIT], strict=True):
        assert head == line[:OVERSIZE_HEAD_BYTES]


def test_oversized_line_split_across_many_chunks_is_dropped_whole() -> None:
    big = b"{" + b"a" * 1000 + b"}"
    got = feed_chunks(big + b"\n" + b'{"ok":1}\n', cuts=list(range(0, 1200, 7)), limit=300)
    assert got.lines == [b'{"ok":1}']
    assert got.oversize == [(len(big), big[:OVERSIZE_HEAD_BYTES])]


def test_unterminated_final_line_is_delivered_at_close() -> None:
    got = feed_chunks(b'{"a":1}\n{"b":2}', cuts=[])
    assert got.lines == [b'{"a":1}', b'{"b":2}']


def test_blank_and_carriage_return_lines() -> None:
    got = feed_chunks(b'\n  \n{"a":1}\r\n', cuts=[3])
    assert got.lines == [b'{"a":1}\r']  # JSON parsing tolerates the trailing CR


def test_oversize_head_is_whole_when_the_line_starts_at_a_chunk_end() -> None:
    line = bytes(range(65, 65 + 45))  # longer than LIMIT, shorter than OVERSIZE_HEAD_BYTES
    stream = b'{"a":1}\n' + line + b"\n"
    got = feed_chunks(stream, cuts=[len(stream) - 12])  # the limit is crossed before the line is whole
    assert got.oversize == [(len(line), line)]
