"""Fuzzing the WebSocket session over a real socket: random sequences of frames (valid creates
with random fields, broken JSON, random JSON, unknown event types, binary frames). Whatever
comes, the socket stays open, every frame gets exactly one answer (a terminal event, or a
request-level ``error``), sequence numbers are contiguous per response, nothing is a server
error, and a valid create afterwards still completes. The corpus is replayed the same way, and
over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from tests.fuzz.conftest import CORPUS
from tests.fuzz.strategies import ws_frames

TERMINAL = ("response.completed", "response.failed", "response.incomplete")
VALID = '{"type": "response.create", "model": "local", "input": "still alive?", "store": false}'


def url(proxy: Any) -> str:
    return f"ws://127.0.0.1:{proxy.port}/v1/responses"


def answers(ws: ClientConnection, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Events until ``n`` frames were answered; checks the per-response invariants on the way."""
    events: list[dict[str, Any]] = []
    outcomes = 0
    expected: dict[Any, int] = {}  # lane -> next sequence_number of its running response
    while outcomes < n:
        event = orjson.loads(ws.recv(timeout=timeout))
        events.append(event)
        lane = event.get("stream_id")
        seq = event.get("sequence_number")
        if event["type"] == "error" and seq is None:
            outcomes += 1
            assert event["status"] < 500, event
            assert event["error"]["message"], event
            continue
        assert isinstance(seq, int), event
        if event["type"] == "response.created":
            assert seq == 0 and lane not in expected, event
        else:
            assert expected.get(lane) == seq, (event, expected)
        expected[lane] = seq + 1
        if event["type"] in TERMINAL:
            outcomes += 1
            del expected[lane]
            if event["type"] == "response.failed":
                assert event["response"]["error"]["code"] != "server_error", event
    assert not expected, "a response was left without its terminal event"
    return events


def still_works(ws: ClientConnection) -> None:
    ws.send(VALID)
    assert answers(ws, 1)[-1]["type"] == "response.completed"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(ws_frames(), min_size=1, max_size=8))
def test_session_answers_every_frame_and_stays_open(fuzz_proxy: Any, frames: list[str | bytes]) -> None:
    with connect(url(fuzz_proxy), max_size=None, open_timeout=5, close_timeout=2) as ws:
        for frame in frames:
            ws.send(frame)
        answers(ws, len(frames))
        still_works(ws)


def corpus_files() -> list[Path]:
    return sorted((CORPUS / "frames").iterdir())


def as_frame(path: Path) -> str | bytes:
    data = path.read_bytes()
    return data if path.suffix == ".bin" else data.decode("utf-8")


def test_corpus_over_one_socket(fuzz_proxy: Any) -> None:
    files = corpus_files()
    with connect(url(fuzz_proxy), max_size=None, open_timeout=5, close_timeout=2) as ws:
        for path in files:
            ws.send(as_frame(path))
            events = answers(ws, 1)
            assert events[-1]["type"] in (*TERMINAL, "error"), path.name
        still_works(ws)


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_corpus_over_http(fuzz_proxy: Any, path: Path) -> None:
    data = path.read_bytes()
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        obj.pop("type", None)
        data = orjson.dumps(obj)
    r = httpx2.post(
        fuzz_proxy.url + "/v1/responses",
        content=data,
        timeout=20,
        headers={"content-type": "application/json"},
    )
    assert r.status_code < 500, r.text
    if r.headers["content-type"].startswith("text/event-stream"):
        data = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert orjson.loads(data[-1])["type"] in ("response.completed", "response.incomplete")
        return
    body = r.json()
    if r.status_code == 200:
        assert body["status"] in ("completed", "incomplete")
    else:
        assert body["error"]["message"] and body["error"]["type"]
