"""The fast fake upstream: OpenAI Responses SSE and Chat Completions SSE, over HTTP/1.1 (keep-alive,
chunked) and HTTP/2 (h2c prior knowledge), on one port.

    POST .../responses          Responses SSE (``event:`` + ``data:``), the OpenAI-native wire format
    POST .../chat/completions   Chat Completions SSE (``data:`` chunks, usage chunk, ``[DONE]``)
    GET  /stats[?reset=1]       counters: requests, deltas written, how late the timers fired

The pace comes from the request's model (see :mod:`bench.streams`). Deltas are written on an
absolute schedule (``t0 + i * delay``) from plain ``loop.call_at`` callbacks, no coroutine per
token; each delta is stamped with ``time.monotonic_ns()`` just before it is written. With a delay
of 0 the whole answer is written at once. How late the timers fire is counted, so a harness that
cannot keep its own pace shows up in the results instead of passing for proxy latency.

Run alone: ``python -m bench.upstream --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, Protocol

import orjson

from bench.h2c import PREFACE, H2Connection, H2Sink
from bench.streams import ChatStream, ResponsesStream, parse_model


class Sink(Protocol):
    @property
    def closed(self) -> bool: ...

    def send(self, data: bytes) -> None: ...

    def end(self, data: bytes = b"") -> None:
        """The last bytes and the end of the body, in one write."""


class Stats:
    """Counters the harness reads through ``GET /stats``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.connections = 0
        self.deltas = 0
        self.late_2ms = 0
        self.late_max_us = 0.0

    def json(self) -> bytes:
        return orjson.dumps(
            {
                "requests": self.requests,
                "connections": self.connections,
                "deltas": self.deltas,
                "late_2ms": self.late_2ms,
                "late_max_us": round(self.late_max_us, 1),
            }
        )


class Generator:
    """Writes one answer to a sink on schedule; ``cancel()`` stops it (client gone)."""

    __slots__ = ("handle", "i", "loop", "n", "pace", "sink", "stats", "stream", "t0")

    def __init__(self, sink: Sink, body: dict[str, Any], stats: Stats) -> None:
        model = str(body.get("model", ""))
        self.pace = pace = parse_model(model)
        chat = "messages" in body
        self.stream = ChatStream(model, pace, body) if chat else ResponsesStream(model, pace, body)
        self.sink = sink
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        self.handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self.n = self.stream.n_deltas
        self.i = 0
        self.t0 = 0.0

    def start(self) -> None:
        self.stats.requests += 1
        head = self.stream.head()
        if head:
            self.sink.send(head)
        if self.pace.prefill > 0:
            self.handle = self.loop.call_later(self.pace.prefill, self._first)
        else:
            self._first()

    def _first(self) -> None:
        if self.sink.closed:
            return
        self.t0 = self.loop.time()
        if self.pace.delay <= 0:
            stream = self.stream
            ts = time.monotonic_ns()
            parts = [stream.open()]
            parts.extend(stream.delta(i, ts) for i in range(self.n))
            parts.append(stream.tail())
            self.stats.deltas += self.n
            self.sink.end(b"".join(parts))
            return
        first = (
            self.stream.open() + self.stream.delta(0, time.monotonic_ns()) if self.n else self.stream.open()
        )
        self.stats.deltas += 1 if self.n else 0
        self.i = 1
        self.sink.send(first)
        self._schedule()

    def _schedule(self) -> None:
        if self.i >= self.n:
            self.sink.end(self.stream.tail())
            self.handle = None
            return
        self.handle = self.loop.call_at(self.t0 + self.i * self.pace.delay, self._next)

    def _next(self) -> None:
        if self.sink.closed:
            return
        late = self.loop.time() - (self.t0 + self.i * self.pace.delay)
        if late > 0.002:  # the loop clock (libuv) has 1 ms resolution
            stats = self.stats
            stats.late_2ms += 1
            if late * 1e6 > stats.late_max_us:
                stats.late_max_us = late * 1e6
        self.sink.send(self.stream.delta(self.i, time.monotonic_ns()))
        self.stats.deltas += 1
        self.i += 1
        self._schedule()

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


