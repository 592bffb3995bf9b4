"""The floor: the echo server driven directly over its stdin/stdout pipes by the benchmark.

A pipe session does what a gateway client does on its side (encode a compact request, read the
answer, decode it) and nothing more, so gateway / floor is the cost the gateway adds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Final

from tests.bench import rpc
from tests.bench.rpc import JsonObj

# Longest response line read back: the 32 MiB result, its JSON envelope, and room to spare
# (the stream buffers up to twice this before it stops reading the pipe).
LINE_LIMIT: Final = 64 * 1024 * 1024
# The echo server exits as soon as its stdin reaches end of file; past this it is killed.
EXIT_TIMEOUT: Final = 5.0


class PipeSession:
    """An initialized session with one echo server process of our own."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        if process.stdin is None or process.stdout is None:  # pragma: no cover - both are PIPE
            raise RuntimeError("the echo server needs stdin and stdout pipes")
        self._process = process
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._last_id = 0

    @classmethod
    async def open(cls, argv: Sequence[str]) -> PipeSession:
        """Spawn the server and do the initialize exchange."""
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT
        )
        session = cls(process)
        try:
            await session.request("initialize", rpc.INITIALIZE_PARAMS)
            session._stdin.write(rpc.encode_notification("notifications/initialized") + b"\n")
            await session._stdin.drain()
        except BaseException:
            await session.aclose()
            raise
        return session

    async def request(self, method: str, params: JsonObj) -> JsonObj:
        self._last_id += 1
        request_id = self._last_id
        self._stdin.write(rpc.encode_request(request_id, method, params) + b"\n")
        await self._stdin.drain()
        while True:
            line = await self._stdout.readline()
            if not line:
                raise rpc.BenchError("the echo server closed its stdout")
            message = json.loads(line)
            if "id" in message:  # notifications are not answers
                return rpc.result_of(message, request_id)

    async def aclose(self) -> None:
        """Close stdin (the server exits on EOF); kill it if it has not exited in time."""
        process = self._process
        self._stdin.close()
        try:
            async with asyncio.timeout(EXIT_TIMEOUT):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            async with asyncio.timeout(EXIT_TIMEOUT):
                await process.wait()
