"""A lean HTTP/1.1 client on asyncio streams, so that the benchmark measures the gateway and not
its own client.

One `HttpConnection` is one keep-alive TCP connection carrying one request at a time. Requests
always carry Content-Length. A response body is read by its Content-Length, by the chunked
transfer coding (how aiohttp sends `text/event-stream`: the body ends with the terminating
chunk), or to the end of the connection. Nothing else of HTTP is here: no pipelining, no 1xx
responses, no redirects, no TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

# What a connection buffers before it stops reading the socket (the stream pauses at twice
# this); it is also the longest response head accepted. Large enough that a 32 MiB body is
# read in a few big steps rather than thousands of pause/resume cycles.
READ_BUFFER: Final = 1024 * 1024
_STATUSES_WITHOUT_BODY: Final = frozenset({204, 304})


class HttpError(Exception):
    """The server sent something this client does not understand, or closed the connection."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names lower-cased
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()


def header_block(headers: Mapping[str, str]) -> bytes:
    """Header fields rendered once, to be sent with every request of a connection."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("latin-1")


def sse_data(body: bytes) -> list[bytes]:
    """The data of each event of a complete `text/event-stream` body (comments and events without
    data, the priming event, skipped)."""
    events: list[bytes] = []
    data: list[bytes] = []
    for line in body.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif not line and data:
            if b"".join(data):
                events.append(b"\n".join(data))
            data = []
    if b"".join(data):
        events.append(b"\n".join(data))
    return events


class HttpConnection:
    """One keep-alive connection; `request` sends a request and reads its whole response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str) -> None:
        self._reader = reader
        self._writer = writer
        self._host = f"Host: {authority}\r\n".encode("latin-1")
        self._reusable = True

    @classmethod
    async def open(cls, host: str, port: int, *, source: str | None = None) -> HttpConnection:
        """Connect to `host`:`port`, from the local address `source` when one is named (any port)."""
        local_addr = (source, 0) if source is not None else None
        reader, writer = await asyncio.open_connection(host, port, limit=READ_BUFFER, local_addr=local_addr)
        return cls(reader, writer, f"{host}:{port}")

    async def request(self, method: str, target: str, headers: bytes = b"", body: bytes = b"") -> Response:
        """`headers` is a `header_block`; Host and Content-Length are added here."""
        if not self._reusable:
            raise HttpError("the connection cannot carry another request")
        self._reusable = False  # until this response has been read to its end
        self._writer.write(
            b"%s %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n%s"
            % (method.encode("ascii"), target.encode("ascii"), self._host, headers, len(body), body)
        )
        await self._writer.drain()
        status, fields = await self._read_head()
        if status < 200 or status in _STATUSES_WITHOUT_BODY:
            content = b""
        elif "content-length" in fields:
            content = await self._read_exactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            content = await self._read_chunked()
        else:
            return Response(status, fields, await self._reader.read())  # delimited by the close
        self._reusable = fields.get("connection", "").lower() != "close"
        return Response(status, fields, content)

    async def aclose(self) -> None:
        self._reusable = False
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def _read_head(self) -> tuple[int, dict[str, str]]:
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            raise HttpError("the server closed the connection before answering") from None
        except asyncio.LimitOverrunError:
            raise HttpError(f"response head longer than {READ_BUFFER} bytes") from None
        status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise HttpError(f"not an HTTP/1.x status line: {status_line!r}")
        fields: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon:
                raise HttpError(f"malformed header line: {line!r}")
            fields[name.strip().lower()] = value.strip()
        return int(rest[:3]), fields

    async def _read_exactly(self, size: int) -> bytes:
        try:
            return await self._reader.readexactly(size)
        except asyncio.IncompleteReadError:
            raise HttpError("the server closed the connection inside a body") from None

    async def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size_line = await self._read_line()
            size = int(size_line.partition(b";")[0], 16)
            if size == 0:
                break
            chunks.append(await self._read_exactly(size))
            if await self._read_exactly(2) != b"\r\n":
                raise HttpError("chunk not followed by CRLF")
        while await self._read_line():  # trailer fields, up to the empty line
            pass
        return b"".join(chunks)

    async def _read_line(self) -> bytes:
        """One CRLF-terminated line, without its CRLF."""
        try:
            return (await self._reader.readuntil(b"\r\n"))[:-2]
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise HttpError("malformed chunked body") from None
