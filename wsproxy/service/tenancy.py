"""Running a proxy for a team: per-request model scopes, limits, usage and the response cache.

The edges attach a :class:`Gate` to every response they start (``run.gate = tenancy.gate(...)``);
the engine calls it at two points of the response's event stream, so every transport (JSON, SSE,
WebSocket, background) gets the same treatment:

- ``admit(run)`` before the first event: the model scope (403 ``model_not_allowed``), the
  response cache (a hit returns the events to replay), then the limits: one atomic
  check-and-charge in the store (429 ``rate_limit_exceeded`` with ``retry-after``). Raising
  here is raising before the first event, so HTTP answers with that status and WebSocket mode
  with an ``error`` event of that status, the socket staying open;
- ``end(run)`` when the stream is over, however it ended (completed, failed, cancelled, client
  gone): settles the token reservation with the usage the provider reported (or the partial
  estimate of a response that was cut off), adds the usage row, and fills the cache on a miss.
  These writes run in tasks of their own (the stream's end must not wait for the store); they
  are awaited, bounded, when the runtime closes.

The arithmetic is in ``wsproxy.policy`` (pure); the counters, rows and entries are in the store,
so they are shared by whatever shares the store. Must not touch: sockets, HTTP, the engine's
internals beyond ``ResponseRun``'s public fields.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from wsproxy.core.events import Event
from wsproxy.core.replay import replay_events
from wsproxy.errors import ProxyError
from wsproxy.observability.metrics import Metrics
from wsproxy.policy import respcache
from wsproxy.policy.auth import KeyRing
from wsproxy.policy.keys import (
    ANONYMOUS,
    Limits,
    Principal,
    client_address,
    model_not_allowed,
    parse_networks,
)
from wsproxy.policy.limits import (
    Charge,
    estimate_tokens,
    plan,
    rate_limited,
    settlement,
    too_large,
    usage_tokens,
)
from wsproxy.policy.routing import Router
from wsproxy.policy.usage import clean_model, utc_date
from wsproxy.service.engine import ResponseRun
from wsproxy.settings import Settings
from wsproxy.store.base import ResponseStore

log = logging.getLogger("wsproxy.tenancy")

CACHE_HEADER = "x-wsproxy-cache"


def keyring_from(settings: Settings) -> KeyRing:
    """``api_keys``, ``admin_keys`` and the ``[keys.NAME]`` sections as one key ring."""
    named = {
        k.sha256: Principal(
            name=k.name,
            scopes=() if k.models is None else (k.models,),
            limits=Limits(k.rpm, k.tpm, k.requests_per_day, k.tokens_per_day),
            admin=k.admin,
            cache=k.cache,
        )
        for k in settings.keys.values()
    }
    return KeyRing(settings.api_keys, named, settings.admin_keys)


class Tenancy:
    def __init__(
        self,
        settings: Settings,
        store: ResponseStore,
        router: Router,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.router = router
        self.clock = clock
        self.ip_limits = Limits(rpm=settings.limits.ip_rpm)
        self.trusted = parse_networks(settings.limits.trusted_proxies)
        self.cache_ttl = settings.cache.ttl_seconds
        self.cache_max_bytes = settings.cache.max_entry_bytes
        self.cache_enabled = settings.cache.ttl_seconds > 0
        self.tasks: set[asyncio.Task[None]] = set()

    def client(self, peer: Any, headers: Mapping[str, str]) -> str:
        """The client's address: the peer, or X-Forwarded-For from a trusted proxy."""
        host = peer[0] if isinstance(peer, (tuple, list)) and peer else None
        return client_address(host, headers.get("x-forwarded-for"), self.trusted)

    def gate_for(self, principal: Principal | None, peer: Any, headers: Mapping[str, str]) -> Gate:
        """The gate of one response, from what an edge has: the ASGI ``client`` and headers."""
        return self.gate(principal, self.client(peer, headers), headers.get(CACHE_HEADER))

    def gate(self, principal: Principal | None, client: str | None, cache_header: str | None) -> Gate:
        """The gate of one response of ``principal`` (None: auth is off) from ``client``."""
        if principal is None:
            limits = self.ip_limits
            counter = f"ip:{client or 'unknown'}"
            return Gate(self, None, ANONYMOUS, counter, limits, respcache.wanted(cache_header, False))
        cache = respcache.wanted(cache_header, principal.cache)
        return Gate(self, principal, principal.name, principal.name, principal.limits, cache)

    async def usage(self, key: str | None, start: str, end: str) -> list[dict[str, Any]]:
        return await self.store.usage(key, start, end)

    def count(self, name: str, **labels: str) -> None:
        if self.metrics is not None:
            self.metrics.inc(name, 1.0, **labels)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def aclose(self) -> None:
        """Let the last settlements and usage rows reach the store (bounded: 5 s)."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5.0)


class Gate:
    __slots__ = (
        "admitted", "cache", "cache_key", "charges", "counter", "hit", "limits", "principal",
        "tenancy", "usage_key",
    )  # fmt: skip

    def __init__(
        self,
        tenancy: Tenancy,
        principal: Principal | None,
        usage_key: str,
        counter: str,
        limits: Limits,
        cache: bool,
    ) -> None:
        self.tenancy = tenancy
        self.principal = principal
        self.usage_key = usage_key
        self.counter = counter
        self.limits = limits
        self.cache = cache and tenancy.cache_enabled
        self.cache_key: str | None = None
        self.charges: tuple[Charge, ...] = ()
        self.admitted = False
        self.hit = False

    async def admit(self, run: ResponseRun) -> list[Event] | None:
        """Scope, cache, limits. Returns the events of a cache hit, or None to run the model."""
        tenancy = self.tenancy
        request = run.request
        principal = self.principal
        if principal is not None and principal.scopes:
            if not principal.allows(request.model, run.targets, tenancy.router.route):
                raise model_not_allowed(request.model)
        now = tenancy.clock()
        if self.cache and respcache.cacheable(request):
            key = respcache.cache_key(self.usage_key, request)
            data = await tenancy.store.cache_get(key, now)
            if data is not None:
                await self._take(now, 0)
                self.hit = True
                run.extra["cache"] = "hit"
                tenancy.count("wsproxy_cache_requests_total", result="hit")
                return replay_events(respcache.as_hit(orjson.loads(data), run.response_id, run.created_at))
            self.cache_key = key
            run.extra["cache"] = "miss"
            tenancy.count("wsproxy_cache_requests_total", result="miss")
        tokens = 0
        if self.limits.tokens:
            max_output = request.body.get("max_output_tokens")
            tokens = _input_estimate(run) + (max_output if isinstance(max_output, int) else 0)
        await self._take(now, tokens)
        return None

    async def _take(self, now: float, tokens: int) -> None:
        self.admitted = True
        if not self.limits.any:
            return
        charges = plan(self.counter, self.limits, now, tokens)
        big = too_large(charges)
        if big is not None:
            self.admitted = False
            self.tenancy.count("wsproxy_rate_limited_total", scope=big.kind)
            raise rate_limited(big, now, too_big=True)
        failed = await self.tenancy.store.take_limits(charges, now)
        if failed >= 0:
            self.admitted = False
            # The scope says which limit: rpm, tpm, rpd, tpd (or ip_rpm for keyless clients).
            scope = "ip_rpm" if self.principal is None else charges[failed].kind
            self.tenancy.count("wsproxy_rate_limited_total", scope=scope)
            raise rate_limited(charges[failed], now)
        self.charges = charges

    def end(self, run: ResponseRun) -> None:
        """The response's stream is over (called once, by the engine, from its ``finally``)."""
        if self.admitted:
            self.admitted = False
            self.tenancy.spawn(self._settle(run))

    async def _settle(self, run: ResponseRun) -> None:
        tenancy = self.tenancy
        store = tenancy.store
        now = tenancy.clock()
        counts: tuple[int, int, int, int, int] | None = None
        final = run.final
        if self.hit:
            counts = (1, 0, 0, 0, 0)  # answered without the model: a request, no tokens
        elif final is not None:
            inp, out, cached, reasoning = usage_tokens(final.response.get("usage"))
            counts = (1, inp, out, cached, reasoning)
        elif run.events_sent > 0:
            # Cut off before its end (client gone, slow, shutdown): the usage an upstream was
            # never asked to report is estimated, the output as one token per delta.
            counts = (1, _input_estimate(run), run.deltas, 0, 0)
        used = counts[1] + counts[2] if counts is not None else 0
        try:
            for key, delta, expires_at in settlement(self.charges, used, now):
                await store.adjust_limit(key, delta, expires_at)
            if counts is not None:
                await store.add_usage(utc_date(now), self.usage_key, clean_model(run.request.model), counts)
            if (
                self.cache_key is not None
                and final is not None
                and final.response.get("status") == "completed"
            ):
                data = orjson.dumps(final.response)
                if len(data) <= tenancy.cache_max_bytes:
                    await store.cache_put(self.cache_key, data, now + tenancy.cache_ttl)
        except ProxyError as exc:
            log.error("could not record usage of %s: %r", run.response_id, exc)


def _input_estimate(run: ResponseRun) -> int:
    instructions = run.request.body.get("instructions")
    size = len(orjson.dumps(run.effective_input)) + (len(orjson.dumps(instructions)) if instructions else 0)
    return estimate_tokens(size)


def cache_headers(run: Any) -> dict[str, str]:
    """``x-wsproxy-cache: hit|miss`` for an HTTP answer, when the cache was consulted."""
    status = run.extra.get("cache") if run is not None else None
    return {CACHE_HEADER: status} if status else {}
