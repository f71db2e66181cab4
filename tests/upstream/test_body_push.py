"""The upstream body in push mode (wsproxy.upstream.body.Body.push): chunks handed on in the
protocol's callback, pause/resume as the backpressure, the end after held chunks, and the idle
timeout timed only while not paused."""

from __future__ import annotations

import asyncio

import pytest

from wsproxy.errors import ProxyError, UpstreamTimeout, UpstreamUnavailable
from wsproxy.upstream.body import Body


class Consumer:
    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.chunks: list[bytes] = []
        self.ends: list[ProxyError | None] = []
        self.ended = asyncio.Event()

    def on_data(self, data: bytes) -> bool:
        self.chunks.append(data)
        return self.accept

    def on_end(self, error: ProxyError | None) -> None:
        self.ends.append(error)
        self.ended.set()


def make(idle: float = 5.0) -> tuple[Body, list[int]]:
    consumed: list[int] = []
    return Body(asyncio.get_running_loop(), idle, "p", consumed.append), consumed


async def test_chunks_are_handed_on_synchronously_and_counted_consumed() -> None:
    body, consumed = make()
    body.feed(b"early")  # buffered before pushing: handed on first
    c = Consumer()
    body.push(c.on_data, c.on_end)
    assert c.chunks == [b"early"]
    body.feed(b"a")
    body.feed(b"bc")
    assert c.chunks == [b"early", b"a", b"bc"]  # in the feed call itself, no task switch
    assert consumed == [5, 1, 2]
    assert body.buffered == 0
    body.end()
    assert c.ends == [None]
    body.end()
    assert c.ends == [None]  # once


async def test_pause_holds_chunks_until_resume_then_ends_after_them() -> None:
    body, consumed = make()
    c = Consumer(accept=False)
    body.push(c.on_data, c.on_end)
    body.feed(b"1")  # the consumer pauses
    body.feed(b"2")
    body.feed(b"3")
    body.end()
    assert c.chunks == [b"1"]
    assert body.buffered == 2 and consumed == [1]  # held, not acknowledged: the upstream slows down
    assert c.ends == []  # the end waits behind the held chunks
    c.accept = True
    body.resume()
    assert c.chunks == [b"1", b"23"]  # joined into one read
    assert c.ends == [None]


async def test_error_while_paused_is_reported_after_resume() -> None:
    body, _ = make()
    c = Consumer(accept=False)
    body.push(c.on_data, c.on_end)
    body.feed(b"x")
    error = UpstreamUnavailable("reset")
    body.fail(error)
    assert c.ends == []
    c.accept = True
    body.resume()
    assert c.ends == [error]


async def test_idle_timeout_fires_while_pushing() -> None:
    body, _ = make(idle=0.05)
    c = Consumer()
    body.push(c.on_data, c.on_end)
    body.feed(b"x")
    async with asyncio.timeout(2):
        await c.ended.wait()
    assert isinstance(c.ends[0], UpstreamTimeout)


async def test_idle_timeout_does_not_fire_while_the_client_holds_us_up() -> None:
    body, _ = make(idle=0.05)
    c = Consumer(accept=False)
    body.push(c.on_data, c.on_end)
    body.feed(b"x")  # paused by the consumer (its client is slow)
    await asyncio.sleep(0.2)
    assert c.ends == []
    c.accept = True
    body.resume()  # pushing again: the upstream's silence is timed again
    async with asyncio.timeout(2):
        await c.ended.wait()
    assert isinstance(c.ends[0], UpstreamTimeout)


async def test_unpush_returns_to_pull_mode() -> None:
    body, _ = make()
    c = Consumer()
    body.push(c.on_data, c.on_end)
    body.unpush()
    body.feed(b"rest")
    body.end()
    assert c.chunks == [] and c.ends == []
    assert await body.read() == b"rest"
    assert await body.read() == b""


@pytest.mark.parametrize("accept", [True, False])
async def test_close_stops_pushing(accept: bool) -> None:
    body, _ = make()
    c = Consumer(accept=accept)
    body.push(c.on_data, c.on_end)
    body.close()
    body.feed(b"late")
    assert c.chunks == []