class H1Sink:
    __slots__ = ("proto",)

    def __init__(self, proto: UpstreamProtocol) -> None:
        self.proto = proto

    @property
    def closed(self) -> bool:
        return self.proto.closed

    def send(self, data: bytes) -> None:
        if not self.proto.closed:
            self.proto.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end(self, data: bytes = b"") -> None:
        proto = self.proto
        if not proto.closed:
            last = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
            proto.transport.write(last + b"0\r\n\r\n")
            proto.generator = None


class UpstreamProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; switches to :class:`H2Connection` on the h2c preface."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.buf = bytearray()
        self.closed = False
        self.generator: Generator | None = None
        self.h2: H2Connection | None = None
        self.head: tuple[str, str, dict[str, str]] | None = None
        self.need = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.generator is not None:
            self.generator.cancel()
        if self.h2 is not None:
            self.h2.connection_lost()

    def data_received(self, data: bytes) -> None:
        if self.h2 is not None:
            self.h2.data_received(data)
            return
        buf = self.buf
        buf += data
        if self.head is None and len(buf) >= 3 and buf[:3] == PREFACE[:3]:
            self.h2 = H2Connection(self.transport, self._h2_request, bytes(buf))
            buf.clear()
            self.h2.data_received(b"")
            return
        while True:
            if self.head is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
                del buf[: end + 4]
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    self.need = -1
                else:
                    self.need = int(headers.get("content-length", "0"))
                self.head = (method, target, headers)
            if self.need == -1:
                body = self._chunked_body()
                if body is None:
                    return
            else:
                if len(buf) < self.need:
                    return
                body = bytes(buf[: self.need])
                del buf[: self.need]
            method, target, _ = self.head
            self.head = None
            self._h1_request(method, target, body)

    def _chunked_body(self) -> bytes | None:
        """A whole chunked request body, or None while incomplete (nginx may send these)."""
        buf = self.buf
        pos = 0
        parts = []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if len(buf) < eol + 2 + size + 2:
                return None
            parts.append(bytes(buf[eol + 2 : eol + 2 + size]))
            pos = eol + 2 + size + 2
            if size == 0:
                del buf[:pos]
                return b"".join(parts)

    def _reply(self, status: str, body: bytes) -> None:
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status.encode(), len(body), body)
        )

    def _h1_request(self, method: str, target: str, body: bytes) -> None:
        path, _, query = target.partition("?")
        if method == "GET" and path == "/stats":
            self._reply("200 OK", self.stats.json())
            if "reset" in query:
                self.stats.reset()
            return
        if method == "GET" and path in ("/healthz", "/v1/models"):
            self._reply("200 OK", b'{"object":"list","data":[]}')
            return
        if method != "POST" or not (path.endswith("/responses") or path.endswith("/chat/completions")):
            self._reply("404 Not Found", b'{"error":{"message":"not found","type":"invalid_request_error"}}')
            return
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            self._reply("400 Bad Request", b'{"error":{"message":"bad json","type":"invalid_request_error"}}')
            return
        self.transport.write(_SSE_HEAD)
        gen = Generator(H1Sink(self), data, self.stats)
        self.generator = gen
        gen.start()

    def _h2_request(self, sink: H2Sink, body: bytes) -> None:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = {}
        gen = Generator(sink, data, self.stats)
        sink.stream.on_cancel = gen.cancel
        gen.start()


async def serve(host: str, port: int, ready: asyncio.Future[int] | None = None) -> None:
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(stats), host, port, backlog=4096, reuse_address=True
    )
    actual = server.sockets[0].getsockname()[1]
    print(f"READY {actual}", flush=True)
    if ready is not None:
        ready.set_result(actual)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="wsproxy bench: fast fake upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


def loop_factory() -> Any:
    """uvloop's loop when installed (as wsproxy uses), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
