"""The body of one upstream response as it arrives: a bounded buffer, one reader, one idle timer.

Both wire protocols (``h1``, ``h2``) push bytes in from ``data_received``; the response's single
reader pulls them out. The hot path is a chunk that arrives while the reader waits: one
``set_result`` and, on the reader's side, one ``loop.time()`` -- no timer per chunk. The idle
timeout (silence while the reader waits) is one ``TimerHandle`` per stream, armed when the
reader first waits and re-armed from the time of the last chunk only when it fires.

Backpressure: the protocol is told how many bytes the reader consumed (``on_consumed``), so it
can resume a paused socket (HTTP/1.1) or open the stream's flow-control window (HTTP/2): a reader
that stops reading makes the upstream stop sending, and the buffer stays bounded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from wsproxy.errors import ProxyError, UpstreamTimeout

# The most one read joins from several buffered chunks.
READ_MAX = 64 * 1024


class Body:
    __slots__ = (
        "_chunks",
        "_consumed",
        "_eof",
        "_error",
        "_idle",
        "_last",
        "_loop",
        "_name",
        "_timer",
        "_waiter",
        "buffered",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        idle_timeout: float,
        provider: str,
        on_consumed: Callable[[int], None],
    ) -> None:
        self._loop = loop
        self._idle = idle_timeout
        self._name = provider
        self._consumed = on_consumed
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = loop.time()
        self._eof = False
        self._error: ProxyError | None = None
        self.buffered = 0

    # -- the protocol side (called from data_received / connection_lost; never blocks)

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        self._last = self._loop.time()
        self._wake()

    def end(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, error: ProxyError) -> None:
        if not self._eof and self._error is None:
            self._error = error
        self._wake()

    @property
    def done(self) -> bool:
        return self._eof and not self._chunks

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the reader side

    async def read(self) -> bytes:
        """The bytes buffered so far (joined), b"" at the end. Raises ``UpstreamTimeout`` after
        ``idle_timeout`` of silence, or the error the connection failed with."""
        while not self._chunks:
            if self._eof:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()
        chunks = self._chunks
        if len(chunks) == 1:
            data = chunks.popleft()
        else:
            # Several chunks at once, joined up to READ_MAX: what one read hands on (and what
            # is decoded and written in one go downstream) stays bounded.
            taken = [chunks.popleft()]
            size = len(taken[0])
            while chunks and size + len(chunks[0]) <= READ_MAX:
                size += len(chunks[0])
                taken.append(chunks.popleft())
            data = b"".join(taken)
        self.buffered -= len(data)
        self._consumed(len(data))
        return data

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        if self._timer is None:
            self._timer = self._loop.call_at(self._last + self._idle, self._check_idle)
        try:
            await waiter
        finally:
            self._waiter = None

    def _check_idle(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting: the next wait arms a new timer from the last chunk's time
        due = self._last + self._idle
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_idle)
            return
        self._error = UpstreamTimeout(
            f"Timed out talking to provider '{self._name}': no data for {self._idle:g}s (idle timeout)."
        )
        waiter.set_result(None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._chunks.clear()
        self.buffered = 0
