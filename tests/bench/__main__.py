"""`python -m tests.bench`: run every measurement on the gateway and on the floor, print the report.

The gateway is measured in both protocol eras on the same endpoint: legacy sessions in every
phase, and in the echo and throughput phases 2026-07-28 clients too, alternating with legacy and
the floor in the same rounds. A modern client has no session; without authentication its
principal is its address, so each connects from a loopback address of its own and gets a child
of its own, started by one warm-up request before anything is measured.

Order matters: memory is measured early, on a gateway that has served only the setup samples,
because RSS never shrinks back after the large results of phase 4; the large results come last
of the comparison. The isolation phase comes after it, with a gateway per mode once the
first one and its children are gone. Each phase runs under one deadline, and every gateway and
every echo process are stopped however the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import platform
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from importlib.metadata import version
from typing import Final

from gateway.sessions import bubblewrap, sandbox
from tests.bench import workloads
from tests.bench.floor import PipeSession
from tests.bench.gateway import (
    REPO_ROOT,
    GatewayProcess,
    GatewaySession,
    ModernSession,
    gateway_argv,
    running_gateway,
    running_unprivileged_gateway,
)
from tests.bench.report import MiB, Mode, Results, comparison_table, isolation_table, targets_table
from tests.bench.rpc import Opener
from tests.bench.workloads import EchoSide
from tests.support import isolation as isolation_support
from tests.support.unprivileged import NOBODY
from tests.support.unprivileged import WHY_NOT as UNPRIVILEGED_PROBLEM

ECHO_SERVER: Final = str(REPO_ROOT / "tests" / "servers" / "echo_server.py")
ECHO_ARGV: Final = (sys.executable, ECHO_SERVER)
MAX_MESSAGE_BYTES: Final = 64 * MiB  # the 32 MiB result and its JSON envelope, with room to spare
MAX_SESSIONS: Final = 200  # 100 idle sessions, 32 concurrent ones, and slack for slow closes
SETUP_SAMPLES: Final = 30
ECHO_WARMUP_CALLS: Final = 200
ECHO_CALLS: Final = 2000
ECHO_ROUNDS: Final = 4  # the measured calls alternate between the sides in this many rounds
CONCURRENCY_LEVELS: Final = (1, 8, 32)
THROUGHPUT_WARMUP: Final = 0.5  # seconds of calls before each measured window
THROUGHPUT_DURATION: Final = 2.0  # seconds measured per round and side
# Rounds alternate between the sides, so a slow spell on the machine hits both alike.
THROUGHPUT_ROUNDS: Final = 3
BIG_SIZES: Final = (2 * MiB, 8 * MiB, 32 * MiB)
BIG_RUNS: Final = 5
IDLE_SESSIONS: Final = 100
# Source addresses of the 2026-07-28 clients, one anonymous principal (and so one child) each:
# one for phase 2, one per caller of phase 3, none of them the legacy sessions' 127.0.0.1.
MODERN_ECHO_ADDRESS: Final = "127.0.0.2"
MODERN_CALLER_ADDRESSES: Final = tuple(f"127.0.0.{3 + n}" for n in range(max(CONCURRENCY_LEVELS)))
# Sessions opened at once: enough to keep both CPUs busy spawning, not a thundering herd.
SPAWN_PARALLEL: Final = 8
# Pause between the last idle session opening and reading VmRSS, so that nothing is mid-flight.
MEMORY_SETTLE: Final = 1.0
# The slowest phase (3: three sides, each level, each round) needs about 75 s on the 2-core
# machine; one that takes this long has hung.
PHASE_TIMEOUT: Final = 120.0
EXIT_TERMINATED: Final = 128 + signal.SIGTERM
# Phase 7. A child of another user must be able to run the server: the virtualenv's interpreter
# may sit in a directory only its owner can enter, the system one (the echo server needs only the
# standard library) does not. Every mode runs it, so they differ in the isolation alone.
ISOLATION_PYTHON: Final = "/usr/bin/python3"
ISOLATION_ECHO_ARGV: Final = (ISOLATION_PYTHON, ECHO_SERVER)
# A range of its own, away from the default one other gateways on the host may be using.
ISOLATION_UID_RANGE: Final = "1000500000-1000500999"
# Sessions come one at a time (DELETE answers once the child's user is released), one echo
# session per mode: a few places are plenty.
ISOLATION_MAX_SESSIONS: Final = 8
ISOLATION_ECHO_CALLS: Final = 1000
# Every mode the host allows is measured, `none` (the baseline of the ratios) last.
ISOLATION_MODES: Final[tuple[sandbox.IsolationMode, ...]] = ("uid", "namespaces", "uid+namespaces", "none")


async def measure_setup(results: Results, open_gateway: Opener, open_floor: Opener) -> None:
    """Samples alternate between the sides, so a slow spell on the machine hits both alike."""
    on_gateway, on_floor = await workloads.alternating_lifetimes((open_gateway, open_floor), SETUP_SAMPLES)
    results.legacy.setup = [sample.setup for sample in on_gateway]
    results.floor.setup = [sample.setup for sample in on_floor]


async def measure_idle_memory(results: Results, gateway: GatewayProcess, open_gateway: Opener) -> None:
    results.idle_sessions = IDLE_SESSIONS
    results.rss_before_kib = gateway.rss_kib()
    async with workloads.open_sessions([open_gateway] * IDLE_SESSIONS, parallel=SPAWN_PARALLEL):
        await asyncio.sleep(MEMORY_SETTLE)
        results.rss_idle_kib = gateway.rss_kib()


async def measure_echo(
    results: Results, gateway: GatewayProcess, open_legacy: Opener, open_modern: Opener, open_floor: Opener
) -> None:
    """Sequential echo calls on one session per side (legacy, modern, floor), alternating in
    rounds; the gateway's CPU time is read around each of its rounds."""
    async with (
        aclosing(await open_legacy()) as legacy_session,
        aclosing(await open_modern()) as modern_session,
        aclosing(await open_floor()) as floor_session,
    ):
        sides = (
            (results.legacy, EchoSide(legacy_session, gateway.cpu_ticks)),
            (results.modern, EchoSide(modern_session, gateway.cpu_ticks)),
            (results.floor, EchoSide(floor_session)),
        )
        await workloads.alternating_echo(
            [echo for _, echo in sides], ECHO_CALLS, warmup=ECHO_WARMUP_CALLS, rounds=ECHO_ROUNDS
        )
    for side, echo in sides:
        side.echo = echo.latencies
        if echo.cpu_ticks is not None:
            side.cpu_seconds = echo.ticks / os.sysconf("SC_CLK_TCK")


