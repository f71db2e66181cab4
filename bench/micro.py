"""Microbenchmarks behind the hot-path findings: what one step of the per-delta path costs on this
machine, in process, without sockets (so the shared-machine noise of the end-to-end runs is small).

    python -m bench.micro

- a timer per chunk (``async with asyncio.timeout()``) versus a plain ``await``, and the upstream
  body buffer wsproxy reads from (one idle timer per stream, armed lazily);
- the h2 state machine per received DATA frame, with and without acknowledging it at once;
- the SSE decoder on one delta per chunk and on 200 deltas per chunk;
- permessage-deflate of one delta frame (wsproxy's window and memLevel);
- the UTF-8 check of a delta payload.
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
    from wsproxy.upstream.body import Body

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
    out["async with asyncio.timeout(): await anext(chunks)  (a timer per chunk)"] = (
        (time.perf_counter() - t) / n * 1e6
    )
    loop = asyncio.get_running_loop()

    def timer() -> None:
        loop.call_at(loop.time() + 300, lambda: None).cancel()

    out["loop.call_at() + cancel()"] = _per_call(timer, n)
    body = Body(loop, 300.0, "bench", lambda _n: None)
    chunk = b"x" * 200
    t = time.perf_counter()
    for _ in range(n):
        body.feed(chunk)
        await body.read()
    out["upstream Body.feed() + read() of one chunk (idle timer armed lazily)"] = (
        (time.perf_counter() - t) / n * 1e6
    )
    body.close()
    return out


def _h2_frames(n: int) -> dict[str, float]:
    """What the h2 state machine costs per received DATA frame (one delta each)."""
    import h2.config
    import h2.connection
    import h2.settings

    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1}
    )
    client.initiate_connection()
    client.increment_flow_control_window(2**31 - 1 - 65535)
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    request = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]
    client.send_headers(1, request, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(b":status", b"200")])
    client.receive_data(server.data_to_send())
    stream = ResponsesStream("m", Pace(200, 0, 0), {})
    payload = stream.delta(0, 1_234_567_890_123)
    frames = []
    for _ in range(2 * n):
        server.send_data(1, payload)
        frames.append(server.data_to_send())
    out = {}
    t = time.perf_counter()
    for frame in frames[:n]:
        client.receive_data(frame)
        client.data_to_send()
    out["h2: receive one DATA frame"] = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for frame in frames[n:]:
        client.receive_data(frame)
        client.acknowledge_received_data(len(payload), 1)
        client.data_to_send()
    out["h2: receive one DATA frame + acknowledge it"] = (time.perf_counter() - t) / n * 1e6
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
    rows.update(_h2_frames(3_000))

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
    # wsproxy's deflate settings (wsproxy.server.websocket_protocol)
    enc = zlib.compressobj(wbits=-10, memLevel=3)

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
