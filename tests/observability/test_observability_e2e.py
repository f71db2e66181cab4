"""Metrics, request ids and access logs on a real server: ``promtool check metrics`` on the real
exposition, a real Prometheus server scraping it, ``x-request-id`` on every answer, and access
log lines that carry sizes, times and names but never a key or a body."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from websockets.sync.client import connect

from tests.e2e.sdk import client, close_all
from wsproxy.observability.logs import JsonFormatter

KEY = "sk-observed-0123456789"
SECRET_INPUT = "the-body-must-not-be-logged-4711"


@pytest.fixture(autouse=True)
def _close_clients() -> Any:
    yield
    close_all()


def some_traffic(proxy: Any, key: str | None = None) -> None:
    c = client(proxy, key or "sk-test")
    c.responses.create(model="local", input=SECRET_INPUT)
    for _ in c.responses.create(model="local", input=SECRET_INPUT, stream=True):
        pass
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with connect(proxy.url.replace("http", "ws") + "/v1/responses", additional_headers=headers) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "local", "input": SECRET_INPUT}))
        for _ in range(10_000):
            if json.loads(ws.recv(timeout=10))["type"] == "response.completed":
                break


def test_promtool_accepts_the_exposition(proxy: Any) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by scripts/test.sh (Debian's prometheus package)"
    some_traffic(proxy)
    r = httpx2.get(proxy.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    checked = subprocess.run([promtool, "check", "metrics"], input=r.content, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = r.text
    assert 'wsproxy_responses_total{model="local",provider="local",status="completed"} 3.0' in text
    assert "wsproxy_ws_sessions 0.0" in text
    # Three responses of the local model: each had a first token and a duration.
    assert 'wsproxy_time_to_first_token_seconds_count{provider="local"} 3.0' in text
    assert 'wsproxy_response_duration_seconds_count{provider="local"} 3.0' in text


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "wsproxy-dashboard.json"


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_dashboard_uses_only_declared_metrics() -> None:
    import re

    from wsproxy.observability.metrics import DEFINITIONS

    names = set()
    for expr in dashboard_queries():
        names.update(re.findall(r"\bwsproxy_[a-z_]+", expr))
    declared = set(DEFINITIONS) | {f"{n}_bucket" for n, d in DEFINITIONS.items() if d.kind == "histogram"}
    assert names and names <= declared, names - declared
    assert {n.removesuffix("_bucket") for n in names} >= {
        "wsproxy_time_to_first_token_seconds",
        "wsproxy_response_duration_seconds",
        "wsproxy_responses_total",
        "wsproxy_ws_sessions",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_prometheus_scrapes_wsproxy(proxy: Any, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is installed by scripts/test.sh (Debian's prometheus package)"
    some_traffic(proxy)
    target = proxy.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: wsproxy\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    log_file = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    try:
        query = f"http://127.0.0.1:{port}/api/v1/query"
        value = None
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and value is None:
            time.sleep(0.5)
            try:
                r = httpx2.get(query, params={"query": 'sum(wsproxy_responses_total{provider="local"})'})
            except httpx2.TransportError:
                continue
            result = r.json().get("data", {}).get("result") or []
            if result:
                value = float(result[0]["value"][1])
        assert value == 3.0, (tmp_path / "prometheus.log").read_text()[-2000:]
        up = httpx2.get(query, params={"query": 'up{job="wsproxy"}'}).json()["data"]["result"]
        assert up and up[0]["value"][1] == "1"
        # Every query of the shipped Grafana dashboard is valid PromQL over metrics wsproxy has.
        for expr in dashboard_queries():
            answer = httpx2.get(query, params={"query": expr.replace("$__rate_interval", "1m")}).json()
            assert answer["status"] == "success", (expr, answer)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log_file.close()


def test_request_id_echoed_or_generated(proxy: Any) -> None:
    with httpx2.Client(base_url=proxy.url) as http:
        given = http.get("/v1/models", headers={"x-request-id": "trace-abc.123"})
        generated = http.get("/v1/models")
        refused = http.post(
            "/v1/responses", content=b"{not json", headers={"content-type": "application/json"}
        )
        bad = http.get("/healthz", headers={"x-request-id": "has spaces, not an id"})
    assert given.headers["x-request-id"] == "trace-abc.123"
    assert generated.headers["x-request-id"].startswith("req_")
    assert refused.status_code == 400 and refused.headers["x-request-id"].startswith("req_")
    assert bad.headers["x-request-id"].startswith("req_")  # not echoed: not a well-formed id
    with connect(
        proxy.url.replace("http", "ws") + "/v1/responses", additional_headers={"x-request-id": "ws-req-1"}
    ) as ws:
        assert ws.response.headers["x-request-id"] == "ws-req-1"
        # The session's error events carry it too, and the session stays open.
        ws.send(json.dumps({"type": "response.create", "model": "local", "temperature": 9}))
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and error["request_id"] == "ws-req-1"
        ws.send("{not json")
        assert json.loads(ws.recv(timeout=10))["request_id"] == "ws-req-1"


def test_access_logs_never_hold_keys_or_bodies(make_proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    proxy = make_proxy(api_keys=(KEY,))
    with caplog.at_level(logging.DEBUG):
        some_traffic(proxy, key=KEY)
        # A refused key is logged as a 401, without the key it carried.
        r = httpx2.post(
            proxy.url + "/v1/responses",
            json={"model": "local", "input": SECRET_INPUT},
            headers={"authorization": "Bearer sk-wrong-98765"},
        )
        assert r.status_code == 401
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            rec.getMessage() == "websocket session" for rec in caplog.records
        ):
            time.sleep(0.05)
    responses = [rec.fields for rec in caplog.records if rec.name == "wsproxy.responses"]  # type: ignore[attr-defined]
    assert len(responses) == 3
    for line in responses:
        assert line["status"] == "completed" and line["model"] == "local" and line["provider"] == "local"
        assert line["output_tokens"] > 0 and 0 < line["ttft_ms"] <= line["duration_ms"]
        assert line["key"].startswith("key_")  # the key's digest, never the key
        assert line["request_id"].startswith("req_")
    assert len({line["request_id"] for line in responses}) == 3
    access = [rec for rec in caplog.records if rec.name == "wsproxy.access"]
    http_lines = [rec.fields for rec in access if rec.getMessage() == "http request"]  # type: ignore[attr-defined]
    ws_lines = [rec.fields for rec in access if rec.getMessage() == "websocket session"]  # type: ignore[attr-defined]
    assert [f["status"] for f in http_lines if f["path"] == "/v1/responses"] == [200, 200, 401]
    assert all(f["request_id"].startswith("req_") and f["duration_ms"] >= 0 for f in http_lines)
    assert ws_lines and ws_lines[0]["status"] == 101 and ws_lines[0]["close_code"] in (1000, 1005)
    formatter = JsonFormatter()
    # Everything the server side logged, at every level (the test's own clients log their
    # requests at DEBUG: websockets.client, httpx, openai).
    client_side = ("websockets.client", "httpx", "httpcore", "openai", "hpack")
    server_records = [rec for rec in caplog.records if not rec.name.startswith(client_side)]
    assert len(server_records) >= len(access)
    everything = "\n".join(formatter.format(rec) for rec in server_records)
    for secret in (KEY, "sk-wrong-98765", SECRET_INPUT):
        assert secret not in everything
    json.loads(formatter.format(access[0]))  # one JSON object per line


def test_json_formatter_merges_fields() -> None:
    record = logging.LogRecord("wsproxy.access", logging.INFO, __file__, 1, "http request", None, None)
    record.fields = {"status": 200, "path": "/v1/responses"}
    obj = json.loads(JsonFormatter().format(record))
    assert obj["message"] == "http request" and obj["status"] == 200 and obj["level"] == "info"
