"""What is recorded when a response ends: its histograms and its one log line.

Called by the engine once per response, with the terminal event's facts (never its body): the
time to the first output delta and the whole duration (``wsproxy_time_to_first_token_seconds``,
``wsproxy_response_duration_seconds``), and a structured line on ``wsproxy.responses`` with the
model, provider, status, tokens, times, the owner (a key's name or digest, never the key) and the
request id.
"""

from __future__ import annotations

import logging
from typing import Any

from wsproxy.observability.logs import log_fields
from wsproxy.observability.metrics import Metrics

RESPONSES = logging.getLogger("wsproxy.responses")


class ResponseObserver:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def forward_delay(self, seconds: float) -> None:
        """A sampled upstream read's events reached the client's transport ``seconds`` after
        the read (the push data plane measures the first pushed read of a response, then one in
        64)."""
        self.metrics.observe("wsproxy_forward_delay_seconds", seconds)

    def finished(
        self,
        *,
        response_id: str,
        request_id: str | None,
        principal: str | None,
        provider: str,
        model: str,
        status: str,
        usage: dict[str, Any] | None,
        ttft: float | None,
        duration: float,
    ) -> None:
        provider = provider or "unknown"
        if ttft is not None:
            self.metrics.observe("wsproxy_time_to_first_token_seconds", ttft, provider=provider)
        self.metrics.observe("wsproxy_response_duration_seconds", duration, provider=provider)
        if not RESPONSES.isEnabledFor(logging.INFO):
            return
        usage = usage if isinstance(usage, dict) else {}
        log_fields(
            RESPONSES,
            "response",
            response_id=response_id,
            request_id=request_id,
            key=principal,
            provider=provider,
            model=model,
            status=status,
            input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"),
            ttft_ms=round(ttft * 1000, 2) if ttft is not None else None,
            duration_ms=round(duration * 1000, 2),
        )
