"""WebSocket mode in process (Starlette's TestClient, no sockets): a session with the local model,
lanes, errors that keep the session, and the frame writes (synchronous through the server's
``wsproxy.frames`` extension while nothing is queued, the plain ASGI send otherwise)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketState

from tests.service.inprocess import BASE, local_settings
from wsproxy.asgi.app import create_app
from wsproxy.asgi.ws import WSSession
from wsproxy.core.events import TERMINAL_TYPES
from wsproxy.settings import LimitSettings


def until_terminal(ws: Any, limit: int = 500) -> list[dict[str, Any]]:
    events = []
    for _ in range(limit):
        event = orjson.loads(ws.receive_text())
        events.append(event)
        if event["type"] in TERMINAL_TYPES or event["type"] == "error":
            return events
    raise AssertionError(f"no terminal event in {limit} frames")


def test_a_session_runs_responses_chains_them_and_survives_bad_frames(tmp_path: Path) -> None:
    app = create_app(local_settings(tmp_path), environ={})
    with TestClient(app, base_url=BASE) as client, client.websocket_connect("/v1/responses") as ws:
        ws.send_text(orjson.dumps({"type": "response.create", "model": "local", "input": "hi"}).decode())
        first = until_terminal(ws)
        assert first[0]["type"] == "response.created" and first[-1]["type"] == "response.completed"
        assert [e["sequence_number"] for e in first] == list(range(len(first)))
        ws.send_text("{not json")
        error = orjson.loads(ws.receive_text())
        assert (
            error["type"] == "error" and error["status"] == 400 and error["error"]["code"] == "invalid_json"
        )
        # The session survived: a chained response on a named lane, stream_id on every frame.
        prev = first[-1]["response"]["id"]
        ws.send_text(
            orjson.dumps(
                {
                    "type": "response.create",
                    "model": "local",
                    "input": "again",
                    "previous_response_id": prev,
                    "stream_id": "lane-1",
                }
            ).decode()
        )
        second = until_terminal(ws)
        assert second[-1]["type"] == "response.completed"
        assert all(e["stream_id"] == "lane-1" for e in second)
        assert second[-1]["response"]["previous_response_id"] == prev


def test_a_response_that_cannot_start_is_an_error_event_on_its_lane(tmp_path: Path) -> None:
    app = create_app(local_settings(tmp_path), environ={})
    with TestClient(app, base_url=BASE) as client, client.websocket_connect("/v1/responses") as ws:
        ws.send_text(
            orjson.dumps(
                {
                    "type": "response.create",
                    "model": "local",
                    "input": "x",
                    "previous_response_id": "resp_nope",
                }
            ).decode()
        )
        error = orjson.loads(ws.receive_text())
        assert error["type"] == "error" and error["error"]["code"] == "previous_response_not_found"
        ws.send_text(orjson.dumps({"type": "response.create", "model": "local", "input": "ok"}).decode())
        assert until_terminal(ws)[-1]["type"] == "response.completed"


class Frames:
    """A stand-in for the server's ``wsproxy.frames`` writer: takes frames under ``limit``
    bytes, refuses the rest (as it refuses frames to compress)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.written: list[tuple[bytes, bool]] = []

    def write_text(self, text: str | bytes, more: bool = False) -> bool:
        data = text.encode() if isinstance(text, str) else text
        if len(data) >= self.limit:
            return False
        self.written.append((data, more))
        return True


def session_with(frames: Frames | None, sent: list[dict[str, Any]]) -> WSSession:
    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        raise AssertionError("not read")

    websocket = WebSocket({"type": "websocket", "path": "/v1/responses", "headers": []}, receive, send)
    websocket.application_state = WebSocketState.CONNECTED
    runtime: Any = SimpleNamespace(settings=SimpleNamespace(limits=LimitSettings()))
    return WSSession(websocket, runtime, None, send=send, frames=frames)


async def test_frames_go_through_the_frame_writer_synchronously_and_the_rest_through_asgi_send() -> None:
    sent: list[dict[str, Any]] = []
    frames = Frames(limit=10)
    session = session_with(frames, sent)
    # A prefix is written synchronously; the first frame the writer refuses stops it, so the
    # rest keeps its order through the async path.
    assert session.write_nowait([(b"a", True), (b"b", False), (b"x" * 20, False), (b"c", False)]) == 2
    assert frames.written == [(b"a", True), (b"b", False)]
    await session.send(b"x" * 20)
    await session.send(b"c", more=True)
    assert frames.written[-1] == (b"c", True)
    assert sent == [{"type": "websocket.send", "text": "x" * 20}]


async def test_without_a_frame_writer_the_plain_asgi_send_carries_wsproxy_more() -> None:
    sent: list[dict[str, Any]] = []
    session = session_with(None, sent)
    assert session.write_nowait([(b"a", True)]) == 0  # no synchronous path: the sink awaits send
    await session.send(b"a", more=True)
    await session.send("b")
    assert sent == [
        {"type": "websocket.send", "text": "a", "wsproxy.more": True},
        {"type": "websocket.send", "text": "b"},
    ]


async def test_nothing_is_written_synchronously_behind_queued_frames() -> None:
    sent: list[dict[str, Any]] = []
    frames = Frames(limit=10)
    session = session_with(frames, sent)
    session._busy = 1  # a frame is being written (blocked on a full TCP window)
    assert session.write_nowait([(b"a", False)]) == 0
    await session.send(b"b")  # queued for the writer behind it
    assert session.out is not None and session.out.qsize() == 1 and frames.written == []
    session._busy = 0
    assert session.write_nowait([(b"c", False)]) == 0  # "b" is still ahead of it
    session.closed = True
    assert session.writer_task is not None
    session.writer_task.cancel()
    await asyncio.gather(session.writer_task, return_exceptions=True)
