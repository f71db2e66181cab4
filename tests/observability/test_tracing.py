"""Traces against an OTLP/HTTP receiver on loopback: one span per response continuing the
client's ``traceparent``, a child span per upstream attempt (retries and the fallback visible),
and each attempt's ``traceparent`` received by the upstream."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import proxy_settings
from tests.e2e.sdk import client, close_all
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.servers import UvicornThread
from wsproxy.asgi.app import create_app
from wsproxy.observability.tracing import wanted

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace receiver: decodes every export and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.lock = threading.Lock()
        spans, lock = self.spans, self.lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.spans) >= count:
                    return list(self.spans)
            time.sleep(0.05)
        with self.lock:
            return list(self.spans)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def traced_proxy(tmp_path: Path, fake_openai: tuple[FakeOpenAI, str], receiver: Receiver) -> Iterator[Any]:
    settings = proxy_settings(tmp_path, fake_openai[1])
    environ = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "wsproxy-test"}
    server = UvicornThread(create_app(settings, environ=environ)).start()
    yield server
    close_all()
    server.stop()


def attr(span: Any, key: str) -> Any:
    for kv in span.attributes:
        if kv.key == key:
            value = kv.value
            return value.string_value or value.int_value
    return None


def test_response_span_with_attempts_under_the_clients_trace(
    traced_proxy: Any, receiver: Receiver, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake = fake_openai[0]
    c = client(traced_proxy)
    marker = "trace-me-7781"
    response = c.responses.create(
        model="fallback",  # up2@fail-503 (retried once), then up1@fake
        input=marker,
        extra_headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"},
    )
    assert response.status == "completed"
    spans = receiver.wait_for(4)
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (root,) = by_name["response"]
    assert root.trace_id.hex() == TRACE_ID
    assert root.parent_span_id.hex() == CLIENT_SPAN
    assert attr(root, "wsproxy.response_id") == response.id
    assert attr(root, "wsproxy.provider") == "up1"
    attempts = sorted(by_name["upstream attempt"], key=lambda s: s.start_time_unix_nano)
    assert [(attr(s, "wsproxy.provider"), attr(s, "wsproxy.attempt")) for s in attempts] == [
        ("up2", 0),
        ("up2", 1),
        ("up1", 0),
    ]
    assert all(s.parent_span_id == root.span_id and s.trace_id == root.trace_id for s in attempts)
    assert [s.status.code for s in attempts] == [2, 2, 0]  # ERROR, ERROR, UNSET
    # The retry and the fallback are counted too.
    import httpx2

    text = httpx2.get(traced_proxy.url + "/metrics").text
    assert 'wsproxy_upstream_retries_total{provider="up2",reason="503"} 1.0' in text
    assert 'wsproxy_upstream_retries_total{provider="up2",reason="fallback"} 1.0' in text
    assert 'wsproxy_upstream_connections{provider="up1"} 1.0' in text
    # Each attempt's own span id went upstream in its traceparent.
    seen = [r["headers"].get("traceparent") for r in fake.find(marker)]
    assert seen == [f"00-{TRACE_ID}-{s.span_id.hex()}-01" for s in attempts]


def test_off_unless_asked() -> None:
    assert not wanted({})
    assert wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"})
    assert not wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
