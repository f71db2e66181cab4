"""Admission in process: one middleware authenticates every HTTP request and WebSocket handshake
(bearer header or the browser subprotocol), refuses before the upgrade, rate-limits per key, and
puts the principal in the scope; endpoints only raise ProxyError and one handler renders it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse

from tests.service.inprocess import BASE, local_settings
from wsproxy.asgi.admission import Caller, identity_of, owner_of, principal_of
from wsproxy.asgi.app import create_app
from wsproxy.policy.auth import principal_of as key_principal
from wsproxy.policy.keys import Principal

KEY = "sk-test-key"
OTHER = "sk-other-key"


def app_with(tmp_path: Path, **overrides: object) -> TestClient:
    app = create_app(local_settings(tmp_path, api_keys=(KEY, OTHER), **overrides), environ={})
    return TestClient(app, base_url=BASE)


def test_http_needs_a_key_everywhere_under_v1_except_the_426(tmp_path: Path) -> None:
    with app_with(tmp_path) as client:
        for method, path in [
            ("POST", "/v1/responses"),
            ("POST", "/v1/responses/compact"),
            ("GET", "/v1/models"),
            ("GET", "/v1/responses/resp_x"),
            ("DELETE", "/v1/responses/resp_x"),
            ("POST", "/v1/responses/resp_x/cancel"),
            ("GET", "/v1/responses/resp_x/input_items"),
        ]:
            r = client.request(method, path, json={})
            assert r.status_code == 401, (method, path)
            assert r.json()["error"]["code"] == "missing_api_key"
            assert r.headers["x-should-retry"] == "false"
        r = client.get("/v1/models", headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert "wrong" not in r.text  # keys are never echoed
        r = client.get("/v1/responses")
        assert r.status_code == 426 and r.headers["upgrade"] == "websocket"
        assert client.get("/healthz").status_code == 200


def test_an_authenticated_response_is_owned_by_its_key(tmp_path: Path) -> None:
    with app_with(tmp_path) as client:
        auth = {"authorization": f"Bearer {KEY}"}
        r = client.post("/v1/responses", json={"model": "local", "input": "hi"}, headers=auth)
        assert r.status_code == 200 and r.json()["status"] == "completed"
        rid = r.json()["id"]
        assert client.get(f"/v1/responses/{rid}", headers=auth).json()["id"] == rid
        # The principal is the key's digest: what the store records as the owner.
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        record = client.portal.call(runtime.store.get, rid)  # type: ignore[union-attr]
        assert record.owner == key_principal(KEY)
        # Another key does not see it at all.
        other = client.get(f"/v1/responses/{rid}", headers={"authorization": f"Bearer {OTHER}"})
        assert other.status_code == 404


def test_a_websocket_with_a_bad_key_is_refused_before_the_upgrade(tmp_path: Path) -> None:
    with app_with(tmp_path) as client:
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect("/v1/responses"):
                pass
        assert denied.value.status_code == 401
        assert denied.value.json()["error"]["code"] == "missing_api_key"
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect("/v1/responses", subprotocols=["openai-insecure-api-key.nope"]):
                pass
        assert denied.value.status_code == 401
        rejected = client.get("/metrics").text
        assert 'wsproxy_ws_rejected_total{status="401"} 2' in rejected


def test_the_browser_subprotocol_key_is_accepted_and_echoed(tmp_path: Path) -> None:
    proto = f"openai-insecure-api-key.{KEY}"
    with app_with(tmp_path) as client, client.websocket_connect("/v1/responses", subprotocols=[proto]) as ws:
        assert ws.accepted_subprotocol == proto
        ws.send_text(orjson.dumps({"type": "response.create", "model": "local", "input": "hi"}).decode())
        assert orjson.loads(ws.receive_text())["type"] == "response.created"


def test_the_rate_limit_is_applied_once_per_request_per_key(tmp_path: Path) -> None:
    with app_with(tmp_path) as client:
        auth = {"authorization": f"Bearer {KEY}"}
        # (rate_limit_rpm is a limits setting: WSPROXY_LIMITS_RATE_LIMIT_RPM)
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        from wsproxy.policy.ratelimit import RateLimiter

        runtime.limiter = RateLimiter(2)
        assert client.get("/v1/models", headers=auth).status_code == 200
        assert client.get("/v1/models", headers=auth).status_code == 200
        r = client.get("/v1/models", headers=auth)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"


def test_principal_helpers_read_the_scope() -> None:
    alice = Principal("alice", scopes=(("local",),))
    scope = {"type": "http", "wsproxy.principal": Caller(alice)}
    assert principal_of(scope).id == "alice" and owner_of(scope) == "alice"
    assert identity_of(scope) is alice
    assert owner_of({"type": "http"}) is None  # auth off: the anonymous principal
    assert identity_of({"type": "http"}) is None
