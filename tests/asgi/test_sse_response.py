"""The SSE answer on its own (sink + SSE formatter): events that arrived together
(``Event.more``) go out in one write, and every other event in a write of its own, at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from wsproxy.asgi.formats import sse_response
from wsproxy.core.events import Event
from wsproxy.core.sse import encode_event
from wsproxy.observability.metrics import Metrics
from wsproxy.settings import LimitSettings


def event(seq: int, more: bool = False) -> Event:
    data = b'{"type":"response.output_text.delta","sequence_number":%d}' % seq
    e = Event("response.output_text.delta", data, seq)
    e.more = more
    return e


async def test_events_that_arrived_together_are_written_at_once() -> None:
    runtime: Any = SimpleNamespace(
        settings=SimpleNamespace(limits=LimitSettings()),
        metrics=Metrics(),
        grace_over=False,
        streaming=set(),
        response_started=lambda: None,
        response_ended=lambda: None,
    )
    a, b, c, d, e = event(0), event(1, more=True), event(2, more=True), event(3), event(4, more=True)
    writes_when: list[int] = []  # how many events the producer had handed over at each write
    handed = 0

    async def events() -> AsyncIterator[Event]:
        nonlocal handed
        for item in (a, b, c, d, e):
            handed += 1
            yield item
            await asyncio.sleep(0)

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        writes_when.append(handed)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client stays
        raise AssertionError

    await sse_response(runtime, events())({"type": "http"}, receive, send)
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    one = [encode_event(x.type, x.data) for x in (a, b, c, d, e)]
    # a alone; b and c (marked) with d, the first unmarked one after them; e (marked, but the
    # stream ended) on its own; then the end of the body.
    assert bodies == [one[0], one[1] + one[2] + one[3], one[4], b""]
    # a was written before the producer handed over b: nothing waits for what is not at hand.
    assert writes_when[1] == 1
