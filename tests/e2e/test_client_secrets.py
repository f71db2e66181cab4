"""Short-lived client secrets over real sockets: minted by ``POST /v1/client_secrets`` with a real
key, used as a Bearer key (the openai SDK) and as the WebSocket subprotocol a browser offers;
scoped to models, expiring (also on an open socket), unable to mint, verifiable by a replica that
shares the signing key."""

from __future__ import annotations

import time
from typing import Any

import httpx2
import openai
import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.e2e.sdk import client
from wsproxy.policy import client_secrets
from wsproxy.policy.auth import principal_of

KEYS = ("sk-a", "sk-b")
SIGNING = "test-signing-key"


def ws_url(proxy: Any) -> str:
    return proxy.url.replace("http", "ws") + "/v1/responses"


def mint(proxy: Any, key: str | None = "sk-a", **body: Any) -> httpx2.Response:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx2.post(proxy.url + "/v1/client_secrets", content=orjson.dumps(body), headers=headers)


def secret_of(proxy: Any, **body: Any) -> str:
    r = mint(proxy, **body)
    assert r.status_code == 200, r.text
    value: str = r.json()["value"]
    return value


def ws_connect(proxy: Any, secret: str) -> Any:
    return connect(ws_url(proxy), subprotocols=[f"openai-insecure-api-key.{secret}"])  # type: ignore[list-item]


def ws_turn(conn: Any, model: str = "local") -> dict[str, Any]:
    conn.send(orjson.dumps({"type": "response.create", "model": model, "input": "hi"}).decode())
    for _ in range(500):
        event = orjson.loads(conn.recv(timeout=10))
        if event["type"] in ("response.completed", "response.failed", "error"):
            return dict(event)
    raise AssertionError("no terminal event")


@pytest.fixture
def keyed(make_proxy) -> Any:
    return make_proxy(api_keys=KEYS, client_secret_key=SIGNING)


def test_mint_answers_value_expiry_and_models(keyed) -> None:
    before = int(time.time())
    r = mint(keyed, expires_after={"seconds": 120}, models=["local"])
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["value"].startswith("ek_")
    assert before + 120 <= body["expires_at"] <= int(time.time()) + 120
    assert body["models"] == ["local"]
    # No body: the maximum lifetime (10 minutes by default), any model.
    r = mint(keyed)
    assert r.json()["models"] is None
    assert r.json()["expires_at"] >= before + 600
    # Bounded: longer than the maximum, unknown fields, bad models are 400s.
    for bad, param in (
        ({"expires_after": {"seconds": 601}}, "expires_after.seconds"),
        ({"expires_after": {"seconds": "soon"}}, "expires_after.seconds"),
        ({"models": []}, "models"),
        ({"scope": "all"}, "scope"),
    ):
        r = mint(keyed, **bad)
        assert r.status_code == 400, bad
        assert r.json()["error"]["param"] == param


def test_secret_works_as_bearer_key_and_belongs_to_its_principal(keyed) -> None:
    secret = secret_of(keyed, models=["local"])
    done = client(keyed, secret).responses.create(model="local", input="from the browser")
    assert done.status == "completed"
    # Stored as sk-a's: its key reads it, another key does not see it.
    assert client(keyed, "sk-a").responses.retrieve(done.id).id == done.id
    with pytest.raises(openai.NotFoundError):
        client(keyed, "sk-b").responses.retrieve(done.id)
    # The secret reads what its principal stored, and continues from it.
    first = client(keyed, "sk-a").responses.create(model="local", input="key turn")
    again = client(keyed, secret).responses.create(model="local", input="next", previous_response_id=first.id)
    assert again.previous_response_id == first.id


def test_secret_works_as_websocket_subprotocol(keyed) -> None:
    secret = secret_of(keyed, models=["local"])
    with ws_connect(keyed, secret) as conn:
        # A browser fails the handshake unless its subprotocol is echoed.
        assert conn.subprotocol == f"openai-insecure-api-key.{secret}"
        done = ws_turn(conn)
        assert done["type"] == "response.completed"
    assert client(keyed, "sk-a").responses.retrieve(done["response"]["id"]).status == "completed"


