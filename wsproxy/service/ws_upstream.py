"""Which WebSocket-mode responses go over an upstream WebSocket, and on which socket.

A client session in WebSocket mode gets a :class:`SessionUpstreams`; each of its lanes (the
default lane and every ``stream_id``) gets its own :class:`~wsproxy.upstream.websocket.
UpstreamLane` per provider, because the provider runs one response at a time per socket and
caches the latest one per socket. A lane's socket is opened by its first ``response.create``
(``generate: false`` included) and closed with the session.

A response is carried over an upstream WebSocket when its provider is ``kind = "openai"`` with
``websocket = "auto"`` or ``"always"``, the provider did not recently refuse the upgrade, and the
bounds allow another socket (``limits.upstream_ws_per_session`` / ``upstream_ws_total``).
Otherwise :meth:`SessionUpstreams.stream` answers None and the engine uses the HTTP path, which
expands the history from the connection cache and the store. With ``"auto"`` a refused upgrade
(any non-101 answer) is remembered for ``websocket_refusal_ttl`` seconds, so not every session
pays for it; with ``"always"`` it is an error for the client.

HTTP and SSE clients never come here: they keep the pooled HTTP connections.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

from wsproxy.core.events import Event
from wsproxy.errors import UpstreamUnavailable
from wsproxy.observability.metrics import Metrics
from wsproxy.policy.routing import Target
from wsproxy.service.engine import ResponseRun
from wsproxy.settings import ProviderSettings, Settings
from wsproxy.upstream.base import Provider
from wsproxy.upstream.pool import ssl_context
from wsproxy.upstream.websocket import (
    Turn,
    UpgradeRefused,
    UpstreamLane,
    WebSocketUnavailable,
    websocket_url,
)

log = logging.getLogger("wsproxy.service.ws_upstream")

# Headers of the provider's HTTP requests that do not belong on the upgrade request.
_HTTP_ONLY_HEADERS = frozenset({"content-type", "accept", "content-length", "connection", "upgrade", "host"})


class UpstreamSockets:
    """Runtime-wide: refusal memory, the total bound, and every open lane (closed at shutdown)."""

    def __init__(
        self,
        settings: Settings,
        providers: Mapping[str, Provider],
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.metrics = metrics
        self.clock = clock
        self.per_session = settings.limits.upstream_ws_per_session
        self.max_total = settings.limits.upstream_ws_total
        self.refused_until: dict[str, float] = {}
        self.lanes: set[UpstreamLane] = set()
        self._ssl: dict[str, Any] = {}

    def session(self) -> SessionUpstreams:
        return SessionUpstreams(self)

    def mode(self, provider: Provider) -> str | None:
        """``auto``/``always`` when this provider's WebSocket-mode responses may go over an
        upstream WebSocket now; None for HTTP."""
        ps: ProviderSettings | None = self.settings.providers.get(provider.name)
        if ps is None or ps.kind != "openai" or ps.websocket == "never" or not hasattr(provider, "headers"):
            return None
        if ps.websocket == "auto":
            until = self.refused_until.get(provider.name)
            if until is not None:
                if self.clock() < until:
                    return None
                del self.refused_until[provider.name]
        return ps.websocket

    def refused(self, provider: str, status: int) -> None:
        ttl = self.settings.providers[provider].websocket_refusal_ttl
        log.warning(
            "provider=%s refused the WebSocket upgrade (HTTP %d): WebSocket mode goes over HTTP for %gs",
            provider,
            status,
            ttl,
        )
        self.refused_until[provider] = self.clock() + ttl
        self._count("wsproxy_upstream_ws_refused_total", provider)

    def new_lane(self, provider: Provider) -> UpstreamLane:
        ps = self.settings.providers[provider.name]
        limits = self.settings.limits
        url = websocket_url(ps.base_url)
        if url.startswith("wss://") and provider.name not in self._ssl:
            self._ssl[provider.name] = ssl_context(ps.verify, http2=False)
        headers: dict[str, str] = {
            k: v for k, v in provider.headers.items() if k not in _HTTP_ONLY_HEADERS  # type: ignore[attr-defined]
        }
        headers.setdefault("openai-beta", "responses_websockets=2026-02-06")
        lane = UpstreamLane(
            provider.name,
            url,
            headers,
            ssl_context=self._ssl.get(provider.name),
            connect_timeout=ps.connect_timeout,
            first_byte_timeout=ps.first_byte_timeout,
            idle_timeout=ps.idle_timeout,
            max_age=ps.websocket_max_age,
            ping_interval=limits.ws_ping_interval,
            ping_timeout=limits.ws_ping_timeout,
        )
        self.lanes.add(lane)
        return lane

    def drop(self, lane: UpstreamLane) -> None:
        lane.close()
        self.lanes.discard(lane)

    def _count(self, name: str, provider: str, value: float = 1.0) -> None:
        if self.metrics is not None:
            self.metrics.inc(name, value, provider=provider)

    async def aclose(self) -> None:
        for lane in list(self.lanes):
            self.drop(lane)


class SessionUpstreams:
    """The upstream sockets of one client session, by (lane, provider)."""

    def __init__(self, owner: UpstreamSockets) -> None:
        self.owner = owner
        self.lanes: dict[tuple[str | None, str], UpstreamLane] = {}
        self.closed = False

    def lane(self, lane_id: str | None) -> LaneRoute:
        """What the engine asks for the responses of client lane ``lane_id``."""
        return LaneRoute(self, lane_id)

    def stream(
        self, lane_id: str | None, run: ResponseRun, target: Target, provider: Provider
    ) -> AsyncGenerator[Event, None] | None:
        owner = self.owner
        mode = owner.mode(provider)
        if mode is None or self.closed:
            return None
        key = (lane_id, provider.name)
        lane = self.lanes.get(key)
        if lane is None:
            if len(self.lanes) >= owner.per_session or len(owner.lanes) >= owner.max_total:
                owner._count("wsproxy_upstream_ws_over_limit_total", provider.name)
                return None
            lane = self.lanes[key] = owner.new_lane(provider)
        return self._run(key, lane, _turn(run, target), run, mode == "always")

    async def _run(
        self, key: tuple[str | None, str], lane: UpstreamLane, turn: Turn, run: ResponseRun, always: bool
    ) -> AsyncGenerator[Event, None]:
        opened = lane.opened
        try:
            async with contextlib.aclosing(lane.stream(turn, run.response_id, run.created_at)) as events:
                async for event in events:
                    if lane.opened != opened:
                        self.owner._count("wsproxy_upstream_ws_opened_total", key[1], lane.opened - opened)
                        opened = lane.opened
                    yield event
        except WebSocketUnavailable as exc:
            # No socket, nothing sent. "auto": this response goes over HTTP (with its retries),
            # and a refusal keeps the provider's sessions on HTTP for a while.
            self._forget(key, lane)
            if always:
                raise UpstreamUnavailable(exc.message, status=exc.status) from None
            if isinstance(exc, UpgradeRefused):
                self.owner.refused(key[1], exc.upstream_status)
            raise

    def _forget(self, key: tuple[str | None, str], lane: UpstreamLane) -> None:
        if self.lanes.get(key) is lane:
            del self.lanes[key]
        self.owner.drop(lane)

    def close_lane(self, lane_id: str | None) -> None:
        for key, lane in list(self.lanes.items()):
            if key[0] == lane_id:
                self._forget(key, lane)

    async def aclose(self) -> None:
        self.closed = True
        for key, lane in list(self.lanes.items()):
            self._forget(key, lane)


class LaneRoute:
    """``Engine.events(run, upstream=...)`` for one client lane."""

    __slots__ = ("lane_id", "session")

    def __init__(self, session: SessionUpstreams, lane_id: str | None) -> None:
        self.session = session
        self.lane_id = lane_id

    def stream(
        self, run: ResponseRun, target: Target, provider: Provider
    ) -> AsyncGenerator[Event, None] | None:
        return self.session.stream(self.lane_id, run, target, provider)


def _turn(run: ResponseRun, target: Target) -> Turn:
    request = run.request
    prev_id = request.previous_response_id
    prev = run.previous
    if not prev_id:
        expanded: list[dict[str, Any]] | None = list(request.input)
    elif prev is not None:
        expanded = run.effective_input
    else:
        expanded = None  # wsproxy does not hold it: only the provider may
    stores = (
        prev is not None
        and prev.response.get("store") is True
        and prev.extra.get("provider") == target.provider
    )
    return Turn(
        body=request.body,
        model=target.model,
        new_input=list(request.input),
        previous_response_id=prev_id,
        expanded_input=expanded,
        provider_stores_previous=stores,
        generate=request.generate,
    )
