"""Wiring: builds every long-lived object from the settings, and closes them.

Nothing here exists at import time: :func:`open_runtime` is called from the app's lifespan, and
``Runtime.aclose`` closes pools, the store and every task it started.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wsproxy.dialects.base import Dialect, DialectOptions
from wsproxy.local.model import LocalProvider
from wsproxy.observability.metrics import Metrics
from wsproxy.observability.responses import ResponseObserver
from wsproxy.observability.tracing import Tracing
from wsproxy.policy.auth import KeyRing
from wsproxy.policy.ratelimit import RateLimiter
from wsproxy.policy.routing import Router
from wsproxy.service.conversations import Conversations
from wsproxy.service.engine import Engine
from wsproxy.service.runs import BackgroundRegistry
from wsproxy.service.tenancy import Tenancy, keyring_from
from wsproxy.service.ws_upstream import UpstreamSockets
from wsproxy.settings import ProviderSettings, Settings
from wsproxy.store.base import ResponseStore
from wsproxy.store.factory import make_store
from wsproxy.upstream.base import Provider
from wsproxy.upstream.http import HTTPProvider

log = logging.getLogger("wsproxy")


def dialect_for(kind: str) -> Dialect:
    if kind == "openai":
        from wsproxy.dialects.openai_responses import OpenAIResponsesDialect

        return OpenAIResponsesDialect()
    if kind == "chat_completions":
        from wsproxy.dialects.chat_completions import ChatCompletionsDialect

        return ChatCompletionsDialect()
    if kind == "anthropic":
        from wsproxy.dialects.anthropic_messages import AnthropicMessagesDialect

        return AnthropicMessagesDialect()
    if kind == "gemini":
        from wsproxy.dialects.gemini_stream import GeminiDialect

        return GeminiDialect()
    raise ValueError(f"no dialect for provider kind {kind!r}")


def dialect_options(settings: ProviderSettings) -> DialectOptions:
    known = {f.name for f in dataclasses.fields(DialectOptions)}
    opts = dict(settings.options)
    extra = {k: opts.pop(k) for k in list(opts) if k not in known}
    # Dialects read no clock themselves: the wall clock for completed_at is injected here.
    extra.setdefault("clock", lambda: int(time.time()))
    return DialectOptions(**opts, extra=extra)


def make_provider(settings: ProviderSettings, environ: Mapping[str, str]) -> Provider:
    if settings.kind == "local":
        return LocalProvider(
            settings.name, token_delay=settings.token_delay, prefill_delay=settings.prefill_delay
        )
    return HTTPProvider(settings, dialect_for(settings.kind), settings.key(environ))


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    store: ResponseStore
    keyring: KeyRing
    limiter: RateLimiter
    metrics: Metrics
    providers: dict[str, Provider]
    # Scoped keys' limits, usage and the response cache (wsproxy.service.tenancy).
    tenancy: Tenancy
    started_at: float = field(default_factory=time.time)
    # Readiness turns false first on shutdown; sessions watch ``closing``.
    ready: bool = True
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # Open streams (SSE, JSON, WebSocket responses) for the shutdown drain.
    active_responses: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    background: BackgroundRegistry = field(default_factory=BackgroundRegistry)
    # Non-streaming requests with an Idempotency-Key that are running now, by scoped key.
    idempotent_inflight: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    # Tasks streaming a response to a client (SSE, JSON, WebSocket); when the shutdown grace is
    # over (``grace_over``) they are cancelled and end their response with a terminal event.
    streaming: set[asyncio.Task[Any]] = field(default_factory=set)
    grace_over: bool = False
    # Open WebSocket sessions: the drain waits for them to send their 1001 close.
    sessions: int = 0
    sessions_closed: asyncio.Event = field(default_factory=asyncio.Event)
    # Signs client secrets (wsproxy.policy.client_secrets): from the settings, else random.
    client_secret_key: bytes = field(default=b"", repr=False)
    # WebSocket mode over upstream WebSockets (kind = "openai"); made by open_runtime.
    ws_upstream: UpstreamSockets | None = None

    @property
    def shared_rate_limit(self) -> bool:
        """``limits.rate_limit_rpm`` is counted in the store when other processes share it."""
        settings = self.settings
        return self.limiter.enabled and (settings.workers > 1 or settings.store.backend == "redis")

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """A task owned by the runtime: kept, and cancelled at close."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def response_started(self) -> None:
        self.active_responses += 1
        self.drained.clear()

    def response_ended(self) -> None:
        self.active_responses -= 1
        if self.active_responses == 0:
            self.drained.set()

    def session_opened(self) -> None:
        self.sessions += 1
        self.sessions_closed.clear()

    def session_closed(self) -> None:
        self.sessions -= 1
        if self.sessions == 0:
            self.sessions_closed.set()

    async def drain(self, grace: float, settle: float = 5.0) -> bool:
        """Graceful shutdown: readiness turns false and new work is refused (``closing``); the
        responses in flight get ``grace`` seconds to finish. Then the rest are ended: their edges
        send a terminal event (stored first) within ``settle`` seconds. True if all finished."""
        self.ready = False
        self.closing.set()
        log.info("shutdown: draining %d in-flight responses (grace %.1fs)", self.active_responses, grace)
        finished = True
        try:
            async with asyncio.timeout(grace):
                await self.drained.wait()
        except TimeoutError:
            finished = False
            log.warning("shutdown: grace period over, ending %d responses", self.active_responses)
            self.grace_over = True
            for task in list(self.streaming):
                task.cancel()
            try:
                async with asyncio.timeout(settle):
                    await self.drained.wait()
            except TimeoutError:
                log.error("shutdown: %d responses did not end within %.1fs", self.active_responses, settle)
        try:
            async with asyncio.timeout(settle):
                await self.sessions_closed.wait()  # WebSocket sessions send their 1001 close
        except TimeoutError:
            log.error("shutdown: %d websocket sessions still open", self.sessions)
        return finished

    async def _purge_loop(self) -> None:
        interval = self.settings.store.purge_interval
        while True:
            await asyncio.sleep(interval)
            try:
                dropped = await self.store.purge(time.time())
                if dropped:
                    log.info("store purge dropped=%d", dropped)
            except Exception:
                log.exception("store purge failed")

    async def aclose(self) -> None:
        await self.tenancy.aclose()  # the last usage rows reach the store before it closes
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.ws_upstream is not None:
            await self.ws_upstream.aclose()
        for provider in self.providers.values():
            await provider.aclose()
        await self.store.close()
        if self.engine.tracing is not None:
            await asyncio.to_thread(self.engine.tracing.close)  # flushes queued spans


