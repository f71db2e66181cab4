"""The push data plane: a response's steady state forwarded from the upstream connection's callback.

The engine's stream (:meth:`wsproxy.service.engine.Engine.events`) is a chain of async generators
that a task pulls from: every upstream read wakes the task and walks the chain. For a response
whose events need no per-event rewriting on the way (no conversation tagging, no tracing span)
and whose client can take synchronous writes, the engine opens the provider as a
:class:`~wsproxy.upstream.push.PushStream` and, once the first events went the ordinary way, sets
``run.push`` to a :class:`Pusher`. The consumer (the response sink) then awaits
:meth:`Pusher.run`: from there on each upstream read is decoded, accounted for (as
``Engine._guarded`` does: deltas, first-token time, ``previous_response_id``) and written to the
client inside the upstream protocol's ``data_received`` -- no task switch, no generator hop.

What stays on the pull side, unchanged: everything before the first event (admission, retries,
fallback), and the end: on the terminal event (or the upstream's failure, or its end without
one) pushing stops, :meth:`Pusher.run` returns and the engine's generator yields the rest -- the
terminal event is stored before it is written, exactly one terminal event ends the response.

Backpressure: ``feed`` returns False when the client's buffer is full; the body then holds what
arrives (the upstream socket pauses, the h2 window closes) and the task awaits ``drain`` before it
resumes the body. Client gone: the task is cancelled; ``run`` stops pushing and the engine's
generator, closed by the consumer, closes the upstream response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from wsproxy.core.events import Event
from wsproxy.upstream.push import PushStream


class PushedRun(Protocol):
    """What a pushed response's run (``wsproxy.service.engine.ResponseRun``) offers the pusher:
    its per-event accounting and its ``push`` slot. (A protocol, not the engine's class: the
    engine imports this module.)"""

    events_sent: int
    last_seq: int
    deltas: int
    first_token_at: float
    push: Any

Feed = Callable[[Sequence[Event]], bool]


class Pusher:
    """One response's pushed steady state. See the module docstring."""

    __slots__ = (
        "_feed", "_paused", "_wake", "ended", "error", "observe", "response", "rewrite", "stream", "tail",
    )  # fmt: skip

    def __init__(
        self,
        run: PushedRun,
        stream: PushStream,
        rewrite: Callable[[Event], Event] | None,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self.response = run
        # Called with the seconds from a sampled upstream read to the client write of its events.
        self.observe = observe
        self.stream = stream
        self.rewrite = rewrite
        # From the terminal event on (or the ending the stream produced): yielded by the engine.
        self.tail: list[Event] = []
        self.ended = False
        self.error: BaseException | None = None
        self._paused = False
        self._feed: Feed | None = None
        self._wake: asyncio.Future[None] | None = None

    async def run(self, feed: Feed, drain: Callable[[], Awaitable[None]]) -> None:
        """Forward until the terminal event (see the module docstring). Raises what a write
        raised; cancelled, it stops pushing."""
        loop = asyncio.get_running_loop()
        self._feed = feed
        stream = self.stream
        try:
            stream.start(self._on_events)
            while True:
                if self.error is not None:
                    raise self.error
                if self._paused:
                    await drain()
                    self._paused = False
                    if not self.ended:
                        stream.resume()
                    continue
                if self.ended:
                    return
                wake = self._wake = loop.create_future()
                try:
                    await wake
                finally:
                    self._wake = None
        finally:
            self._feed = None
            self.response.push = None
            if not stream.ended:
                stream.stop()

    def _on_events(self, events: list[Event]) -> bool:
        """One upstream read's events, from the connection's callback. False: stop (paused or
        ended)."""
        try:
            run = self.response
            batch = events
            rewrite = self.rewrite
            for index, event in enumerate(events):
                if rewrite is not None:
                    event = events[index] = rewrite(event)
                if event.terminal:
                    batch, self.tail = events[:index], events[index:]
                    self.ended = True
                    break
                run.events_sent += 1
                run.last_seq = event.seq
                if event.type.endswith(".delta"):
                    run.deltas += 1
                    if not run.first_token_at:
                        run.first_token_at = time.monotonic()
            if self.stream.ended:
                self.ended = True  # (without a terminal event: the engine ends it)
            feed = self._feed
            if batch and feed is not None and not feed(batch):
                self._paused = True
            read_at = self.stream.read_at
            if read_at and self.observe is not None and batch:
                self.observe(time.perf_counter() - read_at)
        except BaseException as exc:
            self.error = exc
        if self.ended or self._paused or self.error is not None:
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)
            return False
        return True
