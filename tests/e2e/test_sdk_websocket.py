"""WebSocket mode with the official SDK's ``responses.connect()`` against a real wsproxy."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.sdk import client


def until_terminal(conn: Any, stream_id: str | None = None, limit: int = 2000) -> list[Any]:
    events = []
    for _ in range(limit):
        event = conn.recv()
        if stream_id is not None and getattr(event, "stream_id", None) != stream_id:
            continue
        events.append(event)
        if event.type in ("response.completed", "response.failed", "response.incomplete", "error"):
            return events
    raise AssertionError("no terminal event")


def test_several_turns_with_continuation(proxy) -> None:
    with client(proxy).responses.connect() as conn:
        conn.response.create(model="local", input="first turn", store=False)
        first = until_terminal(conn)
        assert first[0].type == "response.created"
        assert first[-1].type == "response.completed"
        assert [e.sequence_number for e in first] == list(range(len(first)))
        rid = first[-1].response.id

        # store=False: only the connection-local cache can resolve the continuation.
        conn.response.create(model="local", input="second turn", store=False, previous_response_id=rid)
        second = until_terminal(conn)
        assert second[-1].type == "response.completed"
        assert second[0].sequence_number == 0
        assert second[-1].response.previous_response_id == rid
        # The local model counts every input token: history was expanded.
        assert second[-1].response.usage.input_tokens > first[-1].response.usage.input_tokens

        # An older response than the latest is not in the cache (store=False): error, socket stays.
        conn.response.create(model="local", input="third", store=False, previous_response_id="resp_unknown")
        err = until_terminal(conn)
        assert err[-1].type == "error"
        assert err[-1].status == 400
        assert err[-1].error.code == "previous_response_not_found"

        conn.response.create(model="local", input="still open")
        assert until_terminal(conn)[-1].type == "response.completed"


def test_queued_fifo_on_default_lane(proxy) -> None:
    with client(proxy).responses.connect() as conn:
        for i in range(3):
            conn.response.create(model="local", input=f"message {i}", store=False)
        order = []
        for _ in range(3):
            events = until_terminal(conn)
            # No interleaving on one lane: every event belongs to one response.
            ids = {e.response.id for e in events if hasattr(e, "response")}
            assert len(ids) == 1
            order.append(events[-1].response.output_text)
        assert [t.endswith(f"message {i}") for i, t in enumerate(order)] == [True, True, True]


def test_stream_id_lanes_run_concurrently(proxy) -> None:
    with client(proxy).responses.connect() as conn:
        conn.response.create(model="local", input="a " * 30, stream_id="alpha", store=False)
        conn.response.create(model="local", input="b " * 30, stream_id="beta", store=False)
        seen: list[str | None] = []
        done: set[str] = set()
        for _ in range(2000):
            event = conn.recv()
            seen.append(event.stream_id)
            if event.type == "response.completed":
                done.add(event.stream_id)
                if done == {"alpha", "beta"}:
                    break
        assert done == {"alpha", "beta"}
        assert None not in seen
        # Concurrent lanes interleave: beta's events start before alpha's end.
        first_beta = seen.index("beta")
        last_alpha = len(seen) - 1 - seen[::-1].index("alpha")
        assert first_beta < last_alpha


def test_invalid_stream_id_and_bad_frames_keep_socket_open(proxy) -> None:
    with client(proxy).responses.connect() as conn:
        conn.send({"type": "response.create", "model": "local", "input": "x", "stream_id": "bad id!"})
        err = until_terminal(conn)[-1]
        assert err.type == "error" and err.error.code == "invalid_stream_id"
        conn.send_raw("{not json")
        err = until_terminal(conn)[-1]
        assert err.type == "error" and err.error.code == "invalid_json"
        conn.send({"type": "response.cancel"})
        err = until_terminal(conn)[-1]
        assert err.type == "error" and err.error.param == "type"
        conn.send({"type": "response.create", "model": "local", "input": "x", "temperature": "hot"})
        err = until_terminal(conn)[-1]
        assert err.type == "error" and err.status == 400 and err.error.param == "temperature"
        conn.response.create(model="local", input="works")
        assert until_terminal(conn)[-1].type == "response.completed"


def test_generate_false_warmup_then_continue(proxy) -> None:
    with client(proxy).responses.connect() as conn:
        conn.send(
            {
                "type": "response.create",
                "model": "local",
                "generate": False,
                "store": False,
                "input": [{"role": "developer", "content": "You are terse."}],
            }
        )
        warm = until_terminal(conn)
        assert [e.type for e in warm] == ["response.created", "response.completed"]
        assert warm[-1].response.output == []
        conn.response.create(
            model="local", input="go", store=False, previous_response_id=warm[-1].response.id, stream=True
        )  # Codex sends stream: true over WebSocket; it is accepted
        assert until_terminal(conn)[-1].type == "response.completed"


def test_background_rejected_over_websocket(proxy) -> None:
    with client(proxy).responses.connect() as conn:
        conn.send({"type": "response.create", "model": "local", "input": "x", "background": True})
        err = until_terminal(conn)[-1]
        assert err.type == "error" and err.error.param == "background"


def test_auth_rejected_before_upgrade(make_proxy) -> None:
    from websockets.exceptions import InvalidStatus

    proxy = make_proxy(api_keys=("sk-good",))
    with pytest.raises(InvalidStatus) as info:
        with client(proxy, "sk-bad").responses.connect() as conn:
            conn.response.create(model="local", input="x")
    assert info.value.response.status_code == 401
    with client(proxy, "sk-good").responses.connect() as conn:
        conn.response.create(model="local", input="x")
        assert until_terminal(conn)[-1].type == "response.completed"