async def open_runtime(settings: Settings, environ: Mapping[str, str] | None = None) -> Runtime:
    env = os.environ if environ is None else environ
    providers = {name: make_provider(p, env) for name, p in settings.providers.items()}
    s = settings.store
    store = make_store(
        s.backend,
        path=s.path,
        url=s.url,
        ttl_seconds=s.ttl_seconds,
        max_records=s.max_records,
        usage_days=s.usage_days,
    )
    await store.open()
    metrics = Metrics()
    tracing = Tracing.from_environ(env)
    for provider in providers.values():
        if isinstance(provider, HTTPProvider):
            provider.on_headers = metrics.time_to_headers
            provider.tracing = tracing
            provider.on_retry = metrics.retried
    router = Router(
        {name: p.models for name, p in settings.providers.items()},
        settings.aliases,
        settings.default_provider,
    )
    engine = Engine(
        router=router,
        providers=providers,
        store=store,
        dialect_options={name: dialect_options(p) for name, p in settings.providers.items()},
        on_usage=metrics.record_usage,
        tracing=tracing,
        observer=ResponseObserver(metrics),
        conversations=Conversations(store, max_items=s.conversation_max_items),
    )
    runtime = Runtime(
        settings=settings,
        engine=engine,
        store=store,
        keyring=keyring_from(settings),
        limiter=RateLimiter(settings.limits.rate_limit_rpm),
        metrics=metrics,
        providers=providers,
        tenancy=Tenancy(settings, store, router, metrics=metrics),
        client_secret_key=(
            settings.client_secret_key.encode() if settings.client_secret_key else os.urandom(32)
        ),
        # Background runs keep their event log in the store too: any worker can follow them.
        background=BackgroundRegistry(store),
        ws_upstream=UpstreamSockets(settings, providers, metrics),
    )
    runtime.drained.set()
    runtime.sessions_closed.set()
    runtime.spawn(runtime._purge_loop(), "store-purge")
    return runtime
