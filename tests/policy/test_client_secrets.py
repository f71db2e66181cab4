"""Client secrets, pure: signing, verification with an injected clock, scopes, the mint body."""

from __future__ import annotations

import pytest

from wsproxy.errors import InvalidRequest, Unauthorized
from wsproxy.policy.client_secrets import (
    MIN_SECONDS,
    ClientSecret,
    is_client_secret,
    mint,
    parse_mint_request,
    verify,
)

KEY = b"k" * 32
NOW = 1_700_000_000


def test_round_trip_keeps_principal_expiry_and_models() -> None:
    secret = mint(KEY, "key_abc", NOW + 60, ("local", "gpt-x"))
    assert is_client_secret(secret)
    # Token characters only: it fits a WebSocket subprotocol.
    assert all(c.isalnum() or c in "-_." for c in secret)
    assert verify(KEY, secret, NOW) == ClientSecret("key_abc", NOW + 60, ("local", "gpt-x"))
    anyone = verify(KEY, mint(KEY, None, NOW + 60, None), NOW)
    assert anyone.principal is None and anyone.models is None and anyone.allows("whatever")


def test_expiry_uses_the_given_clock() -> None:
    secret = mint(KEY, "key_abc", NOW + 60, None)
    assert verify(KEY, secret, NOW + 59.9).expires_at == NOW + 60
    with pytest.raises(Unauthorized) as info:
        verify(KEY, secret, NOW + 60)
    assert info.value.code == "client_secret_expired"


def test_scope() -> None:
    grant = verify(KEY, mint(KEY, "key_abc", NOW + 60, ("local",)), NOW)
    assert grant.allows("local")
    assert not grant.allows("openai@gpt-5")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s.replace("ek_", "ek_x", 1),  # payload changed
        lambda s: s[:-3] + ("AAA" if not s.endswith("AAA") else "BBB"),  # MAC changed
        lambda s: s.split(".")[0],  # no MAC
        lambda s: s + "=",  # not the canonical spelling
        lambda s: "ek_" + "A" * 9000,  # too long to read
        lambda s: "ek_%%%.%%%",  # not base64
    ],
)
def test_tampered_or_malformed_secrets_are_invalid_keys(mangle) -> None:
    secret = mint(KEY, "key_abc", NOW + 60, ("local",))
    with pytest.raises(Unauthorized) as info:
        verify(KEY, mangle(secret), NOW)
    assert info.value.code == "invalid_api_key"


def test_another_key_does_not_verify() -> None:
    with pytest.raises(Unauthorized):
        verify(b"other", mint(KEY, "key_abc", NOW + 60, None), NOW)


def test_mint_request_bounds() -> None:
    assert parse_mint_request({}, 600).seconds == 600
    ask = parse_mint_request(
        {"expires_after": {"anchor": "created_at", "seconds": 30}, "models": ["a", "a"]}, 600
    )
    assert (ask.seconds, ask.models) == (30, ("a",))
    for bad in (
        {"expires_after": {"seconds": 601}},
        {"expires_after": {"seconds": MIN_SECONDS - 1}},
        {"expires_after": {"seconds": True}},
        {"expires_after": {"seconds": float("inf")}},
        {"expires_after": {"anchor": "now"}},
        {"expires_after": 5},
        {"models": "local"},
        {"models": [""]},
        {"models": ["m"] * 33},
        {"extra": 1},
    ):
        with pytest.raises(InvalidRequest):
            parse_mint_request(bad, 600)