async def measure_throughput(
    results: Results, open_legacy: Opener, open_modern: Sequence[Opener], open_floor: Opener
) -> None:
    """At each concurrency level, one sequential caller per legacy session, per modern principal
    (`open_modern`: one opener each) and per echo process, the sides alternating in rounds."""
    most = max(CONCURRENCY_LEVELS)
    async with (
        workloads.open_sessions([open_legacy] * most, parallel=SPAWN_PARALLEL) as legacy_sessions,
        workloads.open_sessions(open_modern[:most], parallel=SPAWN_PARALLEL) as modern_sessions,
        workloads.open_sessions([open_floor] * most, parallel=SPAWN_PARALLEL) as floor_sessions,
    ):
        sides = (
            (results.legacy, legacy_sessions),
            (results.modern, modern_sessions),
            (results.floor, floor_sessions),
        )
        for level in CONCURRENCY_LEVELS:
            rounds: list[list[workloads.Throughput]] = [[] for _ in sides]
            for _ in range(THROUGHPUT_ROUNDS):
                for measured, (_, sessions) in zip(rounds, sides, strict=True):
                    window = await workloads.throughput(
                        sessions[:level], warmup=THROUGHPUT_WARMUP, duration=THROUGHPUT_DURATION
                    )
                    measured.append(window)
            for (side, _), measured in zip(sides, rounds, strict=True):
                side.throughput[level] = workloads.Throughput.combined(measured)


async def measure_big_results(results: Results, open_gateway: Opener, open_floor: Opener) -> None:
    async with aclosing(await open_gateway()) as gateway_session, aclosing(await open_floor()) as floor_session:
        for size in BIG_SIZES:
            results.legacy.big[size] = await workloads.big_result_times(gateway_session, size, BIG_RUNS)
            results.floor.big[size] = await workloads.big_result_times(floor_session, size, BIG_RUNS)


def unprivileged(isolation: sandbox.IsolationMode) -> bool:
    """Whether the gateway of `isolation` runs as an unprivileged user: `namespaces` alone, which
    the host's root may not give its children."""
    return isolation == "namespaces" and bubblewrap.is_host_root()


