"""Microbenchmarks behind the hot-path findings: what one step of the per-delta path costs on this
machine, in process, without sockets (so the shared-machine noise of the end-to-end runs is small).

    python -m bench.micro

- a timer per chunk: ``async with asyncio.timeout()`` and ``anyio.fail_after`` (httpcore2 wraps
  every read in one) versus a plain ``await``;
- the SSE decoder on one delta per chunk and on 200 deltas per chunk;
- permessage-deflate of one delta frame (websockets' settings as uvicorn configures them);
- the UTF-8 check of a delta payload;
- httpcore2's keep-alive probe of one idle pooled connection (``has_expired`` ->
  ``get_extra_info("is_readable")``), which its pool runs for every idle connection whenever a
  request starts or a response ends.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable

from bench.streams import Pace, ResponsesStream


def _per_call(fn: Callable[[], object], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


async def _timers(n: int) -> dict[str, float]:
    import anyio

    async def gen():  # type: ignore[no-untyped-def]
        for i in range(3 * n):
            yield i

    g = gen().__aiter__()
    out = {}
    t = time.perf_counter()
    for _ in range(n):
        await anext(g)
    out["await anext(chunks)"] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(n):
        async with asyncio.timeout(300):
            await anext(g)
    out["async with asyncio.timeout(): await anext(chunks)"] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(n):
        with anyio.fail_after(300):
            await anext(g)
    out["with anyio.fail_after(): await anext(chunks)"] = (time.perf_counter() - t) / n * 1e6
    loop = asyncio.get_running_loop()

    def timer() -> None:
        loop.call_at(loop.time() + 300, lambda: None).cancel()

    out["loop.call_at() + cancel()"] = _per_call(timer, n)

    from httpcore2._backends.anyio import AnyIOStream
    from httpcore2._utils import is_socket_readable

    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stream = AnyIOStream(await anyio.connect_tcp("127.0.0.1", port))
    out["httpcore2 idle-connection probe: get_extra_info('is_readable')"] = _per_call(
        lambda: stream.get_extra_info("is_readable"), n // 5
    )
    sock = stream.get_extra_info("socket")
    out["  of which the poll() itself (is_socket_readable)"] = _per_call(
        lambda: is_socket_readable(sock), n // 5
    )
    await stream.aclose()
    server.close()
    return out


def main() -> None:
    from wsproxy.core.sse import SSEDecoder

    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None  # type: ignore[assignment]
    rows: dict[str, float] = {}
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        rows.update(runner.run(_timers(50_000)))

    stream = ResponsesStream("m", Pace(200, 0, 0), {})
    events = [stream.delta(i, 1_234_567_890_123) for i in range(200)]
    big = b"".join(events)

    def one_per_chunk() -> None:
        dec = SSEDecoder()
        for e in events:
            dec.feed(e)

    rows["SSEDecoder.feed, one delta per chunk (per delta)"] = _per_call(one_per_chunk, 200) / 200
    rows["SSEDecoder.feed, 200 deltas in one chunk (per delta)"] = (
        _per_call(lambda: SSEDecoder().feed(big), 200) / 200
    )
    payload = events[0].split(b"data: ", 1)[1].strip()
    enc = zlib.compressobj(wbits=-12, memLevel=5)

    def deflate() -> None:
        enc.compress(payload)
        enc.flush(zlib.Z_SYNC_FLUSH)

    rows[f"permessage-deflate of one {len(payload)}-byte delta frame"] = _per_call(deflate, 20_000)
    rows["UTF-8 check of one delta payload (bytes.decode)"] = _per_call(payload.decode, 100_000)
    width = max(map(len, rows))
    for name, us in rows.items():
        print(f"{name:<{width}}  {us:7.2f} us")


if __name__ == "__main__":
    main()