def test_model_scope(keyed) -> None:
    secret = secret_of(keyed, models=["local"])
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(keyed, secret).responses.create(model="up1@fake", input="x")
    assert info.value.body["code"] == "model_not_allowed"
    assert info.value.status_code == 403
    # /v1/models lists only what the secret may use.
    models = httpx2.get(keyed.url + "/v1/models", headers={"authorization": f"Bearer {secret}"}).json()
    assert [m["id"] for m in models["data"]] == ["local"]
    # Over WebSocket: an error event, and the socket stays usable.
    with ws_connect(keyed, secret) as conn:
        refused = ws_turn(conn, model="up2@fake")
        assert refused["type"] == "error"
        assert refused["status"] == 403
        assert refused["error"]["code"] == "model_not_allowed"
        assert ws_turn(conn)["type"] == "response.completed"
    # The key itself is not scoped.
    assert client(keyed, "sk-a").responses.create(model="up1@fake", input="x").status == "completed"


def test_expired_secret_is_refused(keyed) -> None:
    # Minted with the proxy's signing key (set in the settings), already past its expiry.
    expired = client_secrets.mint(SIGNING.encode(), principal_of("sk-a"), int(time.time()) - 1, None)
    with pytest.raises(openai.AuthenticationError) as info:
        client(keyed, expired).responses.create(model="local", input="x")
    assert info.value.body["code"] == "client_secret_expired"
    with pytest.raises(InvalidStatus) as ws_info:
        with ws_connect(keyed, expired):
            pass
    assert ws_info.value.response.status_code == 401
    # Forged (another signing key) or altered: an invalid key.
    forged = client_secrets.mint(b"other", principal_of("sk-a"), int(time.time()) + 60, None)
    good = secret_of(keyed, models=["local"])
    # Minted while auth was off (no principal): not valid once keys are required.
    nobody = client_secrets.mint(SIGNING.encode(), None, int(time.time()) + 60, None)
    for bad in (forged, good[:-2] + ("AA" if not good.endswith("AA") else "BB"), nobody):
        with pytest.raises(openai.AuthenticationError) as info:
            client(keyed, bad).responses.create(model="local", input="x")
        assert info.value.body["code"] == "invalid_api_key"


def test_open_socket_is_closed_when_its_secret_expires(keyed) -> None:
    expires_at = int(time.time()) + 2
    secret = client_secrets.mint(SIGNING.encode(), principal_of("sk-a"), expires_at, None)
    with ws_connect(keyed, secret) as conn:
        assert ws_turn(conn)["type"] == "response.completed"
        event = orjson.loads(conn.recv(timeout=10))
        assert time.time() >= expires_at - 0.05
        assert event["type"] == "error"
        assert event["status"] == 401
        assert event["error"]["code"] == "client_secret_expired"
        with pytest.raises(ConnectionClosed) as info:
            conn.recv(timeout=5)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1008


def test_a_secret_cannot_mint(keyed) -> None:
    secret = secret_of(keyed)
    r = mint(keyed, key=secret)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "client_secret_not_allowed"


def test_minting_needs_a_key_when_auth_is_on(keyed, proxy) -> None:
    for key, code in ((None, "missing_api_key"), ("sk-wrong", "invalid_api_key")):
        r = mint(keyed, key=key)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == code
    # Auth off: a backend on this machine (the tests' peer is 127.0.0.1) may mint.
    r = mint(proxy, key=None, models=["local"])
    assert r.status_code == 200
    done = client(proxy, r.json()["value"]).responses.create(model="local", input="x")
    assert done.status == "completed"


def test_any_replica_with_the_signing_key_verifies(make_proxy) -> None:
    one = make_proxy(api_keys=KEYS, client_secret_key=SIGNING)
    two = make_proxy(api_keys=KEYS, client_secret_key=SIGNING)
    other = make_proxy(api_keys=KEYS)  # a random key of its own
    secret = secret_of(one, models=["local"])
    assert client(two, secret).responses.create(model="local", input="x").status == "completed"
    with pytest.raises(openai.AuthenticationError):
        client(other, secret).responses.create(model="local", input="x")


def test_removing_the_minting_key_revokes_its_secrets(make_proxy) -> None:
    """A secret speaks for the key that minted it: a proxy where that key is no longer
    configured refuses it at once, before it expires; secrets of the remaining key still work."""
    before = make_proxy(api_keys=KEYS, client_secret_key=SIGNING)
    after = make_proxy(api_keys=("sk-b",), client_secret_key=SIGNING)  # sk-a removed
    of_a = secret_of(before, key="sk-a")
    of_b = secret_of(before, key="sk-b")
    assert client(before, of_a).responses.create(model="local", input="x").status == "completed"
    with pytest.raises(openai.AuthenticationError):
        client(after, of_a).responses.create(model="local", input="x")
    assert client(after, of_b).responses.create(model="local", input="x").status == "completed"