async def why_not(isolation: sandbox.IsolationMode) -> str | None:
    """Why this host cannot run the echo server's children in `isolation` (None: it can)."""
    if unprivileged(isolation):
        if UNPRIVILEGED_PROBLEM is not None:
            return f"namespaces alone need a gateway that is not root, and {UNPRIVILEGED_PROBLEM}"
        return isolation_support.bubblewrap_problem(NOBODY)
    uid_range = tuple(int(part) for part in ISOLATION_UID_RANGE.split("-"))
    request = sandbox.IsolationRequest(isolation, ISOLATION_PYTHON, (uid_range[0], uid_range[1]))
    try:
        await sandbox.decide(request)
    except sandbox.IsolationUnavailable as error:
        return str(error)
    return None


def isolation_argv(isolation: sandbox.IsolationMode) -> list[str]:
    uid_range = ISOLATION_UID_RANGE if isolation in ("uid", "uid+namespaces") else None
    argv = gateway_argv(
        ISOLATION_ECHO_ARGV,
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_sessions=ISOLATION_MAX_SESSIONS,
        isolation=isolation,
        uid_range=uid_range,
    )
    # The echo server stays in a namespaced child's view, even from a checkout under /tmp.
    at = argv.index("--")
    return [*argv[:at], "--child-readable-paths", str(REPO_ROOT / "tests" / "servers"), *argv[at:]]


async def measure_isolation(results: Results) -> None:
    """The same gateway in every isolation mode the host allows, side by side: session setup and
    end, then echo latency, each alternating between the modes."""
    isolation = results.isolation
    if not os.access(ISOLATION_PYTHON, os.X_OK):
        isolation.skipped = f"{ISOLATION_PYTHON} is missing (isolated children need a server every user may run)"
        return
    names: list[sandbox.IsolationMode] = []
    for name in ISOLATION_MODES:
        if (why := await why_not(name)) is None:
            names.append(name)
        else:
            isolation.unavailable[name] = why
    if names == ["none"]:
        isolation.skipped = "no isolation is possible here: " + "; ".join(isolation.unavailable.values())
        return
    async with contextlib.AsyncExitStack() as stack:
        gateways = [
            await stack.enter_async_context(
                (running_unprivileged_gateway if unprivileged(name) else running_gateway)(isolation_argv(name))
            )
            for name in names
        ]
        openers = [functools.partial(GatewaySession.open, gateway.url) for gateway in gateways]
        lifetimes = await workloads.alternating_lifetimes(openers, SETUP_SAMPLES)
        modes = [isolation.modes.setdefault(name, Mode()) for name in names]
        for mode, samples in zip(modes, lifetimes, strict=True):
            mode.setup = [sample.setup for sample in samples]
            mode.end = [sample.end for sample in samples]
        sessions = [await stack.enter_async_context(aclosing(await opener())) for opener in openers]
        sides = [EchoSide(session, gateway.cpu_ticks) for session, gateway in zip(sessions, gateways, strict=True)]
        await workloads.alternating_echo(sides, ISOLATION_ECHO_CALLS, warmup=ECHO_WARMUP_CALLS, rounds=ECHO_ROUNDS)
    for mode, side in zip(modes, sides, strict=True):
        mode.echo = side.latencies
        mode.cpu_seconds = side.ticks / os.sysconf("SC_CLK_TCK")


async def run() -> Results:
    # SIGTERM cancels the run as Ctrl-C does, so the gateway and the echo processes still get stopped.
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    results = Results()
    argv = gateway_argv(ECHO_ARGV, max_message_bytes=MAX_MESSAGE_BYTES, max_sessions=MAX_SESSIONS)
    async with running_gateway(argv) as gateway:
        open_gateway = functools.partial(GatewaySession.open, gateway.url)
        open_floor = functools.partial(PipeSession.open, ECHO_ARGV)
        open_modern = functools.partial(ModernSession.open, gateway.url, MODERN_ECHO_ADDRESS)
        open_callers = [
            functools.partial(ModernSession.open, gateway.url, address) for address in MODERN_CALLER_ADDRESSES
        ]
        phases: list[Callable[[], Awaitable[None]]] = [
            functools.partial(measure_setup, results, open_gateway, open_floor),
            functools.partial(measure_idle_memory, results, gateway, open_gateway),
            functools.partial(measure_echo, results, gateway, open_gateway, open_modern, open_floor),
            functools.partial(measure_throughput, results, open_gateway, open_callers, open_floor),
            functools.partial(measure_big_results, results, open_gateway, open_floor),
        ]
        for phase in phases:
            async with asyncio.timeout(PHASE_TIMEOUT):
                await phase()
    async with asyncio.timeout(PHASE_TIMEOUT):
        await measure_isolation(results)
    return results


