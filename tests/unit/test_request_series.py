"""The per-request series expose exactly what prometheus-client's own Counter and Histogram
would, fed the same requests: the same sample names, labels and values, buckets included (a
latency equal to a bound counts in that bound's bucket)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observe.metrics import NAMESPACE, REQUEST_BUCKETS, RequestSeries

# (method, outcome, era, milliseconds, bytes in, bytes out); bounds themselves are among the latencies.
REQUESTS = [
    ("tools/call", "ok", "legacy", 0.5, 120, 300),
    ("tools/call", "ok", "legacy", 1.0, 130, 310),
    ("tools/call", "ok", "modern", 1.0, 130, 310),
    ("tools/call", "error", "legacy", 2.5, 90, 80),
    ("tools/list", "ok", "modern", 0.2, 60, 4000),
    ("initialize", "ok", "legacy", 40.0, 200, 250),
    ("x-vendor/thing", "error", "modern", 30_000.0, 70, 90),  # not a spec method: counted as "other"
    ("ping", "closed", "legacy", 45_000.0, 50, 0),  # beyond the last bound: +Inf only
]


def samples(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")  # creation times differ by nature
    }


def test_the_series_match_prometheus_client_s_own_types() -> None:
    ours = CollectorRegistry()
    series = RequestSeries()
    ours.register(series)

    reference = CollectorRegistry()
    latency = Histogram(
        f"{NAMESPACE}_request_duration_seconds",
        "MCP request latency through the gateway, by method",
        ["method"],
        buckets=REQUEST_BUCKETS,
        registry=reference,
    )
    counts = Counter(
        f"{NAMESPACE}_requests",
        "MCP requests, by method, outcome and the era of the client that sent them",
        ["method", "outcome", "era"],
        registry=reference,
    )
    received = Counter(f"{NAMESPACE}_received_bytes", "Bytes of MCP requests received from clients", registry=reference)
    sent = Counter(f"{NAMESPACE}_sent_bytes", "Bytes of MCP responses sent to clients", registry=reference)

    for method, outcome, era, ms, bytes_in, bytes_out in REQUESTS:
        series.observe(
            {
                "method": method,
                "outcome": outcome,
                "era": era,
                "duration_ms": ms,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
            }
        )
        shown = method if method != "x-vendor/thing" else "other"
        latency.labels(shown).observe(ms / 1000)
        counts.labels(shown, outcome, era).inc()
        received.inc(bytes_in)
        sent.inc(bytes_out)

    assert samples(ours) == samples(reference)


def test_nothing_observed_exposes_only_the_byte_totals() -> None:
    registry = CollectorRegistry()
    registry.register(RequestSeries())
    assert {name for name, _, _ in samples(registry)} == {
        f"{NAMESPACE}_received_bytes_total",
        f"{NAMESPACE}_sent_bytes_total",
    }
