"""The response sink: one object runs one response to one client, whatever the transport.

WebSocket mode, SSE and JSON differ only in their :class:`Formatter` (how events become frames,
an event stream or one JSON body, and how they reach the connection); the lifecycle is here, once:

- **start / events**: events are written as they come. The events of one upstream read
  (``Event.more``) are handed to the formatter together, so they go out in one write;
- **backpressure**: a write the connection cannot take now is held and written by :meth:`drain`,
  which waits while the client's buffer is full; the producer waits with it (it stops reading
  its upstream). A client that takes nothing for ``slow_client_timeout`` is dropped
  (:class:`SlowClient`, or the transport's own watch);
- **client gone**: the response is cancelled, the upstream request closed at once (the events
  iterator is closed) and the partial usage recorded (:class:`ResponseTracker`, below);
- **shutdown**: when the grace period is over the runtime cancels the task serving the response;
  the sink ends it with ``error`` + ``response.failed`` (``server_shutting_down``), stored first;
- **terminal guarantee**: whatever stops a response that the client saw start (the upstream
  dying mid-stream is the engine's, a bug or the shutdown the sink's), it ends with exactly one
  terminal event; one that did not start gets the error in the transport's shape instead;
- **store before terminal** is the engine's (``Engine.finish`` runs before it yields the
  terminal event, and before the sink sends an ending of its own).

Two ways to feed a sink:

- *pull* (today's engine): ``await sink.serve(events)`` or ``await sink.serve(prepare=...)``
  iterates ``async for event in run.events()`` and runs the whole lifecycle above;
- *push* (an upstream protocol callback, ``wsproxy.service.push``; ``_pump`` hands over to it
  when the engine sets ``run.push``): ``sink.feed(events)`` is synchronous: it writes what
  the connection takes now and returns False when the producer must pause (the client's buffer
  is full, or the transport has no synchronous write); ``await sink.drain()`` writes the rest,
  waiting for the client, after which the producer resumes. ``await sink.end(...)`` and
  ``sink.abandon(reason)`` finish such a response from outside.

Must not touch: sockets directly (formatters do), the store (the engine does), Starlette.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from wsproxy.core.events import TERMINAL_TYPES, Event, ResponseBuilder, failed_ending
from wsproxy.core.records import StoredResponse
from wsproxy.errors import ProxyError

if TYPE_CHECKING:
    from wsproxy.service.engine import ResponseRun, UpstreamRoute
    from wsproxy.service.wiring import Runtime

log = logging.getLogger("wsproxy.edge")

SHUTDOWN_CODE = "server_shutting_down"
SHUTDOWN_MESSAGE = "The server is shutting down; this response was ended before it completed."

# How long ending a response (sink-made terminal event, error, end of body) may take: the client
# may be why the response could not end normally.
END_TIMEOUT = 2.0


class SlowClient(Exception):
    """The client took nothing for ``slow_client_timeout``: the response is dropped."""


class Formatter(Protocol):
    """How one transport writes a response: events to bytes, bytes to the connection."""

    # The metrics label: "ws" or "http".
    transport: str
    # False: ``write_nowait`` never writes (no synchronous path): the pull path goes straight
    # to ``write``.
    writes_nowait: bool

    @property
    def committed(self) -> bool:
        """Bytes of this response reached the client: an error can no longer replace it."""
        ...

    def write_nowait(self, events: Sequence[Event]) -> int:
        """Write events now, without waiting; return how many were written (a prefix). Never
        blocks: what is not written the sink holds and hands to :meth:`write`."""
        ...

    async def write(self, events: Sequence[Event]) -> None:
        """Write events, waiting while the client's buffer is full (the backpressure).
        Raises :class:`SlowClient` when the client takes nothing for too long."""
        ...

    async def refuse(self, error: ProxyError) -> None:
        """Nothing was committed: answer ``error`` in this transport's shape instead."""
        ...

    async def close(self, final: StoredResponse | None) -> None:
        """The events are all written: end the answer (SSE: the end of the body; JSON: the
        body, ``final``'s response; WebSocket: nothing)."""
        ...

    def gone(self) -> str | None:
        """Why the client cannot be answered any more: "client_gone", "slow_client" or None."""
        ...

    def on_slow(self) -> None:
        """A write raised :class:`SlowClient`: drop the client (close its connection)."""
        ...


