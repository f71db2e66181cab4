"""WebSocket mode end to end: the official SDK's ``responses.connect()`` through wsproxy, carried
over upstream WebSockets to a fake OpenAI-native provider that speaks WebSocket mode
(``tests/fakes/openai_ws_upstream.py``), all on real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.e2e.sdk import client
from tests.e2e.test_sdk_websocket import until_terminal
from tests.fakes.openai_ws_upstream import FakeOpenAIWS
from tests.fakes.servers import HypercornThread, UvicornThread
from wsproxy.asgi.app import create_app
from wsproxy.settings import load_settings

TERMINAL = ("response.completed", "response.failed", "response.incomplete")


@pytest.fixture
def ws_fake() -> Iterator[FakeOpenAIWS]:
    fake = FakeOpenAIWS()
    server = HypercornThread(fake).start()
    fake.url = server.url + "/v1"  # type: ignore[attr-defined]
    try:
        yield fake
    finally:
        server.stop()


@pytest.fixture
def ws_proxy(tmp_path: Path, ws_fake: FakeOpenAIWS) -> Iterator[Any]:
    servers: list[UvicornThread] = []

    def start(mode: str = "auto", **limits: Any) -> UvicornThread:
        url = ws_fake.url  # type: ignore[attr-defined]
        lines = [
            '[store]\nbackend = "memory"\n',
            f'[providers.up]\nkind = "openai"\nbase_url = "{url}"\napi_key = "sk-up"\n'
            f'websocket = "{mode}"\nheaders = {{ "x-extra" = "yes" }}\nmax_retries = 0\n',
            '[providers.local]\nkind = "local"\ntoken_delay = 0.001\nmodels = ["local"]\n',
        ]
        if limits:
            lines.append("[limits]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in limits.items()))
        path = tmp_path / f"wsproxy-{len(servers)}.toml"
        path.write_text("\n".join(lines))
        settings = load_settings(str(path), environ={})
        app = create_app(settings, environ={})
        server = UvicornThread(app).start()
        server.app = app  # type: ignore[attr-defined]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


def terminals(events: list[Any]) -> list[Any]:
    return [e for e in events if e.type in TERMINAL]


def test_store_false_continuation_sends_only_new_input(ws_proxy, ws_fake) -> None:
    proxy = ws_proxy()
    with client(proxy).responses.connect() as conn:
        conn.response.create(model="up@fake", input=[user("turn one")], store=False)
        first = until_terminal(conn)
        assert first[-1].type == "response.completed"
        assert first[-1].response.previous_response_id is None
        rid = first[-1].response.id
        assert first[-1].response.output_text == "Echo: turn one"

        conn.response.create(
            model="up@fake-tool", input=[user("turn two")], store=False, previous_response_id=rid
        )
        second = until_terminal(conn)[-1]
        assert second.type == "response.completed"
        assert second.response.previous_response_id == rid
        call = second.response.output[0]

        out = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
        conn.response.create(
            model="up@fake", input=[out], store=False, previous_response_id=second.response.id
        )
        third = until_terminal(conn)[-1]
        assert third.type == "response.completed"
        assert third.response.output_text == "Echo: tool said sunny"
        assert third.response.previous_response_id == second.response.id

    frames = ws_fake.frames()
    assert len(frames) == 3
    assert {f["socket"] for f in frames} == {frames[0]["socket"]}, "one upstream socket for the lane"
    assert "previous_response_id" not in frames[0]
    assert frames[0]["input"] == [user("turn one")] and frames[0]["store"] is False
    # Only the new input reaches the provider, with the client's previous_response_id.
    assert frames[1]["previous_response_id"] == rid and frames[1]["input"] == [user("turn two")]
    assert frames[2]["previous_response_id"] == second.response.id and frames[2]["input"] == [out]
    assert all(f["type"] == "response.create" and f["model"] in ("fake", "fake-tool") for f in frames)
    assert not ws_fake.requests, "nothing went over HTTP"
    sock = ws_fake.accepted()[0]
    assert sock["headers"]["authorization"] == "Bearer sk-up"
    assert sock["headers"]["openai-beta"] == "responses_websockets=2026-02-06"
    assert sock["headers"]["x-extra"] == "yes"
    # Closed with the client session.
    assert ws_fake.wait(lambda: ws_fake.accepted()[0]["closed"], 5.0)
    metrics = proxy.app.state.runtime.metrics
    assert metrics.value("wsproxy_upstream_ws_opened_total", provider="up") == 1
    done = {
        m: metrics.value("wsproxy_responses_total", model=m, provider="up", status="completed")
        for m in ("fake", "fake-tool")
    }
    assert done == {"fake": 2, "fake-tool": 1}


def test_warmup_goes_upstream_then_continues(ws_proxy, ws_fake) -> None:
    proxy = ws_proxy()
    with client(proxy).responses.connect() as conn:
        dev = {"type": "message", "role": "developer", "content": "be terse"}
        conn.send(
            {"type": "response.create", "model": "up@fake", "generate": False, "store": False, "input": [dev]}
        )
        warm = until_terminal(conn)
        assert [e.type for e in warm] == ["response.created", "response.completed"]
        conn.response.create(
            model="up@fake", input="go", store=False, previous_response_id=warm[-1].response.id
        )
        assert until_terminal(conn)[-1].response.output_text == "Echo: go"
    frames = ws_fake.frames()
    assert frames[0]["generate"] is False and frames[0]["input"] == [dev]
    assert frames[1]["previous_response_id"] == warm[-1].response.id
    assert frames[1]["input"] == [user("go")] and frames[0]["socket"] == frames[1]["socket"]


def test_lanes_get_their_own_upstream_sockets(ws_proxy, ws_fake) -> None:
    proxy = ws_proxy()
    lanes = ["alpha", "beta", None]
    with client(proxy).responses.connect() as conn:
        latest: dict[str | None, str] = {}
        for turn in range(2):
            for lane in lanes:
                kwargs: dict[str, Any] = {"stream_id": lane} if lane else {}
                if lane in latest:
                    kwargs["previous_response_id"] = latest[lane]
                conn.response.create(model="up@fake", input=f"{lane} {turn}", store=False, **kwargs)
            done: dict[str | None, Any] = {}
            for _ in range(500):
                event = conn.recv()
                if event.type in TERMINAL or event.type == "error":
                    done[event.stream_id] = event
                if len(done) == 3:
                    break
            assert {k: v.type for k, v in done.items()} == dict.fromkeys(lanes, "response.completed")
            latest = {k: v.response.id for k, v in done.items()}
    frames = ws_fake.frames()
    by_lane = {lane: [f for f in frames if f["input"][0]["content"].startswith(f"{lane} ")] for lane in lanes}
    sockets = {lane: {f["socket"] for f in fs} for lane, fs in by_lane.items()}
    assert all(len(s) == 1 for s in sockets.values()), sockets
    assert len(set.union(*sockets.values())) == 3, "each lane on its own upstream socket"
    for fs in by_lane.values():
        assert "previous_response_id" in fs[1] and len(fs[1]["input"]) == 1
        assert "stream_id" not in fs[0] and "stream_id" not in fs[1]


def test_refused_upgrade_falls_back_to_http_and_is_remembered(ws_proxy, ws_fake) -> None:
    ws_fake.refuse_status = 403
    proxy = ws_proxy()
    with client(proxy).responses.connect() as conn:
        conn.response.create(model="up@fake", input="one", store=False)
        first = until_terminal(conn)[-1]
        assert first.type == "response.completed"
        conn.response.create(
            model="up@fake", input="two", store=False, previous_response_id=first.response.id
        )
        second = until_terminal(conn)[-1]
        assert second.type == "response.completed"
        # The bug this fixes: over HTTP with expansion, the response named no previous response.
        assert second.response.previous_response_id == first.response.id
    assert len(ws_fake.sockets) == 1 and not ws_fake.accepted()
    body = ws_fake.requests[-1]["body"]
    assert "previous_response_id" not in body
    assert [i.get("role") for i in body["input"]] == ["user", "assistant", "user"]
    metrics = proxy.app.state.runtime.metrics
    assert metrics.value("wsproxy_upstream_ws_refused_total", provider="up") == 1
    # Remembered: the next session does not try the upgrade again.
    with client(proxy).responses.connect() as conn:
        conn.response.create(model="up@fake", input="three", store=False)
        assert until_terminal(conn)[-1].type == "response.completed"
    assert len(ws_fake.sockets) == 1


def test_always_makes_a_refusal_an_error(ws_proxy, ws_fake) -> None:
    ws_fake.refuse_status = 404
    proxy = ws_proxy("always")
    with client(proxy).responses.connect() as conn:
        conn.response.create(model="up@fake", input="one", store=False)
        err = until_terminal(conn)[-1]
        assert err.type == "error" and err.status == 502
        assert "refused the WebSocket upgrade (HTTP 404)" in err.error.message
    assert not ws_fake.requests


def test_never_and_http_clients_use_http(ws_proxy, ws_fake) -> None:
    never = ws_proxy("never")
    with client(never).responses.connect() as conn:
        conn.response.create(model="up@fake", input="one", store=False)
        assert until_terminal(conn)[-1].type == "response.completed"
    auto = ws_proxy()
    assert (
        client(auto).responses.create(model="up@fake", input="plain http").output_text == "Echo: plain http"
    )
    events = list(client(auto).responses.create(model="up@fake", input="sse", stream=True))
    assert events[-1].type == "response.completed"
    assert not ws_fake.sockets, "no upgrade was attempted"
    assert len(ws_fake.requests) == 3


def test_socket_closed_between_turns_recovers_from_the_cache(ws_proxy, ws_fake) -> None:
    proxy = ws_proxy()
    with client(proxy).responses.connect() as conn:
        conn.response.create(model="up@fake", input="one", store=False)
        first = until_terminal(conn)[-1]
        assert ws_fake.drop_sockets() == 1  # a provider restart between turns
        assert ws_fake.wait(lambda: ws_fake.accepted()[0]["closed"], 5.0)
        conn.response.create(
            model="up@fake", input="two", store=False, previous_response_id=first.response.id
        )
        second = until_terminal(conn)[-1]
        assert second.type == "response.completed", second
        assert second.response.previous_response_id == first.response.id
        conn.response.create(
            model="up@fake", input="three", store=False, previous_response_id=second.response.id
        )
        assert until_terminal(conn)[-1].type == "response.completed"
    frames = ws_fake.frames()
    assert [f["socket"] for f in frames][1:] == [frames[1]["socket"]] * 2 != [frames[0]["socket"]] * 2
    # The new socket does not hold turn one: the history came from wsproxy's cache, once.
    assert "previous_response_id" not in frames[1]
    assert [i.get("role") for i in frames[1]["input"]] == ["user", "assistant", "user"]
    assert frames[2]["previous_response_id"] == second.response.id and len(frames[2]["input"]) == 1


def test_provider_forgetting_the_previous_response_is_hidden_from_the_client(ws_proxy, ws_fake) -> None:
    proxy = ws_proxy()
    with client(proxy).responses.connect() as conn:
        conn.response.create(model="up@fake", input="one", store=False)
        first = until_terminal(conn)[-1]
        with ws_fake.lock:
            ws_fake.accepted()[0]["latest"] = None  # evicted on the provider's side
        conn.response.create(
            model="up@fake", input="two", store=False, previous_response_id=first.response.id
        )
        events = until_terminal(conn)
        assert [e.type for e in events if e.type == "error"] == []
        assert events[-1].type == "response.completed"
    frames = ws_fake.frames()
    assert len(frames) == 3 and len({f["socket"] for f in frames}) == 1
    assert frames[1]["previous_response_id"] == first.response.id  # tried the cheap way first
    assert "previous_response_id" not in frames[2] and len(frames[2]["input"]) == 3


def test_unknown_previous_response_is_the_providers_error(ws_proxy, ws_fake) -> None:
    proxy = ws_proxy()
    with client(proxy).responses.connect() as conn:
        conn.response.create(model="up@fake", input="x", store=False, previous_response_id="resp_nowhere")
        err = until_terminal(conn)[-1]
        assert err.type == "error" and err.status == 400
        assert err.error.code == "previous_response_not_found"
        conn.response.create(model="up@fake", input="still open", store=False)
        assert until_terminal(conn)[-1].type == "response.completed"


def test_socket_dying_mid_response_ends_it_with_one_failed(ws_proxy, ws_fake) -> None:
    proxy = ws_proxy()
    with client(proxy).responses.connect() as conn:
        conn.response.create(model="up@fake", input="one", store=False)
        first = until_terminal(conn)[-1]
        conn.response.create(
            model="up@die-after-5", input="two", store=False, previous_response_id=first.response.id
        )
        events = until_terminal(conn)
        # As on the HTTP path: an error event, then the one terminal event.
        assert events[-1].type == "error" and events[-1].error.code == "server_error"
        events.append(conn.recv())
        assert len(terminals(events)) == 1 and events[-1].type == "response.failed"
        assert "closed mid-response" in events[-1].response.error.message
        assert events[-1].response.previous_response_id == first.response.id
        assert [e.sequence_number for e in events] == list(range(len(events)))
        # A failed continuation evicts its parent, as OpenAI does (responses-websocket.md 6).
        conn.response.create(
            model="up@fake", input="again", store=False, previous_response_id=first.response.id
        )
        evicted = until_terminal(conn)
        assert [e.type for e in evicted] == ["error"]
        assert evicted[0].error.code == "previous_response_not_found"
        # The session goes on, on a new upstream socket; nothing of the failed response follows.
        conn.response.create(model="up@fake", input="three", store=False)
        third = until_terminal(conn)
        assert third[0].type == "response.created" and third[0].sequence_number == 0
        assert len({e.response.id for e in third if hasattr(e, "response")}) == 1
        assert third[-1].type == "response.completed"
    assert len(ws_fake.accepted()) == 2


FLOOD_EVENTS = 30_000


async def test_slow_client_stops_the_upstream_reads(ws_proxy, ws_fake) -> None:
    proxy = ws_proxy(slow_client_timeout=30.0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", proxy.port))
    sock.setblocking(False)
    url = f"ws://127.0.0.1:{proxy.port}/v1/responses"
    async with websockets.connect(url, sock=sock, max_queue=1, max_size=None, compression=None) as ws:
        frame = {
            "type": "response.create",
            "model": f"up@flood-{FLOOD_EVENTS}-1000",
            "input": "x",
            "store": False,
        }
        await ws.send(json.dumps(frame))
        await ws.recv()  # started; this client reads nothing more
        last, sent, deadline = -1, 0, time.monotonic() + 15
        while time.monotonic() < deadline:
            await asyncio.sleep(0.6)
            sent = ws_fake.accepted()[0].get("sent", 0)
            if sent == last and sent > 0:
                break
            last = sent
        else:
            raise AssertionError("the upstream never stopped sending")
        assert sent < FLOOD_EVENTS * 0.5, f"backpressure stopped the provider at {sent} of {FLOOD_EVENTS}"
        runtime = proxy.app.state.runtime  # type: ignore[attr-defined]
        (lane,) = runtime.ws_upstream.lanes
        upstream = lane.socket
        assert upstream is not None and upstream._paused, "reads from the provider are paused"
        assert upstream._buffered < 2 * 1024 * 1024, "what the proxy holds is bounded"
    # The client left mid-response: the upstream socket is closed (the only cancel there is).
    assert ws_fake.wait(lambda: ws_fake.accepted()[0]["closed"], 10.0)


def test_upstream_socket_bounds_send_lanes_over_http(ws_proxy, ws_fake) -> None:
    proxy = ws_proxy(upstream_ws_per_session=1)
    with client(proxy).responses.connect() as conn:
        conn.response.create(model="up@fake", input="a", store=False)
        assert until_terminal(conn)[-1].type == "response.completed"
        conn.response.create(model="up@fake", input="b", store=False, stream_id="second")
        assert until_terminal(conn, "second")[-1].type == "response.completed"
    assert len(ws_fake.accepted()) == 1 and len(ws_fake.requests) == 1
