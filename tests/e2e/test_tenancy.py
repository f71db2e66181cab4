"""Running wsproxy for a team, over real sockets: scoped keys, limits (HTTP and WebSocket),
usage matching the responses' own usage, and the response cache (never across principals)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from tests.e2e.sdk import client
from tests.e2e.test_sdk_websocket import until_terminal
from tests.fakes.servers import UvicornThread
from wsproxy.asgi.app import create_app
from wsproxy.policy.auth import key_digest
from wsproxy.settings import load_settings

TEAM = """
admin_keys = ["sk-admin"]

[keys.alice]
sha256 = "{alice}"
models = ["local", "fast"]
rpm = 3

[keys.bob]
sha256 = "{bob}"
cache = true

[keys.tok]
sha256 = "{tok}"
tokens_per_day = 150

[aliases]
fast = ["local@local"]

[providers.local]
kind = "local"
token_delay = 0.0
models = ["local"]

[providers.other]
kind = "local"
token_delay = 0.0

[providers.slow]
kind = "local"
token_delay = 0.1
"""


def scraped(proxy: UvicornThread, series: str) -> float:
    """The value of one series in the proxy's /metrics (0 when absent)."""
    for line in httpx2.get(proxy.url + "/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., UvicornThread]]:
    servers: list[UvicornThread] = []

    def _start(extra: str = "", team: bool = True) -> UvicornThread:
        cfg = tmp_path / f"team{len(servers)}.toml"
        body = TEAM.format(alice=key_digest("sk-alice"), bob=key_digest("sk-bob"), tok=key_digest("sk-tok"))
        if not team:
            body = '[providers.local]\nkind = "local"\ntoken_delay = 0.0\n'
        cfg.write_text(f'{body}\n{extra}\n[store]\nbackend = "sqlite"\npath = "{tmp_path / "s.db"}"\n')
        app = create_app(load_settings(str(cfg), environ={}), environ={})
        # As `wsproxy serve` runs it: uvicorn does not rewrite the client from X-Forwarded-For.
        server = UvicornThread(app, proxy_headers=False).start()
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()


def http(proxy: UvicornThread, key: str | None, body: dict[str, Any], **headers: str) -> httpx2.Response:
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx2.post(proxy.url + "/v1/responses", json=body, headers=headers, timeout=10)


def usage(proxy: UvicornThread, api_key: str | None, **params: str) -> httpx2.Response:
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx2.get(proxy.url + "/v1/usage", params=params, headers=headers, timeout=10)


def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Settlements and usage rows are written just after a response ends: poll, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def not_near_minute_end() -> None:
    # Per-minute windows start on the minute: keep a short test inside one window.
    left = 60 - time.time() % 60
    if left < 8:
        time.sleep(left + 0.1)


# ----------------------------------------------------------------------------------------- scopes


def test_model_scopes_over_http_and_websocket(start) -> None:
    proxy = start()
    alice = client(proxy, "sk-alice")
    assert alice.responses.create(model="local", input="hi").status == "completed"
    # A bare name matches after routing: the alias and the provider@model it routes to.
    assert alice.responses.create(model="fast", input="hi").status == "completed"
    with pytest.raises(openai.PermissionDeniedError) as info:
        alice.responses.create(model="other@local", input="hi")
    assert info.value.status_code == 403
    assert info.value.body["code"] == "model_not_allowed" and info.value.body["param"] == "model"
    with alice.responses.connect() as conn:
        conn.response.create(model="other@local", input="hi")
        err = until_terminal(conn)[-1]
        assert err.type == "error" and err.status == 403 and err.error.code == "model_not_allowed"
        conn.response.create(model="local@local", input="still open")
        assert until_terminal(conn)[-1].type == "response.completed"
    # An unscoped key may use any model; a wrong key is still a 401.
    assert client(proxy, "sk-bob").responses.create(model="other@local", input="x").status == "completed"
    with pytest.raises(openai.AuthenticationError):
        client(proxy, "sk-nobody").responses.create(model="local", input="x")


# ----------------------------------------------------------------------------------------- limits


def test_request_limit_over_http_then_websocket(start) -> None:
    proxy = start()
    not_near_minute_end()
    for _ in range(3):
        assert http(proxy, "sk-alice", {"model": "local", "input": "x"}).status_code == 200
    refused = http(proxy, "sk-alice", {"model": "local", "input": "x"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # SSE: refused before the stream starts, as an HTTP 429.
    sse = http(proxy, "sk-alice", {"model": "local", "input": "x", "stream": True})
    assert sse.status_code == 429 and "retry-after" in sse.headers
    # Another key has its own counters.
    assert http(proxy, "sk-bob", {"model": "local", "input": "x"}).status_code == 200
    with client(proxy, "sk-alice").responses.connect() as conn:
        conn.response.create(model="local", input="over the limit")
        err = until_terminal(conn)[-1]
        assert err.type == "error" and err.status == 429
        assert err.error.code == "rate_limit_exceeded"
        assert 1 <= int(err.error.headers["retry-after"]) <= 60
        # The socket stays open: the next frame is answered.
        conn.send({"type": "response.create", "model": "local", "input": "x", "temperature": "hot"})
        err = until_terminal(conn)[-1]
        assert err.type == "error" and err.status == 400
    # Each refusal is counted by the limit that refused it (HTTP, SSE, WebSocket: three).
    assert scraped(proxy, 'wsproxy_rate_limited_total{scope="rpm"}') == 3


def test_token_limit_counts_reported_usage(start, tmp_path: Path) -> None:
    proxy = start()
    # A reservation larger than the limit itself can never be admitted.
    big = http(proxy, "sk-tok", {"model": "local", "input": "x", "max_output_tokens": 500})
    assert big.status_code == 429 and "Request too large" in big.json()["error"]["message"]
    used = 0
    answered = 0
    for _ in range(20):
        r = http(proxy, "sk-tok", {"model": "local", "input": "one two three"})
        if r.status_code == 429:
            break
        assert r.status_code == 200
        u = r.json()["usage"]
        used += u["input_tokens"] + u["output_tokens"]
        answered += 1

        def settled(expected: int = used) -> bool:
            with sqlite3.connect(tmp_path / "s.db") as db:
                row = db.execute("SELECT value FROM counters WHERE key LIKE 'tok:tpd:%'").fetchone()
            return row is not None and row[0] == expected

        # After each response the day's counter holds exactly the usage the model reported.
        assert wait_for(settled), "the token counter was not settled to the reported usage"
    assert 0 < answered < 20 and 100 < used <= 150
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_ip_limit_without_auth_trusts_forwarded_for_only_from_trusted_proxies(start) -> None:
    trusting = start('[limits]\nip_rpm = 2\ntrusted_proxies = ["127.0.0.0/8"]', team=False)
    not_near_minute_end()
    body = {"model": "local", "input": "x"}
    for _ in range(2):
        assert http(trusting, None, body, **{"x-forwarded-for": "203.0.113.5"}).status_code == 200
    assert http(trusting, None, body, **{"x-forwarded-for": "203.0.113.5"}).status_code == 429
    # A client cannot pick its address by writing the header itself: the rightmost untrusted hop.
    spoofed = {"x-forwarded-for": "198.51.100.1, 203.0.113.5"}
    assert http(trusting, None, body, **spoofed).status_code == 429
    assert http(trusting, None, body, **{"x-forwarded-for": "203.0.113.6"}).status_code == 200

    untrusting = start("[limits]\nip_rpm = 2", team=False)
    for i in range(2):
        assert http(untrusting, None, body, **{"x-forwarded-for": f"203.0.113.{i}"}).status_code == 200
    assert http(untrusting, None, body, **{"x-forwarded-for": "203.0.113.9"}).status_code == 429


# ------------------------------------------------------------------------------------------ usage


def _rows(proxy: UvicornThread, api_key: str, **params: str) -> list[dict[str, Any]]:
    r = usage(proxy, api_key, **params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    return list(body["data"])


def test_usage_matches_the_responses_own_usage(start) -> None:
    proxy = start()
    bob = client(proxy, "sk-bob")
    expected = {"requests": 0, "input_tokens": 0, "output_tokens": 0}

    def add(u: Any) -> None:
        expected["requests"] += 1
        expected["input_tokens"] += u.input_tokens
        expected["output_tokens"] += u.output_tokens

    add(bob.responses.create(model="local", input="json answer").usage)
    final = None
    for event in bob.responses.create(model="local", input="sse answer", stream=True):
        if event.type == "response.completed":
            final = event.response
    assert final is not None
    add(final.usage)
    with bob.responses.connect() as conn:
        conn.response.create(model="local", input="websocket answer with more words")
        add(until_terminal(conn)[-1].response.usage)
    client(proxy, "sk-alice").responses.create(model="local", input="alice's own")

    def bob_local() -> dict[str, Any] | None:
        rows = [r for r in _rows(proxy, "sk-bob") if r["model"] == "local"]
        return rows[0] if rows and rows[0]["requests"] == expected["requests"] else None

    row = wait_for(bob_local)
    assert row is not None
    assert {k: row[k] for k in expected} == expected
    assert row["key"] == "bob" and row["date"] == time.strftime("%Y-%m-%d", time.gmtime())
    assert set(row) == {
        "date", "model", "requests", "input_tokens", "output_tokens", "cached_tokens",
        "reasoning_tokens", "key",
    }  # fmt: skip
    assert all(r["key"] == "bob" for r in _rows(proxy, "sk-bob"))
    # Only an admin reads other keys' usage.
    forbidden = usage(proxy, "sk-bob", key="alice")
    assert forbidden.status_code == 403 and forbidden.json()["error"]["param"] == "key"
    assert [r["key"] for r in _rows(proxy, "sk-admin", key="alice")] == ["alice"]
    assert {r["key"] for r in _rows(proxy, "sk-admin")} == {"alice", "bob"}
    # Filters are validated and applied.
    assert _rows(proxy, "sk-bob", start_date="2000-01-01", end_date="2000-01-31") == []
    for params in ({"start_date": "2026-13-01"}, {"end_date": "yesterday"}, {"start_date": "2026-02-02",
                   "end_date": "2026-02-01"}, {"user": "x"}):  # fmt: skip
        bad = usage(proxy, "sk-bob", **params)
        assert bad.status_code == 400, params
        assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    assert usage(proxy, None).status_code == 401


def test_cancelled_response_counts_its_partial_usage(start) -> None:
    proxy = start()
    body = {"model": "slow@local", "input": " ".join(["word"] * 40), "stream": True}
    with httpx2.stream(
        "POST", proxy.url + "/v1/responses", json=body, headers={"authorization": "Bearer sk-bob"}, timeout=10
    ) as r:
        deltas = 0
        for line in r.iter_lines():
            if line.startswith("event: response.output_text.delta"):
                deltas += 1
                if deltas == 3:
                    break  # the client leaves mid-response

    def slow_row() -> dict[str, Any] | None:
        rows = [x for x in _rows(proxy, "sk-bob") if x["model"] == "slow@local"]
        return rows[0] if rows else None

    row = wait_for(slow_row)
    assert row is not None and row["requests"] == 1
    # Partial: at least what the client saw, far less than the full answer (49 tokens).
    assert 3 <= row["output_tokens"] < 40 and row["input_tokens"] > 0


# ------------------------------------------------------------------------------------------ cache


def test_response_cache_hits_misses_and_principals(start) -> None:
    proxy = start()
    body = {"model": "local", "input": "cache me", "temperature": 0}
    first = http(proxy, "sk-bob", body)
    assert first.status_code == 200 and first.headers["x-wsproxy-cache"] == "miss"

    hit = wait_for(lambda: (r := http(proxy, "sk-bob", body)).headers["x-wsproxy-cache"] == "hit" and r)
    assert hit, "the second identical request was not answered from the cache"
    a, b = first.json(), hit.json()
    assert b["id"] != a["id"] and b["x_wsproxy_cache"] == "hit"
    # Replayed, not recomputed: the local model makes new item ids on every run.
    assert b["output"] == a["output"] and b["usage"] == a["usage"]
    # The hit is a stored response of its own: it can be retrieved and continued.
    bob = client(proxy, "sk-bob")
    assert bob.responses.retrieve(b["id"]).output_text == bob.responses.retrieve(a["id"]).output_text
    follow = bob.responses.create(model="local", input="more", previous_response_id=b["id"])
    assert follow.status == "completed"

    # SSE: the same events, marked by the header.
    sse = http(proxy, "sk-bob", {**body, "stream": True})
    assert sse.headers["x-wsproxy-cache"] == "hit" and "response.output_text.delta" in sse.text
    assert a["output"][0]["id"] in sse.text
    # WebSocket mode: marked in the Response object.
    with bob.responses.connect() as conn:
        conn.response.create(**body)
        events = until_terminal(conn)
        assert events[-1].type == "response.completed"
        assert events[-1].response.model_extra.get("x_wsproxy_cache") == "hit"
        assert events[-1].response.output[0].id == a["output"][0]["id"]
        assert "response.output_text.delta" in [e.type for e in events]

    # Not deterministic: not cached, no header.
    assert "x-wsproxy-cache" not in http(proxy, "sk-bob", {"model": "local", "input": "cache me"}).headers
    # Never across principals: alice asks for the very same body, her first is a miss.
    alice = http(proxy, "sk-alice", body, **{"x-wsproxy-cache": "on"})
    assert alice.headers["x-wsproxy-cache"] == "miss"
    assert alice.json()["output"][0]["id"] != a["output"][0]["id"]
    # The header turns it off for a key that has it on.
    assert "x-wsproxy-cache" not in http(proxy, "sk-bob", body, **{"x-wsproxy-cache": "off"}).headers
    # A hit is a request without tokens in the usage.
    rows = wait_for(
        lambda: [r for r in _rows(proxy, "sk-bob") if r["model"] == "local" and r["requests"] >= 7]
    )
    # The lookups are counted: bob's first and alice's first missed; bob's JSON, SSE and WebSocket
    # repeats hit (the first repeat may come before the entry is written: a miss, and wait_for
    # asks again).
    assert scraped(proxy, 'wsproxy_cache_requests_total{result="hit"}') >= 3
    assert scraped(proxy, 'wsproxy_cache_requests_total{result="miss"}') >= 2
    assert rows and rows[0]["output_tokens"] < 7 * a["usage"]["output_tokens"]
