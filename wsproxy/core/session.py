"""WebSocket-mode rules for one connection, as a plain object (no I/O).

Rules (``responses-websocket.md`` sections 1, 4 and 6):

- ``response.create`` frames run on lanes: the default lane (no ``stream_id``) and up to
  ``max_lanes`` named lanes. Within a lane responses run FIFO, one at a time; lanes run
  concurrently, at most ``max_inflight`` responses in flight across lanes; more are queued, never
  rejected. A 33rd distinct named lane is ``websocket_stream_limit_reached``.
- Each lane caches its latest completed response (effective input + output) so that
  ``previous_response_id`` continues from it, also with ``store: false``. The cache lives and dies
  with the connection.
- A continuation that fails evicts the response it referenced, so a retry cannot build on stale
  state; a failed fork on another lane keeps the shared parent.

The asyncio layer (``wsproxy.asgi.ws``) asks this object what to do and reports back:

    submit(request) -> None | error       queue it on its lane
    next_ready()    -> [(lane, request)]  what may start now
    finished(lane, request, record, ok)   a response ended; updates cache and counters
    drop_queued()   -> [(lane, request)]  shutdown: refuse what has not started
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from wsproxy.core.records import StoredResponse
from wsproxy.core.request import CreateRequest
from wsproxy.errors import InvalidRequest

T = TypeVar("T")

DEFAULT_LANE: str | None = None


@dataclass(slots=True)
class Lane(Generic[T]):
    queue: deque[T] = field(default_factory=deque)
    running: bool = False
    latest: StoredResponse | None = None


class SessionRules:
    def __init__(self, *, max_inflight: int = 16, max_lanes: int = 32, max_queued: int = 256) -> None:
        self.max_inflight = max_inflight
        self.max_lanes = max_lanes
        self.max_queued = max_queued
        self.lanes: dict[str | None, Lane[CreateRequest]] = {DEFAULT_LANE: Lane()}
        self.inflight = 0
        self.queued = 0
        # Idle lanes with work waiting, in arrival order (an ordered set), so no lane starves.
        self._ready: dict[str | None, None] = {}

    def submit(self, request: CreateRequest) -> InvalidRequest | None:
        lane_id = request.stream_id
        if self.queued >= self.max_queued:
            # Checked first: a refused request must not use up a lane.
            return InvalidRequest(
                f"Too many queued responses on this connection (at most {self.max_queued}).",
                code="too_many_queued_responses",
            )
        lane = self.lanes.get(lane_id)
        if lane is None:
            named = len(self.lanes) - 1
            if named >= self.max_lanes:
                return InvalidRequest(
                    f"Too many stream_ids on this connection (at most {self.max_lanes}).",
                    param="stream_id",
                    code="websocket_stream_limit_reached",
                )
            lane = self.lanes[lane_id] = Lane()
        lane.queue.append(request)
        self.queued += 1
        if not lane.running:
            self._ready[lane_id] = None
        return None

    def next_ready(self) -> list[tuple[str | None, CreateRequest]]:
        """Requests that may start now; marks their lanes running."""
        started: list[tuple[str | None, CreateRequest]] = []
        for lane_id in list(self._ready):
            if self.inflight >= self.max_inflight:
                break
            del self._ready[lane_id]
            lane = self.lanes[lane_id]
            request = lane.queue.popleft()
            self.queued -= 1
            lane.running = True
            self.inflight += 1
            started.append((lane_id, request))
        return started

    def lookup(self, response_id: str, lane_id: str | None) -> StoredResponse | None:
        """The cached response ``response_id``: first the lane's own, then any lane (a fork)."""
        lane = self.lanes.get(lane_id)
        if lane is not None and lane.latest is not None and lane.latest.id == response_id:
            return lane.latest
        for other in self.lanes.values():
            if other.latest is not None and other.latest.id == response_id:
                return other.latest
        return None

    def finished(
        self, lane_id: str | None, request: CreateRequest, record: StoredResponse | None, ok: bool
    ) -> None:
        lane = self.lanes[lane_id]
        lane.running = False
        self.inflight -= 1
        prev = request.previous_response_id
        if ok and record is not None:
            lane.latest = record
        elif prev is not None and lane.latest is not None and lane.latest.id == prev:
            # A failed same-lane continuation evicts its parent; a failed fork does not.
            lane.latest = None
        if lane.queue:
            self._ready[lane_id] = None

    def drop_queued(self) -> list[tuple[str | None, CreateRequest]]:
        """Remove every queued (not yet started) request, e.g. on shutdown; running ones stay."""
        dropped = [(lane_id, request) for lane_id, lane in self.lanes.items() for request in lane.queue]
        for lane in self.lanes.values():
            lane.queue.clear()
        self.queued = 0
        self._ready.clear()
        return dropped

    @property
    def idle(self) -> bool:
        return self.inflight == 0 and self.queued == 0
