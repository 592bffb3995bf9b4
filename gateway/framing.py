"""Newline framing of a JSON-RPC byte stream (a child's stdout and stderr, `connect`'s stdin), with a
hard per-line size limit.

Invariant: the framer never hands out part of a line as if it were a whole line. A line longer
than the limit is dropped through its terminating newline (however many chunks that takes) and
reported once with its size and first bytes, so the stream stays aligned on message boundaries.
"""

from __future__ import annotations

from collections.abc import Callable

# Bytes of an oversized line kept for the report (enough to name the message it belonged to).
OVERSIZE_HEAD_BYTES = 256

LineHandler = Callable[[bytearray | bytes], None]
OversizeHandler = Callable[[int, bytes], None]


class LineFramer:
    """Splits a byte stream into lines of at most `limit` bytes (newline excluded)."""

    __slots__ = ("_buf", "_discarded", "_discarding", "_head", "_limit", "_on_line", "_on_oversize")

    def __init__(self, limit: int, on_line: LineHandler, on_oversize: OversizeHandler) -> None:
        self._limit = limit
        self._on_line = on_line
        self._on_oversize = on_oversize
        self._buf = bytearray()
        self._discarding = False
        self._discarded = 0
        self._head = b""

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held in memory."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        start = 0
        size = len(data)
        if self._discarding:
            newline = data.find(b"\n")
            missing = OVERSIZE_HEAD_BYTES - len(self._head)
            if missing > 0:  # the report's head spans chunks, like the line itself
                self._head += data[: min(missing, size if newline < 0 else newline)]
            if newline < 0:
                self._discarded += size
                return
            self._discarding = False
            self._on_oversize(self._discarded + newline, self._head)
            start = newline + 1
        limit = self._limit
        while start < size:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            if self._buf:
                line: bytearray | bytes = self._buf
                line += data[start:newline]
                self._buf = bytearray()  # hand the buffer itself out: no copy of large lines
            else:
                line = data[start:newline]
            start = newline + 1
            if len(line) > limit:
                self._on_oversize(len(line), bytes(line[:OVERSIZE_HEAD_BYTES]))
            elif line and not line.isspace():  # blank lines carry nothing; isspace() stops early
                self._on_line(line)
        if start < size:
            held = len(self._buf) + size - start
            if held > limit:
                head = bytes(self._buf[:OVERSIZE_HEAD_BYTES])
                self._head = head + data[start : start + OVERSIZE_HEAD_BYTES - len(head)]
                self._discarding = True
                self._discarded = held
                self._buf = bytearray()
            else:
                self._buf += data[start:]

    def close(self) -> None:
        """End of stream: an unterminated final line is delivered if it fits, reported if not."""
        if self._discarding:
            self._discarding = False
            self._on_oversize(self._discarded, self._head)
        elif self._buf and not self._buf.isspace():
            line, self._buf = self._buf, bytearray()
            self._on_line(line)
