"""Prometheus metrics, exposed at ``GET /metrics`` through ``prometheus_client``.

Every metric wsproxy exports is declared once in :data:`DEFINITIONS` (name, kind, help, labels);
call sites say ``metrics.inc(name, **labels)``, ``metrics.gauge(name, delta)`` or
``metrics.observe(name, seconds)``, and a name or label set that is not declared is a bug that
raises at once (the tests exercise every call site).

Several workers: when ``PROMETHEUS_MULTIPROC_DIR`` is set in the environment before the process
imports ``prometheus_client`` (``wsproxy serve --workers N`` sets it for its workers), values go
to memory-mapped files in that directory and ``render`` merges every process's files, so one
scrape of any worker shows the sums over all of them (gauges: the sum over live processes).

Label values are bounded: a label that can carry a client's words (``model``) keeps at most
:data:`MAX_LABEL_VALUES` distinct values per metric, later ones are counted as ``other``.
Must not touch: sockets, the store, anything per delta (the forwarding delay is sampled).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_LABEL_VALUES = 200
# Label names are declared in alphabetical order, the order of the exposition text.
# Labels whose values come from requests (bounded by MAX_LABEL_VALUES); the others come from the
# settings (providers, transports) or from a closed set (status, code, reason).
FREE_LABELS = frozenset({"model"})

# Seconds: from well under a millisecond (the added forwarding delay) to minutes (long responses).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
DELAY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


@dataclass(frozen=True, slots=True)
class Definition:
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


DEFINITIONS: dict[str, Definition] = {
    # Responses
    "wsproxy_responses_total": Definition(
        "counter",
        "Responses that ended, by provider, model and final status.",
        ("model", "provider", "status"),
    ),
    "wsproxy_tokens_total": Definition(
        "counter",
        "Tokens reported by providers (kind: input, output, cached, reasoning).",
        ("kind", "model", "provider"),
    ),
    "wsproxy_time_to_first_token_seconds": Definition(
        "histogram",
        "From the request to the first output delta passed on to the client.",
        ("provider",),
        LATENCY_BUCKETS,
    ),
    "wsproxy_response_duration_seconds": Definition(
        "histogram",
        "From the request to the terminal event (stored first, then passed on).",
        ("provider",),
        DURATION_BUCKETS,
    ),
    "wsproxy_upstream_time_to_headers_seconds": Definition(
        "histogram",
        "From sending an upstream request to its response headers.",
        ("provider",),
        LATENCY_BUCKETS,
    ),
    "wsproxy_forward_delay_seconds": Definition(
        "histogram",
        "Time upstream events spend in wsproxy on the push data plane: from the upstream read to "
        "the client write (sampled: the first pushed read of a response, then one in 64).",
        (),
        DELAY_BUCKETS,
    ),
    "wsproxy_errors_total": Definition("counter", "Errors returned to clients, by code.", ("code",)),
    "wsproxy_http_errors_total": Definition("counter", "HTTP requests refused, by status.", ("status",)),
    "wsproxy_ws_rejected_total": Definition(
        "counter", "WebSocket handshakes refused, by status.", ("status",)
    ),
    "wsproxy_cancelled_responses_total": Definition(
        "counter", "Responses abandoned by their client.", ("reason", "transport")
    ),
    "wsproxy_partial_output_tokens_total": Definition(
        "counter", "Estimated output tokens of abandoned responses.", ("provider",)
    ),
    "wsproxy_ended_responses_total": Definition(
        "counter", "Responses ended by wsproxy itself (shutdown, internal error).", ("code", "transport")
    ),
    "wsproxy_client_disconnects_total": Definition(
        "counter", "Clients that left before their response ended.", ("transport",)
    ),
    "wsproxy_slow_clients_total": Definition(
        "counter", "Clients closed for not reading (limits.slow_client_timeout).", ("transport",)
    ),
    "wsproxy_cache_requests_total": Definition(
        "counter", "Response cache lookups, by result (hit, miss).", ("result",)
    ),
    "wsproxy_rate_limited_total": Definition(
        "counter",
        "Requests refused by a limit (scope: a key's rpm, tpm, rpd or tpd; ip_rpm for keyless "
        "clients; rate_limit_rpm for limits.rate_limit_rpm).",
        ("scope",),
    ),
    "wsproxy_upstream_retries_total": Definition(
        "counter",
        "Upstream attempts that failed and were retried (reason: status) or passed to the next "
        "target of a fallback chain (reason: fallback).",
        ("provider", "reason"),
    ),
    "wsproxy_upstream_ws_opened_total": Definition(
        "counter", "Upstream WebSockets opened for WebSocket-mode sessions.", ("provider",)
    ),
    "wsproxy_upstream_ws_refused_total": Definition(
        "counter", "Upstream WebSocket upgrades the provider refused (then HTTP is used).", ("provider",)
    ),
    "wsproxy_upstream_ws_over_limit_total": Definition(
        "counter",
        "Lanes sent over HTTP because the upstream WebSocket bounds were reached.",
        ("provider",),
    ),
    # Gauges
    "wsproxy_ws_sessions": Definition("gauge", "Open WebSocket sessions."),
    "wsproxy_active_responses": Definition("gauge", "Responses being streamed to clients."),
    "wsproxy_upstream_connections": Definition("gauge", "Open upstream connections.", ("provider",)),
}


class Metrics:
    """The process's metrics. One per runtime (a private registry, so that several apps in one
    test process do not collide)."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        # The *_created series double the output and no dashboard uses them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, Any] = {}
        self._seen: dict[str, set[str]] = {}
        for name, d in DEFINITIONS.items():
            self._metrics[name] = self._make(name, d)

    def _make(self, name: str, d: Definition) -> Any:
        if d.kind == "counter":
            # prometheus_client appends _total itself.
            return Counter(name.removesuffix("_total"), d.help, d.labels, registry=self.registry)
        if d.kind == "gauge":
            return Gauge(name, d.help, d.labels, registry=self.registry, multiprocess_mode="livesum")
        return Histogram(name, d.help, d.labels, registry=self.registry, buckets=d.buckets)

    def _child(self, name: str, labels: dict[str, str]) -> Any:
        metric = self._metrics[name]
        if not labels:
            return metric
        for key in FREE_LABELS.intersection(labels):
            seen = self._seen.setdefault(f"{name}:{key}", set())
            value = labels[key]
            if value not in seen:
                if len(seen) >= MAX_LABEL_VALUES:
                    labels = {**labels, key: "other"}
                else:
                    seen.add(value)
        return metric.labels(**labels)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        if value:
            self._child(name, labels).inc(value)

    def gauge(self, name: str, delta: float, **labels: str) -> None:
        self._child(name, labels).inc(delta)

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        self._child(name, labels).set(value)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        self._child(name, labels).observe(seconds)

    def value(self, name: str, **labels: str) -> float:
        """This process's current value of one series (0 when it has none): for tests and
        introspection, not the exposition."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def time_to_headers(self, provider: str, seconds: float) -> None:
        self.observe("wsproxy_upstream_time_to_headers_seconds", seconds, provider=provider)

    def retried(self, provider: str, reason: str) -> None:
        self.inc("wsproxy_upstream_retries_total", provider=provider, reason=reason)

    def record_usage(
        self,
        principal: str | None,
        provider: str,
        usage: dict[str, Any] | None,
        model: str = "",
        status: str = "completed",
    ) -> None:
        """A response ended with ``usage`` (the provider's report, OpenAI's shape)."""
        model = model or "unknown"
        self.inc("wsproxy_responses_total", provider=provider, model=model, status=status)
        if not isinstance(usage, dict):
            return
        input_details = usage.get("input_tokens_details") or {}
        output_details = usage.get("output_tokens_details") or {}
        for kind, value in (
            ("input", usage.get("input_tokens")),
            ("output", usage.get("output_tokens")),
            ("cached", input_details.get("cached_tokens") if isinstance(input_details, dict) else 0),
            ("reasoning", output_details.get("reasoning_tokens") if isinstance(output_details, dict) else 0),
        ):
            if isinstance(value, int | float) and value > 0:
                self.inc("wsproxy_tokens_total", float(value), provider=provider, model=model, kind=kind)

    def render(self) -> bytes:
        """The exposition text: this process's registry, or every worker's files merged."""
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
