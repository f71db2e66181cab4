"""OpenTelemetry traces: a span per response, a child span per upstream attempt.

Optional: needs the ``otel`` extra (``pip install 'wsproxy[otel]'``) and is off unless the
standard variables ask for it: ``OTEL_TRACES_EXPORTER=otlp``, or an OTLP endpoint in
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` (OTLP over HTTP,
protobuf); ``OTEL_SDK_DISABLED=true`` turns it off, ``OTEL_SERVICE_NAME`` names the service
(default ``wsproxy``). Off, the engine holds ``None`` and pays nothing.

Spans are passed explicitly (the response's span object travels with the run and the upstream
call), not through a context variable: a response's events are produced by generators that
other tasks may close, where attaching and detaching a context would not pair up.

- The response span continues the client's W3C ``traceparent`` when it sent one.
- Each upstream attempt (a retry, or the next target of a fallback chain) is a child span, and
  its ``traceparent`` goes upstream with the request.
Must not touch: the hot path per event (spans start and end once per response and attempt).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("wsproxy.tracing")

_TRUE = ("1", "true", "yes", "on")


def wanted(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").lower() in _TRUE:
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").lower()
    if exporter == "none":
        return False
    return exporter == "otlp" or bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


class Span:
    """One span and the context its children and the upstream see."""

    __slots__ = ("_ended", "_span", "context")

    def __init__(self, span: Any, context: Any) -> None:
        self._span = span
        self.context = context
        self._ended = False

    def set(self, **attributes: Any) -> None:
        for key, value in attributes.items():
            if value is not None:
                self._span.set_attribute(key, value)

    def end(self, error: str | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        if error:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, error))
        self._span.end()


class Tracing:
    """The process's tracer provider and exporter (one per runtime, closed with it)."""

    def __init__(self, provider: Any, tracer: Any) -> None:
        self._provider = provider
        self._tracer = tracer
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Tracing | None:
        if not wanted(environ):
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning("OTEL_* asks for traces, but the otel extra is not installed: traces are off")
            return None
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if not endpoint and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
        resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or "wsproxy"})
        provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
        # Bounded: the processor drops spans past its queue (2048) instead of growing.
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        return cls(provider, provider.get_tracer("wsproxy"))

    def response(self, traceparent: str | None, **attributes: Any) -> Span:
        """The span of one response, continuing the client's trace when it sent one."""
        from opentelemetry.trace import SpanKind, set_span_in_context

        parent = self._propagator.extract({"traceparent": traceparent}) if traceparent else None
        span = self._tracer.start_span("response", context=parent, kind=SpanKind.SERVER)
        handle = Span(span, set_span_in_context(span))
        handle.set(**attributes)
        return handle

    def attempt(
        self, parent: Span | None, provider: str, model: str, attempt: int
    ) -> tuple[Span, dict[str, str]]:
        """A child span for one upstream attempt and the headers that carry it upstream."""
        from opentelemetry.trace import SpanKind, set_span_in_context

        span = self._tracer.start_span(
            "upstream attempt",
            context=parent.context if parent is not None else None,
            kind=SpanKind.CLIENT,
        )
        handle = Span(span, set_span_in_context(span))
        handle.set(**{"wsproxy.provider": provider, "wsproxy.model": model, "wsproxy.attempt": attempt})
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=handle.context)
        return handle, headers

    def close(self) -> None:
        self._provider.shutdown()  # flushes what is queued
