"""SIGTERM on a real ``wsproxy serve`` process: readiness turns false first, new work is refused,
in-flight responses finish within the grace period, the rest end with a terminal event that is
stored, WebSockets close with 1001, and the process exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from typing import Any

import httpx2
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.faults.conftest import create, is_outcome, recv_json, ws_url

WORDS = " ".join(f"w{i}" for i in range(30))  # ~40 events: 50 ms apart, ~2 s
ENDLESS = " ".join(f"w{i}" for i in range(400))  # 200 ms apart: far longer than any grace


def marker() -> str:
    return "m" + uuid.uuid4().hex[:12]


async def ws_events_until_closed(ws: Any, timeout: float) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                events.append(json.loads(await ws.recv()))
    except websockets.ConnectionClosed:
        return events


class SSEReader:
    """An SSE request read in the background, keeping every event."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.events: list[dict[str, Any]] = []
        self.first = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(url, body))

    async def _run(self, url: str, body: dict[str, Any]) -> int:
        async with httpx2.AsyncClient(timeout=30) as client:
            async with client.stream("POST", url + "/v1/responses", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
                        if any(e["type"] == "response.output_text.delta" for e in self.events):
                            self.first.set()
                return r.status_code


async def first_delta(ws: Any) -> list[dict[str, Any]]:
    events = []
    while not events or events[-1]["type"] != "response.output_text.delta":
        events.append(await recv_json(ws))
    return events


async def refused_while_draining(proxy: Any) -> None:
    """Readiness is false and new work is refused (HTTP 503, WebSocket upgrade 503)."""
    async with httpx2.AsyncClient(timeout=5) as client:
        ready = await client.get(proxy.url + "/readyz")
        assert ready.status_code == 503
        r = await client.post(proxy.url + "/v1/responses", json={"model": "local", "input": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_shutting_down"
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(ws_url(proxy), open_timeout=5):
            pass
    assert info.value.response.status_code == 503


async def stored(proxy_process: Any, response_id: str) -> dict[str, Any]:
    """The stored response, read back from a new process on the same store."""
    again = proxy_process(shutdown_grace=1.0)
    async with httpx2.AsyncClient(timeout=5) as client:
        r = await client.get(again.url + f"/v1/responses/{response_id}")
    assert r.status_code == 200, r.text
    value: dict[str, Any] = r.json()
    return value


async def test_sigterm_lets_in_flight_responses_finish(proxy_process, fault_upstream) -> None:
    proxy = proxy_process(shutdown_grace=8.0)
    m = marker()
    async with websockets.connect(ws_url(proxy), max_size=None) as ws:
        await ws.send(create("up@slow-50", f"{m} {WORDS}", store=True))
        # A second response queued on the same lane has not started: it is refused at drain.
        await ws.send(create("up@slow-50", f"{m} queued", store=True))
        sse = SSEReader(proxy.url, {"model": "up@slow-50", "input": f"{m} {WORDS}", "stream": True})
        head = await first_delta(ws)
        async with asyncio.timeout(5):
            await sse.first.wait()
        start = time.monotonic()
        proxy.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)  # the signal is handled on the loop's next tick
        await refused_while_draining(proxy)
        rest = await ws_events_until_closed(ws, 10)
        close_code = ws.close_code
    events = head + rest
    outcomes = [e for e in events if is_outcome(e)]
    assert [e["type"] for e in outcomes] == ["error", "response.completed"] or [
        e["type"] for e in outcomes
    ] == ["response.completed", "error"], [e["type"] for e in outcomes]
    refused = next(e for e in outcomes if e["type"] == "error")
    assert refused["status"] == 503 and refused["error"]["code"] == "server_shutting_down"
    completed = next(e for e in outcomes if e["type"] == "response.completed")
    assert close_code == 1001
    status = await asyncio.wait_for(sse.task, 10)
    assert status == 200 and sse.events[-1]["type"] == "response.completed"
    assert proxy.wait(15) == 0
    assert time.monotonic() - start < 8.0, "it did not wait for the whole grace period"
    record = await stored(proxy_process, completed["response"]["id"])
    assert record["status"] == "completed"


async def test_sigterm_grace_over_ends_responses_with_a_terminal_event(proxy_process, fault_upstream) -> None:
    fake, _ = fault_upstream
    grace = 1.0
    proxy = proxy_process(shutdown_grace=grace)
    m = marker()
    async with websockets.connect(ws_url(proxy), max_size=None) as ws:
        await ws.send(create("up@slow-200", f"{m} ws {ENDLESS}", store=True))
        sse = SSEReader(
            proxy.url, {"model": "up@slow-200", "input": f"{m} sse {ENDLESS}", "stream": True, "store": True}
        )
        json_task = asyncio.get_running_loop().create_task(_post_json(proxy.url, f"{m} json {ENDLESS}"))
        head = await first_delta(ws)
        async with asyncio.timeout(5):
            await sse.first.wait()
        start = time.monotonic()
        proxy.signal(signal.SIGTERM)
        rest = await ws_events_until_closed(ws, grace + 8)
        close_code = ws.close_code
    ended = time.monotonic() - start
    events = head + rest
    assert close_code == 1001
    assert grace <= ended < grace + 5
    terminal = [e for e in events if e["type"].startswith("response.") and is_outcome(e)]
    assert len(terminal) == 1 and events[-1] is terminal[0]
    failed = terminal[0]
    assert failed["type"] == "response.failed"
    assert failed["response"]["error"]["code"] == "server_shutting_down"
    # WebSocket mode's error envelope: nested, with an HTTP-style status.
    assert events[-2]["type"] == "error" and events[-2]["error"]["code"] == "server_shutting_down"
    assert events[-2]["status"] == 503
    assert [e["sequence_number"] for e in events] == list(range(len(events)))

    await asyncio.wait_for(sse.task, 10)
    sse_terminal = [e for e in sse.events if e["type"] in ("response.completed", "response.failed")]
    assert [e["type"] for e in sse_terminal] == ["response.failed"] and sse.events[-1] is sse_terminal[0]
    assert sse_terminal[0]["response"]["error"]["code"] == "server_shutting_down"

    json_status, json_body = await asyncio.wait_for(json_task, 10)
    assert json_status == 200 and json_body["status"] == "failed"
    assert json_body["error"]["code"] == "server_shutting_down"

    assert proxy.wait(15) == 0
    # The upstream requests were closed, not left running.
    for which in ("ws", "sse", "json"):
        records = [r for r in fake.find(f"{m} {which}")]
        assert len(records) == 1 and records[0]["disconnected"] and not records[0]["finished"], which
    # Nothing stored was lost: the ended responses are in the store, as the clients saw them.
    for response in (failed["response"], sse_terminal[0]["response"], json_body):
        record = await stored(proxy_process, response["id"])
        assert record["status"] == "failed" and record["error"]["code"] == "server_shutting_down"
        assert record["output"] == response["output"]


async def _post_json(url: str, text: str) -> tuple[int, dict[str, Any]]:
    async with httpx2.AsyncClient(timeout=30) as client:
        r = await client.post(
            url + "/v1/responses", json={"model": "up@slow-200", "input": text, "store": True}
        )
    return r.status_code, r.json()


async def test_second_signal_exits_at_once(proxy_process) -> None:
    proxy = proxy_process(shutdown_grace=30.0)
    async with websockets.connect(ws_url(proxy), max_size=None) as ws:
        await ws.send(create("up@slow-200", ENDLESS))
        await first_delta(ws)
        proxy.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        proxy.signal(signal.SIGTERM)
        start = time.monotonic()
        code = await asyncio.to_thread(proxy.wait, 10)
    assert time.monotonic() - start < 5
    assert code is not None


def test_session_rules_drop_queued_keeps_running_ones() -> None:
    """At shutdown the session refuses what has not started; what runs may finish."""
    from wsproxy.core.request import parse_create
    from wsproxy.core.session import SessionRules

    rules = SessionRules(max_inflight=1)
    requests = [parse_create({"model": "local", "input": str(i)}, websocket=True) for i in range(3)]
    lane_b = parse_create({"model": "local", "input": "b", "stream_id": "b"}, websocket=True)
    for request in [*requests, lane_b]:
        assert rules.submit(request) is None
    started = rules.next_ready()
    assert [r for _, r in started] == [requests[0]]
    dropped = rules.drop_queued()
    assert [(lane, r) for lane, r in dropped] == [(None, requests[1]), (None, requests[2]), ("b", lane_b)]
    assert not rules.idle  # the running one is still in flight
    rules.finished(None, requests[0], None, False)
    assert rules.idle and rules.next_ready() == []
