"""One upstream streaming answer, decoded in the upstream connection's own callback (push mode).

The pull path (``HTTPProvider._attempt``) reads the body from a task: each chunk wakes the task,
then walks the generators of the provider and the engine. A :class:`PushStream` does the same
decoding (SSE messages, the dialect's translator, the order checks, ``Event.more`` on the events
of one read) synchronously, in the ``data_received`` that delivered the bytes
(``wsproxy.upstream.body.Body.push``), and hands each read's events to one callback.

It is opened like an attempt (``HTTPProvider.open_push``: request, status, retries, the first
events read the ordinary way), so everything before the first event -- retries, fallback, the
errors a client gets as an HTTP error -- is unchanged. After that, like the pull path, every
failure (a stall, a reset, malformed SSE, an impossible order) becomes the translator's ending,
never an exception: the callback gets the events and ``ended`` is True.

Must not touch: the client side (the callback does), the store, the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable

from wsproxy.core.events import Event
from wsproxy.core.sse import SSEDecoder, SSEError
from wsproxy.dialects.base import StreamTranslator
from wsproxy.errors import ProxyError, UpstreamError, UpstreamTimeout
from wsproxy.upstream.pool import UpstreamResponse

log = logging.getLogger("wsproxy.upstream")

_FIRST_TYPES = frozenset({"response.created", "response.queued"})


class OutOfOrder(Exception):
    pass


# The first pushed read of a response and then one in this many have their forwarding delay
# measured (``PushStream.read_at``).
SAMPLE_EVERY = 64


class PushStream:
    """See the module docstring. ``first``: the events read before pushing began."""

    __slots__ = ("_decoder", "_name", "_on_events", "_partial", "_reads", "_translator", "ended", "first",
                 "read_at", "response", "sent", "upstream_ended")  # fmt: skip

    def __init__(self, name: str, response: UpstreamResponse, translator: StreamTranslator) -> None:
        self._name = name
        self.response = response
        self._translator = translator
        self._decoder = SSEDecoder()
        self._on_events: Callable[[list[Event]], bool] | None = None
        self._partial: list[Event] = []
        self.first: list[Event] = []
        self.sent = 0
        self.upstream_ended = False  # the upstream's own terminal event came
        self.ended = False  # the last events were produced (a terminal one, or the ending)
        # When a sampled read arrived (perf_counter; 0.0: this read is not sampled): the
        # consumer measures the delay from there to the client's write (one read in SAMPLE_EVERY).
        self.read_at = 0.0
        self._reads = -1  # the first pushed read is sampled, then one in SAMPLE_EVERY

    # -- decoding (shared by the first reads and the pushed ones)

    def decode(self, chunk: bytes) -> list[Event]:
        """The events of one read (b"": the end of the body). Raises on a stream it cannot read
        (``SSEError``, ``ValueError``, ``OutOfOrder``...); the events decoded before the failure
        are then in ``self.first`` -- see :meth:`process`."""
        translator = self._translator
        out: list[Event] = []
        try:
            for message in self._decoder.feed(chunk) if chunk else self._decoder.flush():
                message.data.decode()  # UnicodeDecodeError is a ValueError: malformed
                for event in translator.feed(message):
                    if self.sent and event.type in _FIRST_TYPES:
                        raise OutOfOrder(f"Provider '{self._name}' sent {event.type} twice.")
                    self.check_order(event)
                    self.sent += 1
                    if event.terminal:
                        self.upstream_ended = True
                    out.append(event)
                if translator.done:
                    break
        except BaseException:
            for event in out:
                event.more = False
            self._partial = out
            raise
        if len(out) > 1:
            # Marked when another follows (one write for all), but not the one before a
            # terminal event: that one waits for the store.
            for event, following in itertools.pairwise(out):
                event.more = not following.terminal
        return out

    def check_order(self, event: Event) -> None:
        if not self.sent and event.type not in _FIRST_TYPES:
            raise UpstreamError(
                f"Provider '{self._name}' sent {event.type} before response.created.", retryable=True
            )

    def start_events(self) -> list[Event]:
        events = self._translator.start()
        for event in events:
            self.check_order(event)
            self.sent += 1
        return events

    @property
    def done(self) -> bool:
        return self._translator.done

    def process(self, chunk: bytes) -> list[Event]:
        """:meth:`decode` after the first event: never raises; a failure, the end of the body or
        the translator's end set ``ended`` and add the ending. Before the first event a stream
        it cannot read raises ``UpstreamError`` (retryable), like the pull path."""
        try:
            events = self.decode(chunk)
        except OutOfOrder as exc:
            return self._end(self._partial, ("server_error", f"Impossible event order from provider: {exc}"))
        except (SSEError, ValueError, KeyError, TypeError) as exc:
            log.warning("malformed stream from provider=%s: %r", self._name, exc)
            if not self.sent:
                raise UpstreamError(
                    f"Malformed stream from provider '{self._name}': {exc}.", retryable=True
                ) from None
            return self._end(self._partial, ("server_error", f"Malformed stream from provider: {exc}."))
        if self._translator.done or not chunk:
            return self._end(events, None)
        return events

    def failed(self, error: ProxyError | None) -> list[Event]:
        """The body ended (None) or failed with ``error`` (a stall, a reset, a lost connection)."""
        if error is None:
            return self.process(b"")
        code = "upstream_timeout" if isinstance(error, UpstreamTimeout) else "server_error"
        return self._end([], (code, error.message))

    def _end(self, events: list[Event], failure: tuple[str, str] | None) -> list[Event]:
        self.ended = True
        if events:
            events[-1].more = False
        if failure is not None:
            log.warning("provider=%s failed after %d events: %s", self._name, self.sent, failure[1])
            events = events + self._translator.fail(*failure)
        return events + self._translator.finish()

    # -- pushing

    def start(self, on_events: Callable[[list[Event]], bool]) -> None:
        """Hand each read's events to ``on_events`` from the connection's callback (False:
        pause until :meth:`resume`). After the call with ``ended`` set, no more calls."""
        self._on_events = on_events
        self.response.body_push(self._on_data, self._on_end)

    def resume(self) -> None:
        self.response.body_resume()

    def stop(self) -> None:
        """Back to pull mode (what is left of the body stays for :meth:`aclose`)."""
        self._on_events = None
        self.response.body_unpush()

    def _on_data(self, chunk: bytes) -> bool:
        on_events = self._on_events
        if on_events is None or self.ended:
            return False
        self._reads += 1
        self.read_at = time.perf_counter() if not self._reads % SAMPLE_EVERY else 0.0
        events = self.process(chunk)
        if self.ended:
            self.stop()
        return on_events(events) and not self.ended

    def _on_end(self, error: ProxyError | None) -> None:
        on_events = self._on_events
        if on_events is None or self.ended:
            return
        events = self.failed(error)
        self.stop()
        on_events(events)

    async def aclose(self) -> None:
        """Close the upstream response (after a terminal event, its end is read briefly first:
        the connection stays reusable, an h2 stream ends without a reset)."""
        self._on_events = None
        response = self.response
        if self.upstream_ended and not response.complete and not response.closed:
            with contextlib.suppress(TimeoutError, ProxyError):
                async with asyncio.timeout(0.25):
                    response.body_unpush()
                    await response.read_all(64 * 1024)
        response.close()


__all__ = ["OutOfOrder", "PushStream"]
