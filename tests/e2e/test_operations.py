"""Operator-facing behaviour: rate limits, health, readiness, metrics, the 426 fallback."""

from __future__ import annotations

import httpx2
import openai
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.e2e.sdk import client


def test_rate_limited_key_gets_429_with_retry_after(make_proxy) -> None:
    from wsproxy.settings import LimitSettings

    proxy = make_proxy(api_keys=("sk-a", "sk-b"), limits=LimitSettings(rate_limit_rpm=3))
    a, b = client(proxy, "sk-a"), client(proxy, "sk-b")
    for _ in range(3):
        a.responses.create(model="local", input="x")
    with pytest.raises(openai.RateLimitError) as info:
        a.responses.create(model="local", input="x")
    # 3 per minute: the next token is about 20 s away (less the time the first calls took).
    assert 15 <= int(info.value.response.headers["retry-after"]) <= 20
    assert info.value.body["code"] == "rate_limit_exceeded"
    # Another key has its own bucket.
    assert b.responses.create(model="local", input="x").status == "completed"
    # The WebSocket handshake is refused the same way, before the upgrade.
    with pytest.raises(InvalidStatus) as ws_info:
        with connect(
            proxy.url.replace("http", "ws") + "/v1/responses",
            additional_headers={"Authorization": "Bearer sk-a"},
        ):
            pass
    assert ws_info.value.response.status_code == 429


def test_health_readiness_metrics(proxy) -> None:
    c = client(proxy)
    c.responses.create(model="local", input="count me")
    with httpx2.Client(base_url=proxy.url) as http:
        assert http.get("/healthz").text == "ok"
        assert http.get("/readyz").status_code == 200
        metrics = http.get("/metrics").text
    assert 'wsproxy_responses_total{model="local",provider="local",status="completed"}' in metrics
    line = next(
        x
        for x in metrics.splitlines()
        if x.startswith('wsproxy_tokens_total{kind="output",model="local",provider="local"}')
    )
    assert float(line.split()[-1]) > 0


def test_plain_get_is_426_at_once(proxy) -> None:
    with httpx2.Client(base_url=proxy.url) as http:
        r = http.get("/v1/responses")
    assert r.status_code == 426
    assert r.json()["error"]["code"] == "upgrade_required"


def test_browser_subprotocol_auth(make_proxy) -> None:
    proxy = make_proxy(api_keys=("sk-browser",))
    url = proxy.url.replace("http", "ws") + "/v1/responses"
    with connect(url, subprotocols=["openai-insecure-api-key.sk-browser"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "openai-insecure-api-key.sk-browser"
        ws.send('{"type":"response.create","model":"local","input":"hi"}')
        for _ in range(500):
            if '"response.completed"' in ws.recv(timeout=10):
                break
        else:
            raise AssertionError("no completion")
    with pytest.raises(InvalidStatus) as info:
        with connect(url, subprotocols=["openai-insecure-api-key.wrong"]):  # type: ignore[list-item]
            pass
    assert info.value.response.status_code == 401