def header(nproc: int) -> list[str]:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [
        "mcp-gateway benchmark: the gateway (legacy sessions, 2026-07-28 clients) vs the raw stdio pipe (floor), "
        "same echo server, same client JSON work",
        f"nproc: {nproc}; the load generator, the gateway and every echo process compete for these CPUs",
        f"load average before the run: {load} (anything else running skews every number below)",
        f"python {platform.python_version()}, aiohttp {version('aiohttp')}; HTTP client: the lean HTTP/1.1 "
        "keep-alive client of tests/bench/http.py, one connection per session (legacy) or client (modern)",
        f"gateway: --max-message-bytes {MAX_MESSAGE_BYTES} --max-sessions {MAX_SESSIONS} --child-isolation none, "
        "around tests/servers/echo_server.py",
    ]


def method_notes() -> list[str]:
    levels = "/".join(str(level) for level in CONCURRENCY_LEVELS)
    callers = f"{MODERN_CALLER_ADDRESSES[0]}-{MODERN_CALLER_ADDRESSES[-1]}"
    return [
        "gateway legacy: a 2025-11-25 session (Mcp-Session-Id) per connection. gateway modern: a 2026-07-28 "
        "client of the same endpoint and the same echo server, with no session: each POST carries params._meta "
        "(protocolVersion, clientCapabilities {}, clientInfo) and the routing headers MCP-Protocol-Version, "
        "Mcp-Method and for tools/call Mcp-Name (one header block per method and tool, rendered once); no "
        "Mcp-Session-Id, nothing to DELETE at the end. Without authentication a principal is the client's "
        "address, so every modern client connects from a loopback address of its own (2: "
        f"{MODERN_ECHO_ADDRESS}; 3: {callers}) and is served by a child of its own, started (era probe, then "
        "initialize, the echo server being legacy) by one warm-up tools/list before anything is measured; "
        "every result is checked to be resultType complete.",
        f"1. {SETUP_SAMPLES} samples per side, alternating. gateway: TCP connect, POST initialize, POST "
        "notifications/initialized (202); floor: spawn, initialize and initialized over the pipe.",
        f"2. one session (legacy), client (modern) or echo process (floor) per side, {ECHO_CALLS} sequential "
        f"tools/call echo after {ECHO_WARMUP_CALLS} warm-up calls, alternating between the three sides in "
        f"{ECHO_ROUNDS} rounds.",
        f"3. {levels} callers per side, each sequential on a session (legacy), a principal (modern) or an echo "
        f"process (floor) of its own; {THROUGHPUT_ROUNDS} rounds alternating between the three sides, each "
        f"{THROUGHPUT_DURATION:g} s measured after {THROUGHPUT_WARMUP:g} s warm-up; floor: the echo processes "
        "driven from one asyncio loop.",
        f"4. tools/call big, POST to parsed result; median of {BIG_RUNS} runs.",
        f"5. VmRSS of the gateway process alone (children excluded), {IDLE_SESSIONS} sessions initialized "
        "and idle, each still holding its keep-alive connection.",
        "6. utime+stime of the gateway process alone across each era's measured calls of 2, divided by their number.",
        f"7. one gateway per --child-isolation mode the host allows ({', '.join(ISOLATION_MODES)}) around "
        f"{ISOLATION_PYTHON} tests/servers/echo_server.py (--child-uid-range {ISOLATION_UID_RANGE} for the uid "
        f"modes; namespaces alone as user {NOBODY} when this runs as root, its log read through a pipe); setup "
        f"as in 1, {SETUP_SAMPLES} samples per mode; end: DELETE to its 204 (child stopped, its "
        "cell released: uid: its user's processes swept, HOME/TMPDIR removed, user ID released; namespaces: "
        f"its directory removed); echo and CPU as in 2 and 6, {ISOLATION_ECHO_CALLS} calls per mode.",
    ]


def main() -> int:
    nproc = len(os.sched_getaffinity(0))
    print("\n".join(header(nproc)), flush=True)
    started = time.monotonic()
    try:
        results = asyncio.run(run())
    except asyncio.CancelledError:
        print("terminated; the gateway and the echo processes were stopped", file=sys.stderr)
        return EXIT_TERMINATED
    elapsed = time.monotonic() - started
    sections = [
        comparison_table(results),
        targets_table(results),
        isolation_table(results),
        method_notes(),
        [f"run time: {elapsed:.0f} s"],
    ]
    print("\n" + "\n\n".join("\n".join(lines) for lines in sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