class ResponseSink:
    """Runs one response to one client. See the module docstring for the lifecycle."""

    __slots__ = ("_events", "_held", "_owned", "first_within", "formatter", "run", "runtime", "tracker")

    def __init__(self, runtime: Runtime, formatter: Formatter, run: ResponseRun | None = None) -> None:
        self.runtime = runtime
        self.formatter = formatter
        self.run = run
        self.tracker = ResponseTracker(runtime, run, formatter.transport)
        self._held: list[Event] = []
        self._events: AsyncIterator[Event] | None = None
        # Ended by the sink when the shutdown grace is over (a response of the engine; not a
        # replay or a background run's follower, which end with what they follow).
        self._owned = run is not None
        # Seconds the first event may take before the formatter starts without it (its
        # ``start()``: SSE headers and keepalives); None: the first event starts the answer.
        self.first_within: float | None = None

    def bind(self, run: ResponseRun) -> None:
        """The response this sink runs, once prepared."""
        self.run = run
        self.tracker.run = run
        self._owned = True

    # -- push: fed synchronously ------------------------------------------------------------

    def feed(self, events: Sequence[Event]) -> bool:
        """Write ``events`` now as far as the connection takes them (one write for all where
        the transport can). True: the producer may go on. False: it must pause until
        :meth:`drain` returns (the rest is held, in order; the producer must not feed more
        before then: the sink bounds nothing it is fed behind a False)."""
        if self._held:
            self._held.extend(events)
            return False
        written = self.formatter.write_nowait(events) if events else 0
        saw = self.tracker.saw
        for index in range(written):
            saw(events[index])
        if written < len(events):
            self._held.extend(events[written:])
            return False
        return True

    async def drain(self) -> None:
        """Write what :meth:`feed` held, waiting for the client (bounded by the transport's slow
        client rule: :class:`SlowClient` or a cancellation)."""
        while self._held:
            held, self._held = self._held, []
            await self.formatter.write(held)
            saw = self.tracker.saw
            for event in held:
                saw(event)

    def abandon(self, reason: str) -> None:
        """The client left (``reason``: client_gone, slow_client): record the partial usage.
        The producer closes its upstream request."""
        self._held.clear()
        if reason == "client_gone":
            self.runtime.metrics.inc("wsproxy_client_disconnects_total", transport=self.formatter.transport)
        self.tracker.cancelled(reason)

    async def end(self, code: str, message: str, status: int) -> None:
        """End a response the engine could not: ``error`` + ``response.failed`` (stored first) if
        the client saw it start, else the error in the transport's shape. Bounded in time."""
        await self._close_events()
        self._held.clear()
        ending = await self.tracker.end(code, message)
        formatter = self.formatter
        final = self.run.final if self.run is not None else None
        try:
            async with asyncio.timeout(END_TIMEOUT):
                if ending:
                    if not self.feed(ending):
                        await self.drain()
                    await formatter.close(final)
                elif self.tracker.terminal:
                    await formatter.close(final)
                else:
                    await formatter.refuse(ProxyError(message, status=status, code=code))
        except (TimeoutError, OSError, SlowClient):
            pass  # the client is why: nothing more can reach it

    # -- pull: the engine's async iterator ------------------------------------------------

    async def serve(
        self,
        events: AsyncIterator[Event] | None = None,
        *,
        prepare: Callable[[], Awaitable[ResponseRun]] | None = None,
        upstream: UpstreamRoute | None = None,
    ) -> None:
        """Run the response to its end: ``events``, or those of the run ``prepare`` makes (its
        ``ProxyError`` is refused like any error before the first event), over ``upstream``
        (a WebSocket-mode lane's upstream WebSocket) where it takes the response."""
        runtime = self.runtime
        task = asyncio.current_task()
        assert task is not None
        runtime.response_started()
        if prepare is not None:
            self._owned = True
        if self._owned:
            runtime.streaming.add(task)
        try:
            if prepare is not None:
                self.bind(await prepare())
            if self.run is not None and self.formatter.writes_nowait:
                # Synchronous writes: the engine may push this response's steady state
                # (wsproxy.service.push); ``_pump`` runs it when ``run.push`` appears.
                self.run.push_ok = True
            if events is None:
                assert self.run is not None
                events = runtime.engine.events(self.run, upstream)
            self._events = events
            await self._pump(events)
        except ProxyError as exc:
            if self.formatter.committed:
                log.error("response failed after it started: %r", exc)
                await self.end(exc.code or "server_error", exc.message, exc.status)
            else:
                await self.formatter.refuse(exc)
        except SlowClient:
            self.abandon("slow_client")
            self.formatter.on_slow()
        except asyncio.CancelledError:
            reason = self.formatter.gone()
            if reason is not None:
                self.abandon(reason)  # nobody is left to answer
                task.uncancel()
                return
            if not (runtime.grace_over and self._owned):
                raise
            task.uncancel()  # the shutdown grace is over: end the response properly
            await self.end(SHUTDOWN_CODE, SHUTDOWN_MESSAGE, 503)
        except Exception:
            log.exception("%s response failed unexpectedly", self.formatter.transport)
            await self.end("server_error", "The server failed while streaming.", 500)
        finally:
            runtime.streaming.discard(task)
            await self._close_events()  # closes the upstream request (client gone, slow, ended)
            runtime.response_ended()

    async def _first(self, events: AsyncIterator[Event], within: float) -> tuple[list[Event], bool]:
        """The first event, awaited for at most ``within`` seconds before the formatter starts
        without it; then an error becomes ``error`` + ``response.failed`` (stored first) instead
        of an error answer. Returns the events to write first and whether that was all."""
        pending = asyncio.ensure_future(anext(events))
        try:
            await asyncio.wait({pending}, timeout=within)
            if not pending.done():
                await self.formatter.start()  # type: ignore[attr-defined]
                try:
                    return [await pending], False
                except StopAsyncIteration:
                    return [], True
                except ProxyError as exc:
                    if self.run is None:
                        raise
                    return await self._early_failure(exc), True
            try:
                return [pending.result()], False
            except StopAsyncIteration:
                return [], True
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.wait({pending})  # the generator is idle again before it is closed

    async def _early_failure(self, exc: ProxyError) -> list[Event]:
        """``created``, ``error``, ``response.failed`` for an error raised after the answer
        started but before the first event (stored like any terminal event)."""
        run = self.run
        assert run is not None
        builder = ResponseBuilder(run.response_id, run.request.model, run.created_at, run.request.body)
        ending = builder.fail(exc.code or "server_error", exc.message)
        await self.runtime.engine.finish(run, ending[-1])
        return ending

    async def _pump(self, events: AsyncIterator[Event]) -> None:
        formatter = self.formatter
        saw = self.tracker.saw
        # A transport without synchronous writes (the ASGI send of SSE) skips feed's attempt.
        direct = not formatter.writes_nowait
        held: list[Event] = []
        batch: Sequence[Event]
        run = self.run
        if self.first_within is not None:
            first, ended = await self._first(events, self.first_within)
            if first:
                if direct:
                    await formatter.write(first)
                    for item in first:
                        saw(item)
                elif not self.feed(first):
                    await self.drain()
            if ended:
                await formatter.close(self.run.final if self.run is not None else None)
                return
            if run is not None and run.push is not None:
                await run.push.run(self.feed, self.drain)
        async for event in events:
            if event.more:
                held.append(event)  # another is at hand: one write for both
                continue
            if held:
                held.append(event)
                batch, held = held, []
            else:
                batch = (event,)
            if direct:
                await formatter.write(batch)
                for item in batch:
                    saw(item)
                continue
            if not self.feed(batch):
                await self.drain()
            if run is not None and run.push is not None:
                # The push data plane takes over until the terminal event (which, stored
                # first, comes through this loop again).
                await run.push.run(self.feed, self.drain)
        if held and not self.feed(held):
            await self.drain()
        await formatter.close(self.run.final if self.run is not None else None)

    async def _close_events(self) -> None:
        events, self._events = self._events, None
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


