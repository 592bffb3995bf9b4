"""The measurements, each written once against `rpc.Session` and run on both sides.

Every function returns raw samples in nanoseconds (`time.perf_counter_ns`); summarising them is
the report's job. None of them bounds its own waits: the caller runs each phase under one
deadline, so a hang anywhere ends the run instead of stalling it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

from tests.bench import rpc
from tests.bench.rpc import JsonObj, Opener, Session

ECHO_TEXT: Final = "hello, gateway"
ECHO_CALL: Final[JsonObj] = {"name": "echo", "arguments": {"text": ECHO_TEXT}}
NS_PER_S: Final = 1_000_000_000


async def setup_time(open_session: Opener) -> int:
    """Time to a usable session (spawn, initialize, initialized); the session is closed after."""
    start = time.perf_counter_ns()
    session = await open_session()
    elapsed = time.perf_counter_ns() - start
    await session.aclose()
    return elapsed


@asynccontextmanager
async def open_sessions(open_session: Opener, count: int, *, parallel: int) -> AsyncIterator[list[Session]]:
    """`count` sessions, opened `parallel` at a time; every one that opened is closed at the end."""
    sessions: list[Session] = []
    slots = asyncio.Semaphore(parallel)

    async def open_one() -> None:
        async with slots:
            sessions.append(await open_session())

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(count):
                group.create_task(open_one())
        yield sessions
    finally:
        await asyncio.gather(*(session.aclose() for session in sessions), return_exceptions=True)


async def echo(session: Session) -> None:
    result = await session.request("tools/call", ECHO_CALL)
    if rpc.tool_text(result) != ECHO_TEXT:
        raise rpc.BenchError(f"echo answered {result}")


async def warm_up(session: Session, calls: int) -> None:
    for _ in range(calls):
        await echo(session)


async def echo_latencies(session: Session, calls: int) -> list[int]:
    """Sequential echo calls on one session: one latency sample per call."""
    samples: list[int] = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        await echo(session)
        samples.append(time.perf_counter_ns() - start)
    return samples


@dataclass(frozen=True, slots=True)
class Throughput:
    calls_per_second: float
    latencies: list[int]

    @classmethod
    def combined(cls, rounds: Sequence[Throughput]) -> Throughput:
        """Equal-length rounds as one measurement: the mean rate, every latency."""
        return cls(
            sum(r.calls_per_second for r in rounds) / len(rounds),
            [latency for r in rounds for latency in r.latencies],
        )


async def throughput(sessions: Sequence[Session], *, warmup: float, duration: float) -> Throughput:
    """One sequential echo caller per session, all at once, for `warmup` + `duration` seconds.

    Calls that start inside the measured window count, with their latencies.
    """
    measure_from = time.perf_counter_ns() + int(warmup * NS_PER_S)
    measure_until = measure_from + int(duration * NS_PER_S)
    latencies: list[int] = []

    async def caller(session: Session) -> None:
        while (start := time.perf_counter_ns()) < measure_until:
            await echo(session)
            if start >= measure_from:
                latencies.append(time.perf_counter_ns() - start)

    async with asyncio.TaskGroup() as group:
        for session in sessions:
            group.create_task(caller(session))
    return Throughput(len(latencies) / duration, latencies)


async def big_result_times(session: Session, size: int, runs: int) -> list[int]:
    """Time from sending `big {size}` to its result fully received and decoded."""
    call: JsonObj = {"name": "big", "arguments": {"size": size}}
    samples: list[int] = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        result = await session.request("tools/call", call)
        samples.append(time.perf_counter_ns() - start)
        if len(rpc.tool_text(result)) != size:
            raise rpc.BenchError(f"big {size} answered {len(rpc.tool_text(result))} characters")
    return samples
