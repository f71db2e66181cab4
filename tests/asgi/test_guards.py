"""The guards' rules, pure: Host and Origin parsing, same-origin, which Hosts a binding serves,
the CORS header list, the JSON media type. (Over real sockets: tests/e2e/test_browser_guards.py.)"""

from __future__ import annotations

import pytest

from wsproxy.asgi.guards import (
    HostRule,
    canonical_origin,
    cors_allow_headers,
    is_json_media_type,
    parse_origin,
    same_origin,
    split_host,
)


def test_split_host() -> None:
    assert split_host("Example.COM:8080") == ("example.com", 8080)
    assert split_host("localhost") == ("localhost", None)
    assert split_host("[::1]:9") == ("::1", 9)
    assert split_host("[::1]") == ("::1", None)
    for bad in ("", ":80", "host:x", "host:70000", "[::1", "[::1]x"):
        assert split_host(bad) is None, bad


def test_origins() -> None:
    assert parse_origin("https://App.example") == ("https", "app.example", 443)
    assert parse_origin("http://127.0.0.1:8080") == ("http", "127.0.0.1", 8080)
    for bad in ("null", "file://", "ftp://x", "https://x/path", "https://x:bad"):
        assert parse_origin(bad) is None, bad
    assert canonical_origin("https://app.example/") == canonical_origin("https://APP.example:443")


def test_same_origin_compares_host_and_port() -> None:
    page = parse_origin("http://127.0.0.1:8080")
    assert page is not None
    assert same_origin(page, "127.0.0.1:8080")
    assert not same_origin(page, "127.0.0.1:8081")
    assert not same_origin(page, "localhost:8080")
    assert not same_origin(page, None)
    https = parse_origin("https://proxy.example")
    assert https is not None
    assert same_origin(https, "proxy.example")  # behind TLS: no port in Host
    assert not same_origin(https, "proxy.example:80")


@pytest.mark.parametrize("bind", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_binding_serves_only_local_names(bind) -> None:
    rule = HostRule((), bind)
    for host in ("localhost:8080", "127.0.0.1:1", "[::1]:8080", "LOCALHOST", None):
        assert rule.allows(host), host
    for host in ("evil.example:8080", "127.0.0.1.evil.example", "10.0.0.1:8080", ""):
        assert not rule.allows(host), host


def test_other_bindings_serve_any_host_unless_listed() -> None:
    assert HostRule((), "0.0.0.0").allows("anything.example:1")
    listed = HostRule(("proxy.example", "other.example:8443"), "0.0.0.0")
    assert listed.allows("proxy.example:9999")
    assert listed.allows("other.example:8443")
    assert not listed.allows("other.example:8444")
    assert not listed.allows("localhost:8080")
    assert HostRule(("*",), "127.0.0.1").allows("evil.example")
    with pytest.raises(ValueError):
        HostRule(("bad:host:name",), "0.0.0.0")


def test_cors_headers_allow_the_sdk_stainless_headers_only() -> None:
    allowed = cors_allow_headers("X-Stainless-OS, x-stainless-retry-count, x-custom, x-stainless-bad header")
    names = allowed.split(", ")
    assert {"authorization", "content-type", "openai-beta", "idempotency-key", "x-request-id"} <= set(names)
    assert {"x-stainless-os", "x-stainless-retry-count"} <= set(names)
    assert "x-custom" not in names
    assert not any(" " in name for name in names)


def test_json_media_type() -> None:
    assert is_json_media_type("application/json")
    assert is_json_media_type("Application/JSON; charset=utf-8")
    assert not is_json_media_type("text/plain")
    assert not is_json_media_type("application/jsonp")
