"""Prometheus metrics: counted from the audit event feed, exposed as text at `/metrics`.

The registry belongs to the application (never the process-global default), so two apps in one
process never share or collide. Counters follow the events `audit.py` records; the live gauges
read the session store when scraped. Label values come from closed sets (methods the MCP spec
defines, the gateway's own reason codes): a client cannot grow the number of series.

`/metrics` is served on the main listener, or on a listener of its own (`metrics_port`); with a
`metrics_token` it takes that bearer token only. On a main listener bound beyond loopback and
without a token it is not served at all: session counts and principals' activity are not public.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import itertools
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway._version import __version__
from gateway.auth.bearer import challenge
from gateway.observe.audit import OAUTH_EVENTS, EventName
from gateway.paths import METRICS_PATH

log = logging.getLogger("gateway.metrics")

NAMESPACE: Final = "mcp_gateway"
PATH: Final = METRICS_PATH
# The protection space `/metrics` names in its challenge: not the MCP endpoint's, its token is another.
REALM: Final = "metrics"
# Methods counted under their own name; any other method is counted as "other".
KNOWN_METHODS: Final = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "server/discover",
        "subscriptions/listen",
        "completion/complete",
        "logging/setLevel",
    }
)
# Spawning is fork+exec (milliseconds); requests span a ping (sub-millisecond) to long tool calls.
SPAWN_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REQUEST_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class RequestSeries(Collector):
    """The series every MCP request updates: counts by method and outcome, latency by method,
    bytes in and out.

    Kept as plain numbers and turned into metric families only when scraped. The event loop is
    their one writer, so they need none of the locking (and none of the half-dozen calls per
    update) that prometheus-client's own metric types spend on every request.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], int] = {}
        self._buckets: dict[str, list[int]] = {}  # by method: observations per bucket, +Inf last
        self._sums: dict[str, float] = {}
        self._bytes_in = 0
        self._bytes_out = 0

    def observe(self, fields: Mapping[str, Any]) -> None:
        method = fields["method"] if fields["method"] in KNOWN_METHODS else "other"
        key = (method, fields["outcome"], fields.get("era", "legacy"))
        self._counts[key] = self._counts.get(key, 0) + 1
        seconds = fields["duration_ms"] / 1000
        buckets = self._buckets.get(method)
        if buckets is None:
            buckets = self._buckets[method] = [0] * (len(REQUEST_BUCKETS) + 1)
        buckets[bisect.bisect_left(REQUEST_BUCKETS, seconds)] += 1  # the first bound >= seconds: `le`
        self._sums[method] = self._sums.get(method, 0.0) + seconds
        self._bytes_in += fields["bytes_in"]
        self._bytes_out += fields["bytes_out"]

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            f"{NAMESPACE}_requests",
            "MCP requests, by method, outcome and the era of the client that sent them",
            labels=["method", "outcome", "era"],
        )
        for labels, count in sorted(self._counts.items()):
            requests.add_metric(labels, count)
        yield requests
        latency = HistogramMetricFamily(
            f"{NAMESPACE}_request_duration_seconds",
            "MCP request latency through the gateway, by method",
            labels=["method"],
        )
        bounds = [*(repr(bound) for bound in REQUEST_BUCKETS), "+Inf"]  # as prometheus-client writes them
        for method, counts in sorted(self._buckets.items()):
            cumulative = list(itertools.accumulate(counts))
            latency.add_metric([method], list(zip(bounds, cumulative, strict=True)), self._sums[method])
        yield latency
        yield CounterMetricFamily(
            f"{NAMESPACE}_received_bytes", "Bytes of MCP requests received from clients", value=self._bytes_in
        )
        yield CounterMetricFamily(
            f"{NAMESPACE}_sent_bytes", "Bytes of MCP responses sent to clients", value=self._bytes_out
        )


