"""The body of one upstream response as it arrives: a bounded buffer, one reader, one idle timer.

Both wire protocols (``h1``, ``h2``) push bytes in from ``data_received``; the response's single
reader pulls them out. The hot path is a chunk that arrives while the reader waits: one
``set_result`` and, on the reader's side, one ``loop.time()`` -- no timer per chunk. The idle
timeout (silence while the reader waits) is one ``TimerHandle`` per stream, armed when the
reader first waits and re-armed from the time of the last chunk only when it fires.

Backpressure: the protocol is told how many bytes the reader consumed (``on_consumed``), so it
can resume a paused socket (HTTP/1.1) or open the stream's flow-control window (HTTP/2): a reader
that stops reading makes the upstream stop sending, and the buffer stays bounded.

Push mode (:meth:`Body.push`): instead of waking a reader, each chunk is handed to a callback in
the protocol's own ``data_received`` (no task switch per chunk). The callback returns False to
pause: chunks are buffered again (bounded as above: the socket pauses, the h2 window closes) until
:meth:`Body.resume`. The end, an error, or the idle timeout (timed while not paused, with the same
lazy timer) go to the end callback once. :meth:`Body.unpush` returns to pull mode.
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
        "_on_data",
        "_on_end",
        "_paused",
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
        # Push mode: the chunk callback (False: pause) and the end callback (None: EOF).
        self._on_data: Callable[[bytes], bool] | None = None
        self._on_end: Callable[[ProxyError | None], None] | None = None
        self._paused = False

    # -- the protocol side (called from data_received / connection_lost; never blocks)

    def feed(self, data: bytes) -> None:
        self._last = self._loop.time()
        on_data = self._on_data
        if on_data is not None and not self._paused and not self._chunks:
            # Push mode, nothing held: the chunk goes on now, in this callback.
            self._consumed(len(data))
            if not on_data(data) and self._on_data is not None:
                self._paused = True
            return
        self._chunks.append(data)
        self.buffered += len(data)
        self._wake()

    def end(self) -> None:
        self._eof = True
        self._wake()
        self._pushed_end()

    def fail(self, error: ProxyError) -> None:
        if not self._eof and self._error is None:
            self._error = error
        self._wake()
        self._pushed_end()

    # -- push mode

    def push(self, on_data: Callable[[bytes], bool], on_end: Callable[[ProxyError | None], None]) -> None:
        """From now on, hand chunks to ``on_data`` as they arrive (what is buffered first), and
        the end (None) or the error to ``on_end``, once. See the module docstring."""
        self._on_data = on_data
        self._on_end = on_end
        self.resume()

    def resume(self) -> None:
        """Push mode: go on after ``on_data`` returned False (the buffered chunks first)."""
        self._paused = False
        chunks = self._chunks
        while chunks and self._on_data is not None and not self._paused:
            data = self._take()
            if not self._on_data(data) and self._on_data is not None:
                self._paused = True
        if self._on_data is None or self._paused:
            return
        if self._eof or self._error is not None:
            self._pushed_end()
        elif self._timer is None:
            self._timer = self._loop.call_at(self._last + self._idle, self._check_idle)

    def unpush(self) -> None:
        """Back to pull mode (what arrives from now on is buffered for :meth:`read`)."""
        self._on_data = self._on_end = None
        self._paused = False

    def _pushed_end(self) -> None:
        on_end = self._on_end
        if on_end is None or self._paused or self._chunks:
            return  # not pushing, or held chunks first: resume() ends it after them
        self._on_data = self._on_end = None
        on_end(None if self._eof else self._error)

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
        return self._take()

    def _take(self) -> bytes:
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
        if self._on_data is not None:
            self._check_pushed_idle()
            return
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

    def _check_pushed_idle(self) -> None:
        if self._paused or self._eof or self._error is not None:
            return  # the client holds us up, or the end is near: resume() arms it again
        due = self._last + self._idle
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_idle)
            return
        self._error = UpstreamTimeout(
            f"Timed out talking to provider '{self._name}': no data for {self._idle:g}s (idle timeout)."
        )
        self._pushed_end()

    def close(self) -> None:
        self.unpush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._chunks.clear()
        self.buffered = 0
