"""The results of one run and their rendering as plain aligned text, ready to paste.

The gateway is measured in both eras: its legacy sessions (every phase) and its 2026-07-28
clients, which have no session (echo and throughput). Ratios are each era / floor (in the
isolation table each mode / none; among the targets modern / legacy): above 1 for times means the
gateway (the isolated mode, the modern era) is slower, below 1 for throughput means it serves
fewer calls per second. Percentiles are nearest-rank.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from tests.bench.workloads import Throughput

MiB: Final = 1024 * 1024

# The targets the gateway is held to.
ECHO_P50_MAX_RATIO: Final = 5.0
THROUGHPUT_MIN_RATIO: Final = 0.3
THROUGHPUT_TARGET_SESSIONS: Final = 32
BIG_RESULT_MAX_RATIO: Final = 2.0
BIG_RESULT_TARGET_SIZE: Final = 32 * MiB
IDLE_SESSION_MAX_KIB: Final = 64.0
# A 2026-07-28 client is served by the same children over the same endpoint as a legacy session:
# the envelope's checks and the translation for a legacy child may cost a little, not more.
MODERN_ECHO_P50_MAX_RATIO: Final = 1.10
MODERN_THROUGHPUT_MIN_RATIO: Final = 0.90


@dataclass(slots=True)
class Side:
    """Raw samples (nanoseconds) of one side of the comparison."""

    setup: list[int] = field(default_factory=list)
    echo: list[int] = field(default_factory=list)
    throughput: dict[int, Throughput] = field(default_factory=dict)  # by concurrent callers
    big: dict[int, list[int]] = field(default_factory=dict)  # by result size in bytes
    # The gateway process across this side's measured echo calls (the floor's: not measured).
    cpu_seconds: float | None = None

    @property
    def cpu_ns_per_call(self) -> float | None:
        return None if self.cpu_seconds is None else self.cpu_seconds * 1e9 / len(self.echo)


@dataclass(slots=True)
class Mode:
    """Raw samples (nanoseconds) of one gateway in one `--child-isolation` mode."""

    setup: list[int] = field(default_factory=list)
    end: list[int] = field(default_factory=list)  # DELETE to its 204: child stopped, its cell released
    echo: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0  # the gateway process, across the measured echo calls

    @property
    def cpu_ns_per_call(self) -> float:
        return self.cpu_seconds * 1e9 / len(self.echo)


@dataclass(slots=True)
class IsolationResults:
    """Phase 7: the same gateway in each isolation mode the host allows, `none` the baseline."""

    modes: dict[str, Mode] = field(default_factory=dict)  # measured, in the order run
    unavailable: dict[str, str] = field(default_factory=dict)  # mode → why the host cannot have it
    skipped: str | None = None  # why the phase did not run


@dataclass(slots=True)
class Results:
    legacy: Side = field(default_factory=Side)  # the gateway's handshake-era sessions
    modern: Side = field(default_factory=Side)  # the gateway's 2026-07-28 clients (phases 2 and 3)
    floor: Side = field(default_factory=Side)
    idle_sessions: int = 0
    rss_before_kib: int = 0
    rss_idle_kib: int = 0
    isolation: IsolationResults = field(default_factory=IsolationResults)

    @property
    def kib_per_idle_session(self) -> float:
        return (self.rss_idle_kib - self.rss_before_kib) / self.idle_sessions


def percentile(samples: Sequence[int], fraction: float) -> int:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def _ms(ns: float) -> str:
    return f"{ns / 1e6:,.1f} ms"


def _us(ns: float) -> str:
    return f"{ns / 1e3:,.0f} µs"


def _rate(per_second: float) -> str:
    return f"{per_second:,.0f} /s"


def _kib(kib: float) -> str:
    return f"{kib:,.0f} KiB"


def _compare(
    label: str, unit: Callable[[float], str], legacy: float, modern: float | None = None, floor: float | None = None
) -> list[str]:
    """A row of the comparison table; "-" where a side was not measured."""

    def cell(value: float | None) -> str:
        return "-" if value is None else unit(value)

    def ratio(value: float | None) -> str:
        return "-" if value is None or floor is None else f"{value / floor:.2f}x"

    return [label, cell(legacy), cell(modern), cell(floor), ratio(legacy), ratio(modern)]


def _align(rows: Sequence[Sequence[str]]) -> list[str]:
    """First column left-aligned, the others right-aligned, a rule under the header row."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "   ".join(cells).rstrip()

    rule = "   ".join("-" * width for width in widths)
    return [line(rows[0]), rule, *(line(row) for row in rows[1:])]


