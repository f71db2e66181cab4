"""How a WebSocket session ends, including sessions that never sent a frame (their outgoing queue
and writer are made with the first frame): the connection age limit, a shutdown drain over
several sessions, the client leaving. Against ``cli.build_config`` in process."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.e2e.cliserver import CliServer
from wsproxy.asgi import ws as ws_module

TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")


def recv_until_closed(ws: Any, timeout: float = 10.0) -> tuple[list[dict[str, Any]], int | None]:
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            events.append(json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic()))))
        except ConnectionClosed:
            assert ws.protocol.close_rcvd is not None, "closed without a close frame"
            return events, ws.protocol.close_rcvd.code
        except TimeoutError:
            break
    raise AssertionError(f"still open after {timeout}s; got {events}")


def run_response(ws: Any, text: str) -> list[dict[str, Any]]:
    ws.send(json.dumps({"type": "response.create", "model": "local", "input": text, "store": False}))
    events = []
    for _ in range(2000):
        events.append(json.loads(ws.recv(timeout=10)))
        if events[-1]["type"] in TERMINAL:
            return events
    raise AssertionError("no terminal event")


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


@pytest.mark.parametrize("used", [False, True], ids=["idle", "after-a-response"])
def test_age_limit_error_then_1000(make_cli_proxy: Any, used: bool) -> None:
    server: CliServer = make_cli_proxy(ws_connection_max_age=1.0)
    with connect(server.ws_url, open_timeout=5) as ws:
        opened = time.monotonic()
        if used:
            assert run_response(ws, "before the limit")[-1]["type"] == "response.completed"
        events, code = recv_until_closed(ws)
    assert time.monotonic() - opened >= 0.9
    assert [e["type"] for e in events] == ["error"]
    assert events[0]["error"]["code"] == "websocket_connection_limit_reached"
    assert code == 1000


def test_drain_closes_every_idle_session_with_1001(make_cli_proxy: Any) -> None:
    server: CliServer = make_cli_proxy()
    clients = [connect(server.ws_url, open_timeout=5) for _ in range(3)]
    try:
        # One of them has streamed a response (its writer exists), the others never sent a frame.
        assert run_response(clients[0], "one response")[-1]["type"] == "response.completed"
        wait_until(lambda: server.runtime.sessions == 3)
        drained = server.call(server.runtime.drain(grace=2.0, settle=5.0))
        outcomes = [recv_until_closed(ws) for ws in clients]
        assert drained.result(timeout=15) is True
    finally:
        for ws in clients:
            ws.close()
    assert outcomes == [([], 1001)] * 3
    assert server.runtime.sessions == 0


def test_client_leaving_ends_the_session_and_its_registrations(make_cli_proxy: Any) -> None:
    server: CliServer = make_cli_proxy()
    with connect(server.ws_url, open_timeout=5) as idle, connect(server.ws_url, open_timeout=5) as used:
        assert run_response(used, "one response")[-1]["type"] == "response.completed"
        wait_until(lambda: server.runtime.sessions == 2)
        watch = ws_module._WATCHES[server.runtime.closing]
        assert len(watch.sessions) == 2
        idle.close()
        wait_until(lambda: server.runtime.sessions == 1)
        assert len(watch.sessions) == 1
        # The other session is unaffected.
        assert run_response(used, "still open")[-1]["type"] == "response.completed"
    wait_until(lambda: server.runtime.sessions == 0)
    assert watch.sessions == set()
    assert server.ws_sessions() == []


async def test_a_failed_send_becomes_a_disconnect_written_directly_or_by_the_writer() -> None:
    """Frames are written from the response task while nothing is ahead of them, and queue for
    the writer task behind a frame that is blocked (the client's TCP window is full). Both call
    the raw ASGI send: a send that fails because the client is gone (uvicorn raises an OSError)
    still ends the session as Starlette's WebSocket.send would, with the socket marked
    disconnected (a 1006 disconnect from the writer), so the session does not close it again."""
    from types import SimpleNamespace

    from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
    from uvicorn.protocols.utils import ClientDisconnected

    from wsproxy.settings import LimitSettings

    sent: list[str] = []
    writable = asyncio.Event()  # as uvicorn's: cleared while the transport's buffer is full
    writable.set()

    async def send(message: dict[str, Any]) -> None:
        await writable.wait()
        if len(sent) == 3:
            raise ClientDisconnected
        sent.append(message["text"])

    async def receive() -> dict[str, Any]:
        raise AssertionError("not read")

    def session_for(send: Any) -> Any:
        websocket = WebSocket({"type": "websocket", "path": "/v1/responses", "headers": []}, receive, send)
        websocket.application_state = WebSocketState.CONNECTED
        runtime: Any = SimpleNamespace(settings=SimpleNamespace(limits=LimitSettings()))
        return ws_module.WSSession(websocket, runtime, None, send=send), websocket

    session, websocket = session_for(send)
    await session.send("a")
    await session.send(b"b")
    assert sent == ["a", "b"] and session.writer_task is None  # written directly, in order
    writable.clear()
    blocked = asyncio.get_running_loop().create_task(session.send("blocked"))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    await session.send("c")  # behind the blocked frame: queued for the writer
    await asyncio.sleep(0.01)  # (the writer waits for the socket too)
    assert session.writer_task is not None and sent == ["a", "b"]
    writable.set()
    await asyncio.wait_for(blocked, 5)
    with pytest.raises(WebSocketDisconnect) as exc:
        await asyncio.wait_for(session.writer_task, 5)
    assert exc.value.code == 1006
    assert websocket.application_state == WebSocketState.DISCONNECTED
    assert sent == ["a", "b", "blocked"]  # "c" found the client gone

    async def gone(message: dict[str, Any]) -> None:
        raise ClientDisconnected

    session, websocket = session_for(gone)
    with pytest.raises(asyncio.CancelledError):
        await session.send("x")  # the response task stops: its client is gone
    assert websocket.application_state == WebSocketState.DISCONNECTED
