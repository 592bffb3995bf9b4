"""Incremental decoding of a `text/event-stream` body (the client side of SSE), with a size bound.

This module owns turning bytes from the network into events, as the WHATWG SSE parsing rules
describe: lines end with CRLF, LF or CR (even split across chunks), `data:` lines join with a
newline, comment lines (keep-alives) are skipped, `id:` and `retry:` are recorded, and an event
is dispatched at a blank line. It does no I/O.

Invariant: memory held for one event never exceeds the limit (plus one field name). An event
whose data grows past the limit is dispatched as `oversize` with the head of its data (enough
for the caller to read its JSON-RPC id) and the rest of it is discarded through the blank line
that ends it, so the stream stays aligned on event boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Bytes of an oversized event's data kept, so that the caller can still name the message.
OVERSIZE_HEAD_BYTES: Final = 256
# Room for a field name and its colon on top of the data limit of one line.
_FIELD_SLACK: Final = 16


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event. `data` is empty for a priming event (an id without data)."""

    data: bytes
    event_type: str
    last_event_id: str | None
    retry_ms: int | None
    oversize: bool = False


class SseDecoder:
    """Feed it chunks, get back the events they complete."""

    __slots__ = (
        "_data",
        "_data_lines",
        "_event_type",
        "_last_event_id",
        "_limit",
        "_line",
        "_oversize",
        "_retry_ms",
        "_skip_lf",
        "_skipping_line",
    )

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._line = bytearray()
        self._skipping_line = False  # inside a line longer than the limit
        self._skip_lf = False  # the previous chunk ended with CR: a leading LF belongs to it
        self._data = bytearray()
        self._data_lines = 0
        self._event_type = ""
        self._oversize = False
        self._last_event_id: str | None = None  # persists across events, as the spec says
        self._retry_ms: int | None = None

    @property
    def last_event_id(self) -> str | None:
        return self._last_event_id

    def feed(self, chunk: bytes) -> list[SseEvent]:
        events: list[SseEvent] = []
        start = 0
        size = len(chunk)
        if self._skip_lf and size:
            self._skip_lf = False
            if chunk[0:1] == b"\n":
                start = 1
        while start < size:
            cr = chunk.find(b"\r", start)
            lf = chunk.find(b"\n", start)
            ends = [position for position in (cr, lf) if position >= 0]
            if not ends:
                self._append(chunk[start:], events)
                break
            end = min(ends)
            self._append(chunk[start:end], events)
            self._end_line(events)
            start = end + 1
            if chunk[end : end + 1] == b"\r":
                if start < size:
                    if chunk[start : start + 1] == b"\n":
                        start += 1
                else:
                    self._skip_lf = True
        return events

    def _append(self, part: bytes, events: list[SseEvent]) -> None:
        if self._skipping_line or not part:
            return
        if len(self._line) + len(part) > self._limit + _FIELD_SLACK:
            # Keep what the oversize report needs, drop the rest of this line.
            line = bytes(self._line[: OVERSIZE_HEAD_BYTES + _FIELD_SLACK]) + part[: OVERSIZE_HEAD_BYTES + _FIELD_SLACK]
            if line.startswith(b"data:"):
                self._add_data(_field_value(line[5:])[:OVERSIZE_HEAD_BYTES])
            self._oversize = True
            self._line.clear()
            self._skipping_line = True
            return
        self._line += part

    def _end_line(self, events: list[SseEvent]) -> None:
        if self._skipping_line:
            self._skipping_line = False
            return
        line = bytes(self._line)
        self._line.clear()
        if not line:
            self._dispatch(events)
            return
        if line.startswith(b":"):
            return  # a comment: keep-alive
        name, colon, value = line.partition(b":")
        value = _field_value(value) if colon else b""
        if name == b"data":
            self._add_data(value)
        elif name == b"id":
            if b"\0" not in value:
                self._last_event_id = value.decode("utf-8", "replace")
        elif name == b"event":
            self._event_type = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry_ms = int(value)

    def _add_data(self, value: bytes) -> None:
        if self._oversize:
            return
        extra = len(value) + (1 if self._data_lines else 0)
        if len(self._data) + extra > self._limit:
            room = max(0, OVERSIZE_HEAD_BYTES - len(self._data))
            if self._data_lines and room:
                self._data += b"\n"
            self._data += value[:room]
            del self._data[OVERSIZE_HEAD_BYTES:]
            self._oversize = True
            return
        if self._data_lines:
            self._data += b"\n"
        self._data += value
        self._data_lines += 1

    def _dispatch(self, events: list[SseEvent]) -> None:
        events.append(
            SseEvent(
                data=bytes(self._data),
                event_type=self._event_type,
                last_event_id=self._last_event_id,
                retry_ms=self._retry_ms,
                oversize=self._oversize,
            )
        )
        self._data.clear()
        self._data_lines = 0
        self._event_type = ""
        self._oversize = False
        self._retry_ms = None


def _field_value(value: bytes) -> bytes:
    return value[1:] if value.startswith(b" ") else value