class ResponseTracker:
    """The accounting half of a sink: what the client was handed, to record partial usage when
    it leaves and to build the failed ending when the sink must end the response itself.

    It parses only the small events it needs (``response.created`` for the snapshot the client
    saw, ``response.output_item.done`` for the items so far); deltas are only counted. The
    failed ending is :func:`wsproxy.core.events.failed_ending`, stored by ``Engine.finish``."""

    __slots__ = ("deltas", "items", "last_seq", "response", "run", "runtime", "sent", "terminal", "transport")

    def __init__(self, runtime: Runtime, run: ResponseRun | None, transport: str) -> None:
        self.runtime = runtime
        self.run = run
        self.transport = transport
        self.sent = 0
        self.deltas = 0
        self.last_seq = -1
        self.response: dict[str, Any] | None = None
        self.items: dict[int, dict[str, Any]] = {}
        self.terminal = False

    def saw(self, event: Event) -> None:
        """``event`` was handed to the client's transport."""
        self.sent += 1
        self.last_seq = event.seq if event.seq >= 0 else self.last_seq + 1
        kind = event.type
        if kind.endswith(".delta"):
            self.deltas += 1
        elif kind == "response.output_item.done":
            payload = event.json()
            index, item = payload.get("output_index"), payload.get("item")
            if isinstance(index, int) and isinstance(item, dict):
                self.items[index] = item
        elif kind in ("response.created", "response.queued"):
            response = event.json().get("response")
            if isinstance(response, dict):
                self.response = response
        elif kind in TERMINAL_TYPES:
            self.terminal = True

    @property
    def provider(self) -> str:
        return (self.run.provider_used if self.run is not None else None) or "unknown"

    def cancelled(self, reason: str) -> None:
        """The response was abandoned (``reason``: client_gone, slow_client): record partial usage."""
        if self.terminal or self.run is None:
            return
        metrics = self.runtime.metrics
        metrics.inc("wsproxy_cancelled_responses_total", transport=self.transport, reason=reason)
        metrics.inc("wsproxy_partial_output_tokens_total", float(self.deltas), provider=self.provider)
        log.info(
            "response cancelled reason=%s transport=%s provider=%s response=%s events=%d "
            "partial_output_tokens~%d",
            reason,
            self.transport,
            self.provider,
            (self.response or {}).get("id", self.run.response_id),
            self.sent,
            self.deltas,
        )

    async def end(self, code: str, message: str) -> list[Event]:
        """Events that end the response now (``error`` + ``response.failed``), stored first.
        Empty when it already ended, or when the client has seen no response to end."""
        if self.terminal or self.response is None:
            return []
        self.terminal = True
        output = [self.items[i] for i in sorted(self.items)]
        _, ending = failed_ending(self.response, code, message, self.last_seq + 1, output=output)
        failed = ending[-1]
        if self.run is not None:
            try:
                await self.runtime.engine.finish(self.run, failed)
            except ProxyError as exc:
                log.error("could not store the ended response %s: %r", self.response.get("id"), exc)
        self.runtime.metrics.inc("wsproxy_ended_responses_total", transport=self.transport, code=code)
        return ending
