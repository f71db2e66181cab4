"""The browser guards over real sockets: Origin and Host checks (HTTP and the WebSocket handshake),
CORS for listed origins, and 415 for POSTs that are not JSON (wsproxy.asgi.guards).

The proxy is bound to 127.0.0.1 with no client keys: the setup the guards exist for."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx2
import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.e2e.sdk import client

EVIL = "https://evil.example"
APP = "http://app.example:3000"
BODY = orjson.dumps({"model": "local", "input": "hello"})
JSON = {"content-type": "application/json"}


def ws_url(proxy: Any) -> str:
    return proxy.url.replace("http", "ws") + "/v1/responses"


def stored_count(proxy: Any) -> int:
    # Every response the proxy ran is counted in its metrics.
    text = httpx2.get(proxy.url + "/metrics").text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("wsproxy_responses_total")
    )


def ws_turn(conn: Any, model: str = "local") -> dict[str, Any]:
    conn.send(orjson.dumps({"type": "response.create", "model": model, "input": "hi"}).decode())
    for _ in range(500):
        event = orjson.loads(conn.recv(timeout=10))
        if event["type"] in ("response.completed", "response.failed", "error"):
            return dict(event)
    raise AssertionError("no terminal event")


def raw_handshake(port: int, host: str, origin: str | None = None) -> tuple[int, bytes]:
    """A WebSocket upgrade with a Host of our choosing (rebinding): the status and the head."""
    lines = [
        "GET /v1/responses HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def assert_openai_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status
    error = orjson.loads(response.body if hasattr(response, "body") else response.content)["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}


# -- Origin --------------------------------------------------------------------------------------


def test_foreign_origin_refused_over_websocket_and_http(proxy) -> None:
    before = stored_count(proxy)
    with pytest.raises(InvalidStatus) as info:
        with connect(ws_url(proxy), origin=EVIL):  # type: ignore[arg-type]
            pass
    assert_openai_error(info.value.response, 403, "origin_not_allowed")

    r = httpx2.post(proxy.url + "/v1/responses", content=BODY, headers={**JSON, "origin": EVIL})
    assert_openai_error(r, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in r.headers
    r = httpx2.get(proxy.url + "/v1/models", headers={"origin": EVIL})
    assert_openai_error(r, 403, "origin_not_allowed")
    # Another host on the same port, a sandboxed page ("null"): not this origin either.
    for origin in (f"http://localhost:{proxy.port}", "null", f"http://127.0.0.1:{proxy.port + 1}"):
        r = httpx2.post(proxy.url + "/v1/responses", content=BODY, headers={**JSON, "origin": origin})
        assert r.status_code == 403, origin
    # A preflight from it gets no CORS answer either.
    r = httpx2.options(
        proxy.url + "/v1/responses", headers={"origin": EVIL, "access-control-request-method": "POST"}
    )
    assert r.status_code == 403
    assert "access-control-allow-origin" not in r.headers
    assert stored_count(proxy) == before  # nothing ran


def test_same_origin_and_no_origin_are_served(proxy) -> None:
    own = f"http://127.0.0.1:{proxy.port}"
    with connect(ws_url(proxy), origin=own) as conn:  # type: ignore[arg-type]
        assert ws_turn(conn)["type"] == "response.completed"
    r = httpx2.post(proxy.url + "/v1/responses", content=BODY, headers={**JSON, "origin": own})
    assert r.status_code == 200
    assert r.json()["status"] == "completed"
    # Same origin needs no CORS headers.
    assert "access-control-allow-origin" not in r.headers
    # No Origin at all: SDKs, curl, Codex.
    with connect(ws_url(proxy)) as conn:
        assert ws_turn(conn)["type"] == "response.completed"
    assert client(proxy).responses.create(model="local", input="x").status == "completed"


def test_listed_origin_gets_cors_on_preflight_json_sse_and_websocket(make_proxy) -> None:
    proxy = make_proxy(allowed_origins=(APP,))
    url = proxy.url + "/v1/responses"
    # The headers the openai JS SDK sends from a browser.
    asked = (
        "authorization, content-type, x-stainless-arch, x-stainless-lang, x-stainless-os, "
        "x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, "
        "x-stainless-runtime-version, x-stainless-timeout, openai-beta, idempotency-key, x-request-id"
    )
    r = httpx2.options(
        url,
        headers={
            "origin": APP,
            "access-control-request-method": "POST",
            "access-control-request-headers": asked,
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == APP
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {h.strip() for h in asked.split(",")} <= allowed
    assert "Origin" in r.headers["vary"]

    r = httpx2.post(url, content=BODY, headers={**JSON, "origin": APP})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == APP
    assert "Origin" in r.headers["vary"]
    assert "x-should-retry" in r.headers["access-control-expose-headers"]

    sse = orjson.dumps({"model": "local", "input": "hello", "stream": True})
    with httpx2.stream("POST", url, content=sse, headers={**JSON, "origin": APP}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["access-control-allow-origin"] == APP
        assert b"response.completed" in b"".join(stream.iter_bytes())

    # Errors are readable by the listed page too (here: a bad body).
    r = httpx2.post(url, content=b"{}", headers={**JSON, "origin": APP})
    assert r.status_code == 400
    assert r.headers["access-control-allow-origin"] == APP
    r = httpx2.get(proxy.url + "/v1/models", headers={"origin": APP})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == APP

    with connect(ws_url(proxy), origin=APP) as conn:  # type: ignore[arg-type]
        assert ws_turn(conn)["type"] == "response.completed"
    # Listing one origin does not open the door to others.
    with pytest.raises(InvalidStatus) as info:
        with connect(ws_url(proxy), origin=EVIL):  # type: ignore[arg-type]
            pass
    assert info.value.response.status_code == 403


# -- Host ----------------------------------------------------------------------------------------


def test_rebinding_host_refused_on_loopback(proxy) -> None:
    port = proxy.port
    r = httpx2.get(proxy.url + "/v1/models", headers={"host": f"evil.example:{port}"})
    assert_openai_error(r, 403, "host_not_allowed")
    # A rebound page is "same origin" with its Host: the Host check comes first.
    r = httpx2.post(
        proxy.url + "/v1/responses",
        content=BODY,
        headers={**JSON, "host": f"evil.example:{port}", "origin": f"http://evil.example:{port}"},
    )
    assert_openai_error(r, 403, "host_not_allowed")
    status, head = raw_handshake(port, f"evil.example:{port}")
    assert status == 403
    assert b"upgrade: websocket" not in head.lower()

    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
        assert httpx2.get(proxy.url + "/v1/models", headers={"host": host}).status_code == 200, host
    assert raw_handshake(port, f"localhost:{port}")[0] == 101
    # Probes address the server by whatever name: health is exempt.
    assert httpx2.get(proxy.url + "/healthz", headers={"host": "10.1.2.3:8080"}).status_code == 200


def test_allowed_hosts_replace_the_loopback_names(make_proxy) -> None:
    proxy = make_proxy(allowed_hosts=("proxy.internal",))
    port = proxy.port
    assert httpx2.get(proxy.url + "/v1/models", headers={"host": f"proxy.internal:{port}"}).status_code == 200
    assert httpx2.get(proxy.url + "/v1/models", headers={"host": f"127.0.0.1:{port}"}).status_code == 403
    assert raw_handshake(port, f"proxy.internal:{port}")[0] == 101


# -- Content-Type --------------------------------------------------------------------------------


def test_post_that_is_not_json_gets_415(make_proxy) -> None:
    proxy = make_proxy(allowed_origins=(APP,))
    before = stored_count(proxy)
    url = proxy.url + "/v1/responses"
    # What a cross-site page can send without a preflight: text/plain, a form.
    for content_type in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded"):
        r = httpx2.post(url, content=BODY, headers={"content-type": content_type})
        assert_openai_error(r, 415, "unsupported_media_type")
    # No Content-Type with a body is refused too; from a listed origin the refusal is readable.
    r = httpx2.post(url, content=BODY, headers={"origin": APP})
    assert_openai_error(r, 415, "unsupported_media_type")
    assert r.headers["access-control-allow-origin"] == APP
    assert stored_count(proxy) == before
    # A bodiless POST (the JS SDK's cancel) is not a media-type question: it reaches its route.
    r = httpx2.post(proxy.url + "/v1/responses/resp_unknown/cancel")
    assert r.status_code == 404
    # Parameters and case do not matter.
    r = httpx2.post(url, content=BODY, headers={"content-type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 200
