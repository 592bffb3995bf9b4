"""The measurements, each written once against `rpc.Session` and run on every side: the
gateway's legacy sessions, its 2026-07-28 clients, and the floor.

Every function returns raw samples in nanoseconds (`time.perf_counter_ns`), CPU time in the
clock ticks /proc counts; summarising them is the report's job. None of them bounds its own
waits: the caller runs each phase under one deadline, so a hang anywhere ends the run instead
of stalling it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

from tests.bench import rpc
from tests.bench.rpc import JsonObj, Opener, Session

ECHO_TEXT: Final = "hello, gateway"
ECHO_CALL: Final[JsonObj] = {"name": "echo", "arguments": {"text": ECHO_TEXT}}
NS_PER_S: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Lifetime:
    """One session's two costs outside its calls."""

    setup: int  # to a usable session: spawn, initialize, initialized
    end: int  # to its end: through the gateway, DELETE answered once its child is stopped and cleaned up


async def lifetime(open_session: Opener) -> Lifetime:
    """Open a session and close it at once, timing each."""
    start = time.perf_counter_ns()
    session = await open_session()
    opened = time.perf_counter_ns()
    await session.aclose()
    return Lifetime(opened - start, time.perf_counter_ns() - opened)


async def alternating_lifetimes(openers: Sequence[Opener], samples: int) -> list[list[Lifetime]]:
    """`samples` lifetimes per opener after one warm-up each (first spawn, first imports),
    alternating between the openers so that a slow spell on the machine hits all alike."""
    for open_session in openers:
        await lifetime(open_session)
    measured: list[list[Lifetime]] = [[] for _ in openers]
    for _ in range(samples):
        for open_session, lifetimes in zip(openers, measured, strict=True):
            lifetimes.append(await lifetime(open_session))
    return measured


@asynccontextmanager
async def open_sessions(openers: Sequence[Opener], *, parallel: int) -> AsyncIterator[list[Session]]:
    """One session per opener, in their order, opened `parallel` at a time; every one that
    opened is closed at the end, however the block ends."""
    opened: dict[int, Session] = {}
    slots = asyncio.Semaphore(parallel)

    async def open_one(index: int, open_session: Opener) -> None:
        async with slots:
            opened[index] = await open_session()

    try:
        async with asyncio.TaskGroup() as group:
            for index, open_session in enumerate(openers):
                group.create_task(open_one(index, open_session))
        yield [opened[index] for index in range(len(openers))]
    finally:
        await asyncio.gather(*(session.aclose() for session in opened.values()), return_exceptions=True)


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


@dataclass(slots=True)
class EchoSide:
    """One session of an alternating echo measurement, and what was measured on it."""

    session: Session
    # The CPU time of the process serving the session, in clock ticks (None: not measured).
    cpu_ticks: Callable[[], int] | None = None
    latencies: list[int] = field(default_factory=list)
    ticks: int = 0  # CPU time spent across this side's measured calls


async def alternating_echo(sides: Sequence[EchoSide], calls: int, *, warmup: int, rounds: int) -> None:
    """`calls` sequential echo calls per side after `warmup` unmeasured ones, alternating between
    the sides in `rounds` rounds; each side's CPU clock is read around its own rounds."""
    for side in sides:
        await warm_up(side.session, warmup)
    for _ in range(rounds):
        for side in sides:
            before = side.cpu_ticks() if side.cpu_ticks is not None else 0
            side.latencies += await echo_latencies(side.session, calls // rounds)
            if side.cpu_ticks is not None:
                side.ticks += side.cpu_ticks() - before


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
