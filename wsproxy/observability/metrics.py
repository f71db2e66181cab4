"""Counters and gauges, exposed in the Prometheus text format at ``GET /metrics``.

Deliberately tiny: labelled counters in dicts, no client library. Label sets are bounded by what
the settings define (providers, transports, status codes), never by user input.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.gauges: dict[str, float] = defaultdict(float)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += value

    def gauge(self, name: str, delta: float) -> None:
        self.gauges[name] += delta

    def record_usage(self, principal: str | None, provider: str, usage: dict[str, Any] | None) -> None:
        self.inc("wsproxy_responses_total", provider=provider)
        if isinstance(usage, dict):
            self.inc("wsproxy_input_tokens_total", float(usage.get("input_tokens") or 0), provider=provider)
            self.inc("wsproxy_output_tokens_total", float(usage.get("output_tokens") or 0), provider=provider)

    def render(self) -> str:
        lines: list[str] = []
        for (name, labels), value in sorted(self.counters.items()):
            label_text = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{label_text}}} {value:g}")
        for name, value in sorted(self.gauges.items()):
            lines.append(f"{name} {value:g}")
        return "\n".join(lines) + "\n"
