"""What the response sink knows about one response, to account for it and to end it cleanly when
the engine cannot (the accounting half of :class:`wsproxy.asgi.sink.ResponseSink`).

The engine guarantees one terminal event for every stream it runs to the end. Three things stop
a stream from outside, and the sink handles them with a :class:`ResponseTracker` fed every event
it passed on to its client:

- the client left (socket closed, SSE connection dropped, too slow to read): the upstream request
  is closed by closing the engine's iterator; the partial usage (output deltas forwarded, an
  estimate of the output tokens) is recorded in ``/metrics`` and logged;
- the shutdown grace period is over: the edge ends the response itself with ``error`` +
  ``response.failed`` (code ``server_shutting_down``), stored first like any terminal event;
- a bug raised something that is not a ``ProxyError``: the same, with ``server_error``.

The tracker parses only the small events it needs (``response.created`` for the snapshot the
client saw, ``response.output_item.done`` for the items so far); deltas are only counted.
The failed ending is built by :func:`wsproxy.core.events.failed_ending` (the one builder of a
failed ending) and stored by ``Engine.finish``. Must not touch: sockets, the engine's internals.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from wsproxy.core.events import TERMINAL_TYPES, Event, failed_ending
from wsproxy.errors import ProxyError

if TYPE_CHECKING:
    from wsproxy.service.engine import ResponseRun
    from wsproxy.service.wiring import Runtime

log = logging.getLogger("wsproxy.edge")

SHUTDOWN_CODE = "server_shutting_down"
SHUTDOWN_MESSAGE = "The server is shutting down; this response was ended before it completed."


class ResponseTracker:
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