def comparison_table(results: Results) -> list[str]:
    legacy, modern, floor = results.legacy, results.modern, results.floor
    rows: list[list[str]] = [["metric", "gateway legacy", "gateway modern", "floor", "legacy/floor", "modern/floor"]]
    for name, q in (("p50", 0.50), ("p95", 0.95)):
        setup = percentile(legacy.setup, q), None, percentile(floor.setup, q)
        rows.append(_compare(f"1. session setup {name}", _ms, *setup))
    for name, q in (("p50", 0.50), ("p99", 0.99)):
        echo = percentile(legacy.echo, q), percentile(modern.echo, q), percentile(floor.echo, q)
        rows.append(_compare(f"2. echo, concurrency 1, {name}", _us, *echo))
    for callers, on_legacy in legacy.throughput.items():
        on_modern, on_floor = modern.throughput[callers], floor.throughput[callers]
        rates = on_legacy.calls_per_second, on_modern.calls_per_second, on_floor.calls_per_second
        rows.append(_compare(f"3. concurrency {callers:>2}: calls/s", _rate, *rates))
        p99 = (percentile(side.latencies, 0.99) for side in (on_legacy, on_modern, on_floor))
        rows.append(_compare(f"   concurrency {callers:>2}: p99 latency", _us, *p99))
    for size, samples in legacy.big.items():
        medians = statistics.median(samples), None, statistics.median(floor.big[size])
        rows.append(_compare(f"4. {size // MiB:>2} MiB tool result, median", _ms, *medians))
    growth = results.rss_idle_kib - results.rss_before_kib
    rows += [
        _compare("5. gateway RSS before sessions", _kib, results.rss_before_kib),
        _compare(f"   gateway RSS, {results.idle_sessions} idle sessions", _kib, results.rss_idle_kib),
        _compare("   growth, total", _kib, growth),
        _compare("   growth per idle session", lambda kib: f"{kib:,.1f} KiB", results.kib_per_idle_session),
    ]
    if legacy.cpu_ns_per_call is not None:
        cpu = legacy.cpu_ns_per_call, modern.cpu_ns_per_call
        rows.append(_compare("6. gateway CPU per echo call, user+sys", _us, *cpu))
    return _align(rows)


def isolation_table(results: Results) -> list[str]:
    """Phase 7, or the reason it was skipped; ratios are each mode / none."""
    isolation = results.isolation
    if isolation.skipped is not None:
        return [f"7. isolation: skipped, {isolation.skipped}"]
    none = isolation.modes["none"]
    isolated = {name: mode for name, mode in isolation.modes.items() if name != "none"}
    header = ["isolation", *isolated, "none", *(f"{name}/none" for name in isolated)]

    def row(label: str, value: Callable[[Mode], float], unit: Callable[[float], str]) -> list[str]:
        ratios = [f"{value(mode) / value(none):.2f}x" for mode in isolated.values()]
        return [label, *(unit(value(mode)) for mode in isolated.values()), unit(value(none)), *ratios]

    def at(samples: Callable[[Mode], list[int]], q: float) -> Callable[[Mode], float]:
        return lambda mode: percentile(samples(mode), q)

    rows: list[list[str]] = [header]
    for name, q in (("p50", 0.50), ("p95", 0.95)):
        rows.append(row(f"7. session setup {name}", at(lambda mode: mode.setup, q), _ms))
    for name, q in (("p50", 0.50), ("p95", 0.95)):
        rows.append(row(f"   session end {name}", at(lambda mode: mode.end, q), _ms))
    for name, q in (("p50", 0.50), ("p99", 0.99)):
        rows.append(row(f"   echo, concurrency 1, {name}", at(lambda mode: mode.echo, q), _us))
    rows.append(row("   gateway CPU per echo call, user+sys", lambda mode: mode.cpu_ns_per_call, _us))
    lines = _align(rows)
    lines += [f"   {name}: not measured, {why}" for name, why in isolation.unavailable.items()]
    return lines


def modern_ratios(results: Results) -> tuple[float, float]:
    """modern / legacy: echo p50 at concurrency 1, and calls per second at the target concurrency."""
    legacy, modern = results.legacy, results.modern
    echo = percentile(modern.echo, 0.5) / percentile(legacy.echo, 0.5)
    callers = THROUGHPUT_TARGET_SESSIONS
    rate = modern.throughput[callers].calls_per_second / legacy.throughput[callers].calls_per_second
    return echo, rate


def targets_table(results: Results) -> list[str]:
    gw, fl = results.legacy, results.floor
    echo = percentile(gw.echo, 0.5) / percentile(fl.echo, 0.5)
    sessions = THROUGHPUT_TARGET_SESSIONS
    rate = gw.throughput[sessions].calls_per_second / fl.throughput[sessions].calls_per_second
    size = BIG_RESULT_TARGET_SIZE
    big = statistics.median(gw.big[size]) / statistics.median(fl.big[size])
    memory = results.kib_per_idle_session
    modern_echo, modern_rate = modern_ratios(results)
    checks = [
        ("echo p50, gateway/floor", f"{echo:.2f}x", f"<= {ECHO_P50_MAX_RATIO:.1f}x", echo <= ECHO_P50_MAX_RATIO),
        (
            f"{sessions}-session calls/s, gateway/floor",
            f"{rate:.2f}x",
            f">= {THROUGHPUT_MIN_RATIO:.1f}x",
            rate >= THROUGHPUT_MIN_RATIO,
        ),
        (
            f"{size // MiB} MiB result, gateway/floor",
            f"{big:.2f}x",
            f"<= {BIG_RESULT_MAX_RATIO:.1f}x",
            big <= BIG_RESULT_MAX_RATIO,
        ),
        (
            "gateway RSS per idle session",
            f"{memory:.1f} KiB",
            f"<= {IDLE_SESSION_MAX_KIB:.0f} KiB",
            memory <= IDLE_SESSION_MAX_KIB,
        ),
        (
            "modern echo p50 / legacy echo p50",
            f"{modern_echo:.2f}x",
            f"<= {MODERN_ECHO_P50_MAX_RATIO:.2f}x",
            modern_echo <= MODERN_ECHO_P50_MAX_RATIO,
        ),
        (
            f"modern {sessions}-principal calls/s / legacy {sessions}-session calls/s",
            f"{modern_rate:.2f}x",
            f">= {MODERN_THROUGHPUT_MIN_RATIO:.2f}x",
            modern_rate >= MODERN_THROUGHPUT_MIN_RATIO,
        ),
    ]
    rows = [["target", "result", "limit", "met"]]
    rows += [[name, value, limit, "yes" if met else "NO"] for name, value, limit, met in checks]
    return _align(rows)
