"""KeyRing, bearer_token, key_from_subprotocols."""

from __future__ import annotations

import pytest

from wsproxy.errors import Unauthorized
from wsproxy.policy.auth import (
    BROWSER_KEY_SUBPROTOCOL,
    KeyRing,
    bearer_token,
    key_from_subprotocols,
    principal_of,
)


def test_no_keys_means_auth_is_off() -> None:
    ring = KeyRing([])
    assert not ring.enabled
    assert ring.authenticate(None) is None
    assert ring.authenticate("anything") is None
    assert not KeyRing([""]).enabled  # empty keys are ignored


def test_known_keys_map_to_stable_distinct_principals() -> None:
    ring = KeyRing(["sk-one", "sk-two", ""])
    assert ring.enabled
    one, two = ring.authenticate("sk-one"), ring.authenticate("sk-two")
    assert one == principal_of("sk-one") and two == principal_of("sk-two")
    assert one != two
    assert one is not None and "sk-one" not in one and one.startswith("key_")
    assert KeyRing(["sk-one"]).authenticate("sk-one") == one  # stable across rings


@pytest.mark.parametrize("key", [None, ""])
def test_missing_key(key: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        KeyRing(["sk-one"]).authenticate(key)
    assert (info.value.status, info.value.code) == (401, "missing_api_key")


@pytest.mark.parametrize("key", ["sk-on", "sk-one ", "SK-ONE", "sk-one\n", "sk-onex"])
def test_wrong_key(key: str) -> None:
    with pytest.raises(Unauthorized) as info:
        KeyRing(["sk-one"]).authenticate(key)
    assert (info.value.status, info.value.code) == (401, "invalid_api_key")
    assert key.strip() not in info.value.message  # never echo the key


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer sk-1", "sk-1"),
        ("bearer sk-1", "sk-1"),
        ("BEARER sk-1", "sk-1"),
        ("Bearer   sk-1  ", "sk-1"),
        ("Bearer ", None),
        ("Bearer", None),
        ("Basic dXNlcjpwYXNz", None),
        ("sk-1", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_key_from_subprotocols() -> None:
    proto = BROWSER_KEY_SUBPROTOCOL + "sk-1"
    assert key_from_subprotocols(["realtime", proto]) == ("sk-1", proto)
    assert key_from_subprotocols([]) == (None, None)
    assert key_from_subprotocols(["realtime", "openai-beta.x"]) == (None, None)
    assert key_from_subprotocols([BROWSER_KEY_SUBPROTOCOL]) == (None, BROWSER_KEY_SUBPROTOCOL)
    first = BROWSER_KEY_SUBPROTOCOL + "a"
    assert key_from_subprotocols([first, BROWSER_KEY_SUBPROTOCOL + "b"]) == ("a", first)
