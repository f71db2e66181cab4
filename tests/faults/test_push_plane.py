"""The push data plane (wsproxy.service.push) carries the steady state of a response over both
transports and both upstream wire protocols, and the fault rules hold on it: a stall, a drop or
garbage after the first events end the response with exactly one ``response.failed``; the text
arrives whole and in order; a client that reads slowly still gets everything (backpressure)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.faults.conftest import create, metric, metrics, post_sse, terminals, until_outcome, ws_connect
from wsproxy.service import push as push_module

TRANSPORTS = ["ws", "sse"]
PROVIDERS = ["up", "up1"]  # h2c, HTTP/1.1


class PushCounter:
    """Counts pushed runs and the events forwarded from the upstream's callback."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.runs = 0
        self.events = 0
        original_run = push_module.Pusher.run
        original_on_events = push_module.Pusher._on_events
        counter = self

        async def run(self: Any, feed: Any, drain: Any) -> None:
            counter.runs += 1
            await original_run(self, feed, drain)

        def on_events(self: Any, events: list[Any]) -> bool:
            counter.events += len(events)
            return original_on_events(self, events)

        monkeypatch.setattr(push_module.Pusher, "run", run)
        monkeypatch.setattr(push_module.Pusher, "_on_events", on_events)


async def respond(proxy: Any, transport: str, model: str, **fields: Any) -> list[dict[str, Any]]:
    if transport == "sse":
        status, events, body = await post_sse(proxy, model, **fields)
        assert status == 200, body
        return events
    async with ws_connect(proxy) as ws:
        await ws.send(create(model, **fields))
        events = await until_outcome(ws, timeout=10)
    assert events[-1]["type"] != "error", events[-1]
    return events


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_steady_state_is_pushed(
    fault_proxy: Any, monkeypatch: pytest.MonkeyPatch, transport: str, provider: str
) -> None:
    proxy = fault_proxy()
    counter = PushCounter(monkeypatch)
    events = await respond(proxy, transport, f"{provider}@slow-5", text="push me")
    assert counter.runs == 1
    assert counter.events > 3  # deltas went through the connection's callback
    (terminal,) = terminals(events)
    assert terminal["type"] == "response.completed"
    assert events[-1] is terminal
    assert text_of(events) == terminal["response"]["output"][0]["content"][0]["text"]
    seqs = [e["sequence_number"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("fault", ["stall-after-4", "die-after-4", "garbage-after-4"])
async def test_a_fault_while_pushing_ends_with_one_failed_event(
    fault_proxy: Any, monkeypatch: pytest.MonkeyPatch, transport: str, fault: str
) -> None:
    proxy = fault_proxy()
    counter = PushCounter(monkeypatch)
    events = await respond(proxy, transport, f"up@{fault}")
    if not fault.startswith("garbage"):  # (garbage often comes in the first read: not pushed)
        assert counter.runs == 1
    (terminal,) = terminals(events)
    assert terminal["type"] == "response.failed"
    assert events[-1] is terminal


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_slow_reader_gets_everything_in_order(
    fault_proxy: Any, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    """Far more than the socket buffers: the push pauses (the upstream with it) and resumes."""
    proxy = fault_proxy()
    counter = PushCounter(monkeypatch)
    async with ws_connect(proxy, max_queue=4) as ws:
        await ws.send(create(f"{provider}@flood-3000-1024"))
        await asyncio.sleep(0.3)  # the client reads nothing for a while: buffers fill
        events = await until_outcome(ws, timeout=20)
    assert counter.runs == 1
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) > 3000 - 1
    assert len({e["delta"] for e in deltas[:7]}) == 7  # the flood's rotating pads, in order
    (terminal,) = terminals(events)
    assert terminal["type"] == "response.completed"
    # Sampled on the push plane (its first read, then one in 64): the delay wsproxy added.
    values = await metrics(proxy)
    sampled = metric(values, "wsproxy_forward_delay_seconds_count")
    assert sampled >= 1
    assert metric(values, "wsproxy_forward_delay_seconds_sum") / sampled < 1.0


async def test_previous_response_id_is_kept_on_the_pushed_path(fault_proxy: Any) -> None:
    proxy = fault_proxy()
    first = await respond(proxy, "ws", "up1@slow-1", store=True)
    previous = first[-1]["response"]["id"]
    events = await respond(proxy, "ws", "up1@slow-1", previous_response_id=previous)
    (terminal,) = terminals(events)
    assert terminal["type"] == "response.completed"
    assert terminal["response"]["previous_response_id"] == previous


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_access_log_counts_the_bytes_pushed_over_sse(
    fault_proxy: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, provider: str
) -> None:
    """SSE on the push plane is written by the server's body writer, past the ASGI send that the
    access log watches: its line still counts every body byte the client received."""
    import logging

    proxy = fault_proxy()
    counter = PushCounter(monkeypatch)
    with caplog.at_level(logging.INFO, logger="wsproxy.access"):
        status, _, body = await post_sse(proxy, f"{provider}@slow-5", text="push me")
        assert status == 200 and counter.events > 3
        for _ in range(100):
            lines = [r for r in caplog.records if r.name == "wsproxy.access"]
            if lines:
                break
            await asyncio.sleep(0.02)
    (line,) = [r.fields for r in lines if r.fields["path"] == "/v1/responses"]  # type: ignore[attr-defined]
    assert line["bytes_sent"] == len(body)