class Metrics:
    """The gateway's metrics, updated from audit events."""

    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        Gauge(f"{NAMESPACE}_info", "Gateway version", ["version"], registry=registry).labels(__version__).set(1)
        self.sessions = Gauge(f"{NAMESPACE}_sessions", "Live sessions", registry=registry)
        self.children = Gauge(f"{NAMESPACE}_children", "Running child processes", registry=registry)
        self.requests_in_flight = Gauge(
            f"{NAMESPACE}_requests_in_flight", "Requests sent to children and not yet answered", registry=registry
        )
        self.sessions_opened = Counter(
            f"{NAMESPACE}_sessions_opened",
            "Sessions opened, by era (legacy: a client's session; modern: a principal's child for 2026-07-28 requests)",
            ["era"],
            registry=registry,
        )
        self.sessions_closed = Counter(
            f"{NAMESPACE}_sessions_closed", "Sessions closed, by reason", ["reason"], registry=registry
        )
        self.spawn_seconds = Histogram(
            f"{NAMESPACE}_spawn_seconds", "Time to start a child process", buckets=SPAWN_BUCKETS, registry=registry
        )
        self.requests = RequestSeries()
        registry.register(self.requests)
        self.ratelimit_blocks = Counter(
            f"{NAMESPACE}_ratelimit_blocks", "Requests refused by a rate limit, by limit", ["limit"], registry=registry
        )
        self.auth_failures = Counter(
            f"{NAMESPACE}_auth_failures", "Failed authentications, by reason", ["reason"], registry=registry
        )
        self.child_violations = Counter(
            f"{NAMESPACE}_child_violations",
            "Protocol violations by child processes, by kind",
            ["kind"],
            registry=registry,
        )
        self.oauth_events = Counter(
            f"{NAMESPACE}_oauth_events",
            "Events of the built-in authorization server (grants, refreshes, refusals, ...), by event",
            ["event"],
            registry=registry,
        )
        self._handlers: dict[EventName, Callable[[Mapping[str, Any]], None]] = {
            "session.open": lambda fields: self.sessions_opened.labels(fields.get("era", "legacy")).inc(),
            "session.close": lambda fields: self.sessions_closed.labels(fields["reason"]).inc(),
            "child.spawn": lambda fields: self.spawn_seconds.observe(fields["spawn_ms"] / 1000),
            "mcp.request": self.requests.observe,
            "ratelimit.block": lambda fields: self.ratelimit_blocks.labels(fields["limit"]).inc(),
            "auth.fail": lambda fields: self.auth_failures.labels(fields["reason"]).inc(),
            "child.violation": lambda fields: self.child_violations.labels(fields["kind"]).inc(),
        }
        for event in OAUTH_EVENTS:
            self._handlers[event] = self._oauth_counter(event)

    def _oauth_counter(self, event: EventName) -> Callable[[Mapping[str, Any]], None]:
        series = self.oauth_events.labels(event.removeprefix("oauth."))
        return lambda _: series.inc()

    def watch(
        self, sessions: Callable[[], int], children: Callable[[], int], in_flight: Callable[[], int] | None = None
    ) -> None:
        """Read the live gauges from the session store at each scrape."""
        self.sessions.set_function(lambda: float(sessions()))
        self.children.set_function(lambda: float(children()))
        if in_flight is not None:
            self.requests_in_flight.set_function(lambda: float(in_flight()))

    def observe(self, event: EventName, fields: Mapping[str, Any]) -> None:
        handler = self._handlers.get(event)
        if handler is not None:
            handler(fields)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def handler(metrics: Metrics, token: str | None) -> Callable[[web.Request], Any]:
    """The `/metrics` handler; with a token, only that bearer token is answered."""
    expected = hashlib.sha256(token.encode()).digest() if token is not None else None

    async def handle_metrics(request: web.Request) -> web.Response:
        if expected is not None:
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            offered = hashlib.sha256(presented.strip().encode()).digest()
            if scheme.lower() != "bearer" or not hmac.compare_digest(offered, expected):
                return web.Response(
                    status=401,
                    text="metrics require the metrics token\n",
                    headers={"WWW-Authenticate": challenge(realm=REALM)},
                )
        body = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle_metrics
