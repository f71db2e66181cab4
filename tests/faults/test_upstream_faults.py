"""Upstream faults: every way a provider can fail, seen from both transports.

The rule under test: a failure is retried (same provider) or failed over (next target of an
alias) only while nothing has reached the client; after the first event the client gets exactly
one terminal ``response.failed`` with a clear error, and the upstream request is closed. Over
WebSocket the next ``response.create`` on the same socket must work.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest

from tests.faults.conftest import (
    IDLE,
    create,
    terminals,
    until_outcome,
    wait_upstream,
    ws_connect,
)

TRANSPORTS = ["ws", "sse"]


@dataclass
class Outcome:
    status: int
    events: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def terminal(self) -> dict[str, Any]:
        found = terminals(self.events)
        assert len(found) == 1, f"expected exactly one terminal event, got {[e['type'] for e in found]}"
        assert self.events[-1] is found[0], "the terminal event must be the last one"
        return found[0]


async def both(check: Any) -> None:
    """Run ``check(transport)`` for WebSocket and SSE at once (each with its own markers)."""
    await asyncio.gather(*(check(t) for t in TRANSPORTS))


def marker() -> str:
    return "m" + uuid.uuid4().hex[:12]


async def run(proxy: Any, transport: str, model: str, text: str, *, check_next: bool = True) -> Outcome:
    """One request over ``transport``; over WebSocket, then a second one that must complete."""
    start = time.monotonic()
    if transport == "sse":
        async with httpx2.AsyncClient(timeout=15) as client:
            r = await client.post(
                proxy.url + "/v1/responses", json={"model": model, "input": text, "stream": True}
            )
        elapsed = time.monotonic() - start
        if r.status_code != 200:
            return Outcome(r.status_code, error=r.json()["error"], headers=dict(r.headers), elapsed=elapsed)
        from tests.faults.conftest import sse_events

        return Outcome(200, events=sse_events(r.content), elapsed=elapsed)
    async with ws_connect(proxy) as ws:
        await ws.send(create(model, text))
        events = await until_outcome(ws, timeout=15)
        elapsed = time.monotonic() - start
        last = events[-1]
        outcome = (
            Outcome(last["status"], error=last["error"], elapsed=elapsed)
            if last["type"] == "error"
            else Outcome(200, events=events, elapsed=elapsed)
        )
        if check_next:
            await ws.send(create("up@fake", "next one"))
            after = await until_outcome(ws)
            assert after[-1]["type"] == "response.completed", after[-1]
            assert after[0]["type"] == "response.created" and after[0]["sequence_number"] == 0
    return outcome


def assert_contiguous(events: list[dict[str, Any]]) -> None:
    seqs = [e["sequence_number"] for e in events]
    assert seqs == list(range(len(seqs))), seqs


def text_of(outcome: Outcome) -> str:
    out = outcome.terminal["response"]["output"]
    return "".join(p.get("text", "") for item in out for p in item.get("content", []))


# -- before any output: retried or failed over --------------------------------------------------


async def test_connection_refused(fault_proxy) -> None:
    proxy = fault_proxy()

    async def check(transport: str) -> None:
        out = await run(proxy, transport, "dead@fake", "x")
        assert out.status == 502 and out.error is not None
        assert out.error["code"] == "upstream_unavailable"
        assert "Could not reach provider 'dead'" in out.error["message"]
        # An alias fails over to its next target: the client never sees the dead one.
        ok = await run(proxy, transport, "dead-then-up", "fail over")
        assert ok.status == 200 and text_of(ok) == "Echo: fail over"

    await both(check)


async def test_tls_handshake_failure(fault_proxy) -> None:
    proxy = fault_proxy()

    async def check(transport: str) -> None:
        out = await run(proxy, transport, "tls@fake", "x")
        assert out.status == 502 and out.error is not None and out.error["code"] == "upstream_unavailable"
        assert "provider 'tls'" in out.error["message"]
        ok = await run(proxy, transport, "tls-then-up", "over tls")
        assert ok.status == 200 and text_of(ok) == "Echo: over tls"

    await both(check)


async def test_http2_goaway_before_answer_is_retried(fault_proxy, raw_upstream) -> None:
    proxy = fault_proxy()

    async def check(transport: str) -> None:
        tag, m = marker(), marker()
        conns = raw_upstream.connections
        out = await run(proxy, transport, f"raw@goaway-once-{tag}", m, check_next=False)
        assert out.status == 200 and out.terminal["type"] == "response.completed"
        assert_contiguous(out.events)
        seen = raw_upstream.find(m)
        assert len(seen) == 2, "the refused stream was retried once"
        assert raw_upstream.connections >= conns + 1, "the retry went on a new connection"

    for transport in TRANSPORTS:  # one after the other: a GOAWAY ends every stream of its connection
        await check(transport)


async def test_5xx_is_retried_then_passed_through(fault_proxy, fault_upstream) -> None:
    fake, _ = fault_upstream
    proxy = fault_proxy()

    async def check(transport: str) -> None:
        m = marker()
        model = fake.script(m, ["fail-503", "fake"])
        ok = await run(proxy, transport, f"up@{model}", m)
        assert ok.status == 200 and text_of(ok) == f"Echo: {m}"
        assert [r["played"] for r in fake.find(m)] == ["fail-503", "fake"]

        m2 = marker()
        out = await run(proxy, transport, "up@fail-503", m2)
        assert out.status == 503 and out.error is not None and out.error["message"] == "fake failure 503"
        assert len(fake.find(m2)) == 2, "max_retries = 1: two attempts, then the error"

    await both(check)


async def test_429_honours_retry_after(fault_proxy, fault_upstream) -> None:
    fake, _ = fault_upstream
    proxy = fault_proxy()

    async def check(transport: str) -> None:
        m = marker()
        model = fake.script(m, ["fail-429-ra1", "fake"])
        ok = await run(proxy, transport, f"up@{model}", m, check_next=False)
        assert ok.status == 200 and text_of(ok) == f"Echo: {m}"
        first, second = fake.find(m)
        assert second["time"] - first["time"] >= 0.95, "waited for Retry-After: 1"

        # Retry-After longer than retry_max_wait: no wait, the 429 goes to the client with its header.
        m2 = marker()
        out = await run(proxy, transport, "up@fail-429-ra30", m2, check_next=False)
        assert out.status == 429 and out.error is not None and out.error["code"] == "rate_limit_exceeded"
        assert out.elapsed < 2.0
        assert len(fake.find(m2)) == 1
        if transport == "sse":
            assert out.headers.get("retry-after") == "30"

    await both(check)


async def test_no_headers_before_first_byte_timeout(fault_proxy, fault_upstream) -> None:
    fake, _ = fault_upstream
    proxy = fault_proxy()

    async def check(transport: str) -> None:
        m = marker()
        out = await run(proxy, transport, "up@hang-headers", m)
        assert out.status == 504 and out.error is not None and out.error["code"] == "upstream_timeout"
        assert 2 * IDLE <= out.elapsed < 2 * IDLE + 3, "first_byte_timeout per attempt, one retry"
        assert await wait_upstream(
            fake, lambda: len(fake.find(m)) == 2 and all(r["disconnected"] for r in fake.find(m))
        )
        m2 = marker()
        ok = await run(proxy, transport, "hang-then-up", m2)
        assert ok.status == 200 and text_of(ok) == f"Echo: {m2}"

    await both(check)


async def test_headers_then_silence_before_any_event(fault_proxy, fault_upstream) -> None:
    """200 and then nothing: nothing reached the client, so it is an error (or a failover),
    not a response that failed."""
    fake, _ = fault_upstream
    proxy = fault_proxy()

    async def check(transport: str) -> None:
        m = marker()
        out = await run(proxy, transport, "up@stall-after-0", m)
        assert out.status == 504 and out.error is not None and out.error["code"] == "upstream_timeout"
        assert await wait_upstream(fake, lambda: all(r["disconnected"] for r in fake.find(m)))
        m2 = marker()
        ok = await run(proxy, transport, "stall0-then-up", m2)
        assert ok.status == 200 and text_of(ok) == f"Echo: {m2}"

    await both(check)


async def test_impossible_first_event_fails_over(fault_proxy) -> None:
    proxy = fault_proxy()

    async def check(transport: str) -> None:
        out = await run(proxy, transport, "up@order-delta-first", marker())
        assert out.status == 502 and out.error is not None
        assert "before response.created" in out.error["message"]
        m = marker()
        ok = await run(proxy, transport, "order-then-up", m)
        assert ok.status == 200 and text_of(ok) == f"Echo: {m}"
        assert_contiguous(ok.events)

    await both(check)


# -- after output began: exactly one response.failed, never a retry ------------------------------

MIDSTREAM = [
    ("up@stall-after-5", "upstream_timeout", "Timed out"),
    ("up1@stall-after-5", "upstream_timeout", "Timed out"),
    ("up1@die-after-5", "server_error", "provider 'up1'"),
    ("up@garbage-after-5", "server_error", "not a JSON object"),
    ("up@badutf8-after-5", "server_error", "Malformed stream"),
    # A data line whose JSON is broken: never forwarded; the stream ends failed, not completed.
    ("up@brokenjson-after-5", "server_error", "not valid JSON"),
    ("up@order-double-created", "server_error", "response.created"),
    ("raw@goaway-mid", "server_error", "provider 'raw'"),
    ("raw@rst-mid", "server_error", "provider 'raw'"),
    ("raw@garbage-mid", "server_error", "Provider 'raw' broke the HTTP/2 protocol"),
    ("raw@reset-mid", "server_error", "provider 'raw'"),
    ("raw1@reset-mid", "server_error", "provider 'raw1'"),
]


@pytest.mark.parametrize("model,code,message", MIDSTREAM, ids=[m[0] for m in MIDSTREAM])
async def test_midstream_failure_gives_one_failed_event(
    fault_proxy, fault_upstream, raw_upstream, model, code, message
) -> None:
    proxy = fault_proxy()

    async def check(transport: str) -> None:
        m = marker()
        out = await run(proxy, transport, model, m)
        assert out.status == 200, out.error
        terminal = out.terminal
        assert terminal["type"] == "response.failed"
        error = terminal["response"]["error"]
        assert error["code"] == code and message in error["message"], error
        assert out.events[0]["type"] == "response.created"
        ids = {e["response"]["id"] for e in out.events if "response" in e}
        assert len(ids) == 1, "one response, the one the client saw created"
        upstream = raw_upstream if model.startswith("raw") else fault_upstream[0]
        assert len(upstream.find(m)) == 1, "no retry once output reached the client"
        if "stall" in model:
            assert await wait_upstream(upstream, lambda: upstream.find(m)[0]["disconnected"]), (
                "upstream saw the close"
            )
            assert IDLE <= out.elapsed < IDLE + 3

    await both(check)


async def test_midstream_failure_is_not_failed_over(fault_proxy, fault_upstream) -> None:
    fake, _ = fault_upstream
    proxy = fault_proxy()
    m = marker()
    out = await run(proxy, "ws", "midfail-then-up", m)
    assert out.terminal["type"] == "response.failed"
    assert [r["played"] for r in fake.find(m)] == ["die-after-5"], "the fallback never ran"


async def test_stall_detected_on_a_busy_http2_connection(fault_proxy, raw_upstream) -> None:
    """A stalled stream shares its HTTP/2 connection with a busy one: the idle timeout must
    still fire for it (a per-connection read timeout would not)."""
    import asyncio

    proxy = fault_proxy()
    busy, stalled = marker(), marker()
    words = " ".join(["w"] * 30)  # ~40 events, 50 ms apart: busy for ~2 s
    async with ws_connect(proxy) as ws:
        await ws.send(create("raw@slow-50", f"{busy} {words}", stream_id="busy"))
        await ws.send(create("raw@stall-mid", stalled, stream_id="stalled"))
        outcomes: dict[str, tuple[float, dict[str, Any]]] = {}
        start = time.monotonic()
        async with asyncio.timeout(15):
            while len(outcomes) < 2:
                event = await until_outcome(ws)
                last = event[-1]
                outcomes[last["stream_id"]] = (time.monotonic() - start, last)
    assert outcomes["busy"][1]["type"] == "response.completed"
    assert outcomes["stalled"][1]["type"] == "response.failed"
    assert outcomes["stalled"][1]["response"]["error"]["code"] == "upstream_timeout"
    assert outcomes["stalled"][0] < outcomes["busy"][0], "the stall was detected while the other stream ran"
    assert outcomes["stalled"][0] < IDLE + 2.0
    assert raw_upstream.find(busy)[0]["proto"] == raw_upstream.find(stalled)[0]["proto"] == "2"
    assert await wait_upstream(raw_upstream, lambda: raw_upstream.find(stalled)[0]["reset_by_client"])


# -- a bug in the proxy itself -------------------------------------------------------------------


async def test_an_internal_error_mid_stream_still_ends_with_one_terminal_event(fault_proxy) -> None:
    """The edges' safety net: a provider that raises something that is not a ProxyError after
    output began (a bug) still gives the client exactly one terminal event, and the socket lives."""
    proxy = fault_proxy()
    runtime = proxy.app_state.app.state.runtime
    local = runtime.providers["local"]
    real = local.stream

    async def buggy(call: Any, response_id: str, created_at: int) -> Any:
        n = 0
        async for event in real(call, response_id, created_at):
            yield event
            n += 1
            if n == 4 and "boom" in str(call.input):
                raise RuntimeError("a bug")

    local.stream = buggy

    async def check(transport: str) -> None:
        out = await run(proxy, transport, "local", f"boom {transport}")
        assert out.status == 200, out.error
        terminal = out.terminal
        assert (
            terminal["type"] == "response.failed" and terminal["response"]["error"]["code"] == "server_error"
        )
        assert_contiguous(out.events)

    await both(check)


async def test_more_concurrent_responses_than_one_http2_connection_carries(
    proxy_process, fault_upstream
) -> None:
    """hypercorn allows 100 streams per HTTP/2 connection: a pool that kept one connection per
    origin would queue the rest behind it (until they time out). The pool opens more
    connections instead, so nothing waits for a stream slot."""
    fake, _ = fault_upstream
    # Each response holds its stream 3 s. (A process of its own: its timing does not share a
    # GIL with the 110 test clients.)
    limits = {"idle_timeout": 10.0, "first_byte_timeout": 8.0, "max_retries": 0}
    proxy = proxy_process(providers={"up": limits})
    tag = marker()
    n = 110

    async def one(i: int) -> str:
        async with ws_connect(proxy) as ws:
            await ws.send(create("up@think-3000", f"{tag} {i}"))
            last = (await until_outcome(ws, timeout=20))[-1]
            return str(last["type"]) if last["type"] != "error" else f"error {last['error']['message']}"

    results = await asyncio.gather(*(one(i) for i in range(n)))
    assert results == ["response.completed"] * n
    records = fake.find(tag)
    assert len(records) == n
    assert {r["http_version"] for r in records} == {"2"}
    connections = {r["client"] for r in records}
    assert len(connections) >= 2, "more HTTP/2 connections were opened"
    per_connection = [sum(r["client"] == c for r in records) for c in connections]
    assert max(per_connection) <= 100, per_connection
