"""The upstream body buffer on its own: bounded reads, consumption reported for flow control,
the idle timeout measured from the last chunk."""

from __future__ import annotations

import asyncio

import pytest

from wsproxy.errors import UpstreamTimeout
from wsproxy.upstream.body import READ_MAX, Body


async def test_a_read_joins_buffered_chunks_up_to_a_bound_and_reports_what_it_took() -> None:
    consumed: list[int] = []
    body = Body(asyncio.get_running_loop(), 5.0, "p", consumed.append)
    chunks = [bytes([65 + i]) * 20_000 for i in range(10)]
    for chunk in chunks:
        body.feed(chunk)
    body.end()
    reads = []
    while data := await body.read():
        reads.append(data)
    assert b"".join(reads) == b"".join(chunks)
    assert all(len(r) <= READ_MAX for r in reads) and len(reads) == 4
    assert consumed == [len(r) for r in reads] and body.buffered == 0
    big = Body(asyncio.get_running_loop(), 5.0, "p", consumed.append)
    big.feed(b"x" * (3 * READ_MAX))  # one chunk larger than the bound is handed on whole
    assert len(await big.read()) == 3 * READ_MAX


async def test_the_idle_timeout_counts_from_the_last_chunk_not_from_the_first_wait() -> None:
    loop = asyncio.get_running_loop()
    body = Body(loop, 0.3, "p", lambda n: None)

    async def trickle() -> None:
        for _ in range(4):
            await asyncio.sleep(0.15)
            body.feed(b"x")

    feeder = loop.create_task(trickle())
    started = loop.time()
    for _ in range(4):
        assert await body.read() == b"x"  # 0.6 s in all, never 0.3 s of silence
    assert loop.time() - started >= 0.55
    with pytest.raises(UpstreamTimeout, match="idle timeout"):
        await body.read()
    await feeder
