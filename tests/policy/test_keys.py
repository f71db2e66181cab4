"""Principals: named keys by digest, model scopes after routing, client addresses, usage dates,
and the response cache's rules."""

from __future__ import annotations

import pytest

from wsproxy.core.request import parse_create
from wsproxy.errors import InvalidRequest, Unauthorized
from wsproxy.policy import respcache
from wsproxy.policy.auth import KeyRing, key_digest, principal_of
from wsproxy.policy.keys import Limits, Principal, client_address, parse_networks
from wsproxy.policy.routing import Router
from wsproxy.policy.usage import date_range, dates_between, utc_date

ROUTER = Router(
    {"openai": ("gpt-4o",), "anthropic": (), "local": ("local",)},
    {"fast": ("local@local",), "smart": ("anthropic@claude", "openai@gpt-4o")},
    "openai",
)


def allowed(patterns: tuple[str, ...], model: str) -> bool:
    return Principal("p", scopes=(patterns,)).allows(model, ROUTER.route(model), ROUTER.route)


def test_named_keys_by_digest_and_unscoped_keys() -> None:
    alice = Principal("alice", scopes=(("local",),), limits=Limits(rpm=3), cache=True)
    ring = KeyRing(["sk-plain"], {key_digest("sk-alice"): alice}, admin_keys=["sk-root"])
    assert ring.identify("sk-alice") == alice
    assert ring.authenticate("sk-alice") == "alice"
    plain = ring.identify("sk-plain")
    assert (
        plain is not None and plain.name == principal_of("sk-plain") and not plain.admin and not plain.scopes
    )
    root = ring.identify("sk-root")
    assert root is not None and root.admin
    for wrong in ("sk-alic", "sk-alice ", key_digest("sk-alice")):
        with pytest.raises(Unauthorized):
            ring.identify(wrong)
    assert len(key_digest("x")) == 64


@pytest.mark.parametrize(
    ("patterns", "model", "expected"),
    [
        (("local",), "local", True),
        (("local",), "local@local", True),  # a bare name matches after routing
        (("fast",), "local@local", True),  # so does an alias: it allows what it routes to
        (("fast",), "fast", True),
        (("local@local",), "fast", True),  # an alias whose whole chain is allowed
        (("gpt-4o",), "openai@gpt-4o", True),
        (("openai@*",), "gpt-4o", True),
        (("openai@*",), "gpt-5", True),  # unlisted names go to the default provider
        (("openai@*",), "smart", False),  # its chain falls back to another provider
        (("openai@*", "anthropic@*"), "smart", True),
        (("smart",), "anthropic@claude", True),
        (("local",), "openai@local", False),
        (("local",), "gpt-4o", False),
        (("nosuch@x",), "gpt-4o", False),  # a pattern naming no provider allows nothing
    ],
)
def test_model_scopes(patterns: tuple[str, ...], model: str, expected: bool) -> None:
    assert allowed(patterns, model) is expected


def test_unscoped_allows_everything_and_narrowing_only_restricts() -> None:
    free = Principal("p")
    assert free.allows("anything", ROUTER.route("anything"), ROUTER.route) and free.models is None
    scoped = Principal("p", scopes=(("local", "gpt-4o"),), admin=True)
    secret = scoped.narrowed(["local", "anthropic@*"])
    assert secret.name == "p" and not secret.admin and secret.models == ("local", "gpt-4o")
    assert secret.allows("local", ROUTER.route("local"), ROUTER.route)
    assert not secret.allows("gpt-4o", ROUTER.route("gpt-4o"), ROUTER.route)  # not in the subset
    assert not secret.allows("smart", ROUTER.route("smart"), ROUTER.route)  # not in the key's list


def test_client_address_trusts_only_configured_proxies() -> None:
    trusted = parse_networks(["10.0.0.0/8", "127.0.0.1"])
    assert client_address("203.0.113.9", "1.2.3.4", trusted) == "203.0.113.9"  # peer not trusted
    assert client_address("10.1.1.1", "1.2.3.4", trusted) == "1.2.3.4"
    assert client_address("10.1.1.1", "6.6.6.6, 1.2.3.4, 10.2.2.2", trusted) == "1.2.3.4"
    assert client_address("10.1.1.1", None, trusted) == "10.1.1.1"
    assert client_address("10.1.1.1", "1.2.3.4", ()) == "10.1.1.1"
    assert client_address(None, None, trusted) == "unknown"
    with pytest.raises(ValueError):
        parse_networks(["not-an-ip"])


def test_usage_dates() -> None:
    assert utc_date(1_767_225_599.0) == "2025-12-31" and utc_date(1_767_225_600.0) == "2026-01-01"
    assert date_range(None, None, "2026-03-31") == ("2026-03-01", "2026-03-31")
    assert date_range("2026-01-01", "2026-01-01", "2026-03-31") == ("2026-01-01", "2026-01-01")
    for start, end in [("2026-1-01", None), ("2026-02-30", None), (None, "x"), ("2026-02-02", "2026-02-01"),
                       ("2024-01-01", "2026-01-01")]:  # fmt: skip
        with pytest.raises(InvalidRequest):
            date_range(start, end, "2026-03-31")
    assert dates_between("2025-12-30", "2026-01-02") == [
        "2025-12-30",
        "2025-12-31",
        "2026-01-01",
        "2026-01-02",
    ]


def test_response_cache_rules() -> None:
    def req(**body: object) -> object:
        return parse_create({"model": "local", "input": "hi", **body}, websocket=False)

    assert respcache.cacheable(req(temperature=0))  # type: ignore[arg-type]
    assert respcache.cacheable(req(seed=7))  # type: ignore[arg-type]
    assert not respcache.cacheable(req())  # type: ignore[arg-type]
    assert not respcache.cacheable(req(temperature=0.2))  # type: ignore[arg-type]
    assert not respcache.cacheable(req(temperature=0, background=True))  # type: ignore[arg-type]
    a = respcache.cache_key("alice", req(temperature=0, input="x", store=True))  # type: ignore[arg-type]
    assert a == respcache.cache_key("alice", req(store=True, input="x", temperature=0, stream=True))  # type: ignore[arg-type]
    assert a != respcache.cache_key("bob", req(temperature=0, input="x", store=True))  # type: ignore[arg-type]
    assert a != respcache.cache_key("alice", req(temperature=0, input="y", store=True))  # type: ignore[arg-type]
    assert respcache.wanted(None, True) and not respcache.wanted(None, False)
    assert respcache.wanted("on", False) and not respcache.wanted("OFF", True)
    assert respcache.wanted("garbage", True)
