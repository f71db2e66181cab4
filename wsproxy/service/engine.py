"""The engine runs one response, whatever the transport that asked for it.

    CreateRequest ──▶ continuation (cache, store) ──▶ routing ──▶ provider attempts ──▶ events
                                                                  (fallback before output)
                                                   on the terminal event: store, then yield it

Every transport (WebSocket, SSE, JSON) consumes the same :meth:`ResponseRun.events` stream, so
they cannot drift apart. Guarantees of that stream:

- an error raised before the first event is a ``ProxyError`` (rendered as an HTTP error or a
  WebSocket ``error`` event); after the first event there is exactly one terminal event;
- a stored response is in the store before its terminal event is yielded, so a client can
  retrieve it as soon as it sees the event;
- closing the iterator (client gone) closes the upstream request at once.

A consumer that takes synchronous writes sets ``run.push_ok``; then, for an HTTP provider and no
per-event rewrite but ``previous_response_id``, the stream's steady state is pushed from the
upstream connection's callback (``wsproxy.service.push``): the iterator sets ``run.push`` before
handing on the last of the first events, the consumer runs it, and the iterator resumes with the
terminal event (stored first, as always).

Retries, by concern -- this module does only the third:

- connection-level resend (``wsproxy.upstream.pool``): a request the server never saw;
- provider-level retry (``wsproxy.upstream.http.HTTPProvider``): the same provider, with backoff;
- **fallback** (here, :meth:`Engine.events`): when a provider fails *before its first event* with
  a retryable error (after its own retries), the next target of the route (``aliases``) is
  tried, once each, in order. After the first event nothing is retried anywhere.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from wsproxy.core.events import Event, ResponseBuilder, output_text, usage_object
from wsproxy.core.ids import random_id
from wsproxy.core.params import check_supported, check_tool_outputs
from wsproxy.core.request import CreateRequest, parse_create
from wsproxy.dialects.base import DialectOptions, UpstreamCall
from wsproxy.errors import ProxyError, previous_response_not_found
from wsproxy.observability.responses import ResponseObserver
from wsproxy.observability.tracing import Span, Tracing
from wsproxy.policy.routing import Router, Target
from wsproxy.service.conversations import HISTORY_LEN, Conversations, tag_conversation
from wsproxy.service.push import Pusher
from wsproxy.store.base import ResponseStore, StoredResponse
from wsproxy.upstream.base import Provider
from wsproxy.upstream.push import PushStream
from wsproxy.upstream.websocket import WebSocketUnavailable

log = logging.getLogger("wsproxy.service.engine")

_ITEM_PREFIX = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
    "item_reference": "ref",
}

COMPACTION_INSTRUCTIONS = (
    "You compact conversations. Write a faithful, complete summary of the conversation above: "
    "the user's goals, decisions made, facts established, tool calls and their results, and open "
    "questions. Write it so that the conversation can continue from the summary alone."
)
COMPACTION_PREFIX = "Summary of the conversation so far:\n"

CacheLookup = Callable[[str], StoredResponse | None]

# The events that carry the Response object (its previous_response_id is the client's).
_RESPONSE_EVENTS = frozenset(
    {"response.created", "response.queued", "response.in_progress", "response.completed",
     "response.incomplete", "response.failed"}
)  # fmt: skip


class UpstreamRoute(Protocol):
    """Another way to a provider for some responses (WebSocket mode: an upstream WebSocket per
    client lane, ``wsproxy.service.ws_upstream``). ``stream`` answers None for "use HTTP"; its
    stream raises ``WebSocketUnavailable`` before its first event to fall back to HTTP."""

    def stream(
        self, run: ResponseRun, target: Target, provider: Provider
    ) -> AsyncGenerator[Event, None] | None: ...


def with_previous(event: Event, previous_response_id: str) -> Event:
    """``event`` with ``response.previous_response_id`` set to what the client asked for (the
    upstream saw an expanded history instead, or dropped it). Only the few events that carry the
    Response object are re-encoded, and only when they differ."""
    if event.type not in _RESPONSE_EVENTS:
        return event
    if b'"previous_response_id":' + orjson.dumps(previous_response_id) in event.data:
        return event
    payload = event.json()
    response = payload.get("response")
    if not isinstance(response, dict):
        return event
    response["previous_response_id"] = previous_response_id
    patched = Event(event.type, orjson.dumps(payload), event.seq)
    patched.more = event.more
    return patched


class RunGate(Protocol):
    async def admit(self, run: ResponseRun) -> list[Event] | None: ...

    def end(self, run: ResponseRun) -> None: ...


def with_item_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as stored and listed by input_items: every item has an id, and a message's
    string content is the equivalent one-part list, as OpenAI lists it."""
    out = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message" and isinstance(item.get("content"), str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item = {**item, "content": [{"type": part, "text": item["content"]}]}
        if not isinstance(item.get("id"), str):
            item = {"id": random_id(_ITEM_PREFIX.get(kind, "item")), "type": kind, **item}
        out.append(item)
    return out


@dataclass(slots=True)
class ResponseRun:
    """One response being produced. ``final`` is set once the terminal event has passed."""

    request: CreateRequest
    principal: str | None
    targets: tuple[Target, ...]
    effective_input: list[dict[str, Any]]
    upstream_body: dict[str, Any]
    response_id: str
    created_at: int
    previous: StoredResponse | None = None
    final: StoredResponse | None = None
    events_sent: int = 0
    # Output deltas passed on: the estimate of the output of a response that was cut off.
    deltas: int = 0
    provider_used: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The client's W3C traceparent, and the response's span while tracing is on.
    traceparent: str | None = None
    trace: Span | None = None
    # For the metrics and the response log: the edge's request id, when the run was made and
    # when its first output delta passed (monotonic seconds).
    request_id: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    first_token_at: float = 0.0
    # Scopes, limits, usage and the response cache (wsproxy.service.tenancy.Gate), set by the
    # edge that starts the response: ``admit`` before the first event, ``end`` after the last.
    gate: RunGate | None = None
    # The push data plane (wsproxy.service.push): set by a consumer that can take synchronous
    # writes (``push_ok``); ``push`` is the Pusher to run once the first events went out;
    # ``last_seq`` the sequence number of the last event it forwarded.
    push_ok: bool = False
    push: Any = None
    last_seq: int = -1

    @property
    def status(self) -> str | None:
        return None if self.final is None else str(self.final.response.get("status"))


class Engine:
    def __init__(
        self,
        *,
        router: Router,
        providers: Mapping[str, Provider],
        store: ResponseStore,
        dialect_options: Mapping[str, DialectOptions],
        on_usage: Callable[..., None] | None = None,
        tracing: Tracing | None = None,
        observer: ResponseObserver | None = None,
        conversations: Conversations | None = None,
    ) -> None:
        self.conversations = conversations or Conversations(store)
        self.router = router
        self.providers = providers
        self.store = store
        self.dialect_options = dialect_options
        self.on_usage = on_usage
        self.tracing = tracing
        self.observer = observer

    # -- preparing ----------------------------------------------------------------------------

    async def lookup(self, response_id: str, principal: str | None) -> StoredResponse | None:
        """A stored response visible to ``principal`` (other principals' ids do not exist)."""
        record = await self.store.get(response_id)
        if record is None or record.owner != principal:
            return None
        return record

    async def prepare(
        self,
        request: CreateRequest,
        principal: str | None,
        cache: CacheLookup | None = None,
        traceparent: str | None = None,
        request_id: str | None = None,
    ) -> ResponseRun:
        """Resolve continuation and routing. Raises ``ProxyError`` (nothing was sent yet)."""
        targets = self.router.route(request.model)
        for target in targets:
            provider = self.providers.get(target.provider)
            if provider is None:
                raise ProxyError(f"Provider '{target.provider}' is not available.", status=503)
            # stop/seed/logit_bias/top_logprobs reach only providers that honour them.
            check_supported(request.body, getattr(provider, "supported_params", ()), target.provider)
        previous: StoredResponse | None = None
        prev_id = request.previous_response_id
        body = dict(request.body)
        if prev_id:
            previous = cache(prev_id) if cache is not None else None
            if previous is None:
                previous = await self.lookup(prev_id, principal)
            if previous is None and not self._upstream_holds_state(targets[0]):
                raise previous_response_not_found(prev_id)
        effective = list(request.input)
        if previous is not None:
            effective = previous.input_items + list(previous.response.get("output") or []) + effective
        extra: dict[str, Any] = {}
        # -- conversation turn: history first; the id is the proxy's, never the upstream's.
        if request.conversation is not None:
            history = await self.conversations.history(request, principal)
            effective = history + effective
            extra[HISTORY_LEN] = len(history)
            body.pop("conversation", None)
        # -- end conversation turn
        if previous is not None or not prev_id:
            # The whole history is known here (not when an OpenAI upstream holds the chain).
            check_tool_outputs(effective)
        return ResponseRun(
            request=request,
            principal=principal,
            targets=targets,
            effective_input=with_item_ids(effective),
            upstream_body=body,
            response_id=random_id("resp"),
            created_at=int(time.time()),
            previous=previous,
            traceparent=traceparent,
            request_id=request_id,
            extra=extra,
        )

    def _upstream_holds_state(self, target: Target) -> bool:
        provider = self.providers.get(target.provider)
        return provider is not None and provider.kind == "openai"

    def _call_for(self, run: ResponseRun, target: Target, provider: Provider) -> UpstreamCall:
        body = run.upstream_body
        items = run.effective_input
        if provider.kind == "openai":
            prev = run.previous
            holds = (
                prev is not None
                and prev.extra.get("provider") == target.provider
                and prev.response.get("store") is True
            )
            if holds or (prev is None and run.request.previous_response_id):
                # The upstream keeps this chain itself: send only the new input (cheaper).
                items = (
                    with_item_ids(list(run.request.input))
                    if prev is None
                    else items[len(prev.input_items) + len(prev.response.get("output") or []) :]
                )
            else:
                body = {k: v for k, v in body.items() if k != "previous_response_id"}
        options = self.dialect_options.get(target.provider, DialectOptions())
        return UpstreamCall(body=body, input=items, model=target.model, options=options, trace=run.trace)

    # -- compaction ---------------------------------------------------------------------------

    async def compact(self, body: dict[str, Any], principal: str | None) -> dict[str, Any]:
        """A compacted input window: passed through to an OpenAI-native provider; for the others
        the same model writes a summary that replaces the history."""
        request = parse_create({**body, "store": False}, websocket=False)
        run = await self.prepare(request, principal)
        target = run.targets[0]
        provider = self.providers[target.provider]
        if provider.kind == "openai" and hasattr(provider, "post_json"):
            call = self._call_for(run, target, provider)
            payload = {k: v for k, v in call.body.items() if k != "store"}
            payload.update(model=call.model, input=call.input)
            result: dict[str, Any] = await provider.post_json("/responses/compact", payload)
            return result
        summary_request = parse_create(
            {
                "model": request.model,
                "instructions": COMPACTION_INSTRUCTIONS,
                "input": [
                    *run.effective_input,
                    {"role": "user", "content": "Summarize the conversation so far for your own later use."},
                ],
                "store": False,
            },
            websocket=False,
        )
        summary_run = await self.prepare(summary_request, principal)
        async for _ in self.events(summary_run):
            pass
        final = summary_run.final
        if final is None or final.response.get("status") != "completed":
            raise ProxyError("The model could not compact this conversation.", status=502)
        text = output_text(final.response.get("output") or [])
        window = [
            {
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_text", "text": f"{COMPACTION_PREFIX}{text}"}],
            }
        ]
        return {
            "id": random_id("cmp"),
            "object": "response.compaction",
            "created_at": int(time.time()),
            "output": with_item_ids(window),
            "usage": final.response.get("usage"),
        }

    # -- running ------------------------------------------------------------------------------

    def events(self, run: ResponseRun, upstream: UpstreamRoute | None = None) -> AsyncIterator[Event]:
        """The response's events, ending with exactly one terminal event. ``upstream``: the
        WebSocket-mode route for the session's lane (the provider's own WebSocket), tried first
        for every target it takes."""
        # Without tracing no wrapper: one generator hop less per event.
        if self.tracing is None:
            return self._events(run, upstream)
        return self._traced(run, upstream)

    async def _traced(self, run: ResponseRun, upstream: UpstreamRoute | None) -> AsyncIterator[Event]:
        assert self.tracing is not None
        run.trace = self.tracing.response(run.traceparent, **{"wsproxy.model": run.request.model})
        error: str | None = "ended before its terminal event"
        try:
            async for event in self._events(run, upstream):
                yield event
            error = None if run.status in ("completed", "incomplete") else f"status {run.status}"
        except ProxyError as exc:
            error = exc.code or exc.message
            raise
        finally:
            run.trace.set(
                **{
                    # The upstream's id on the passthrough, wsproxy's own otherwise.
                    "wsproxy.response_id": run.final.id if run.final is not None else run.response_id,
                    "wsproxy.provider": run.provider_used,
                    "wsproxy.status": run.status,
                }
            )
            run.trace.end(error)

    async def _events(self, run: ResponseRun, upstream: UpstreamRoute | None) -> AsyncIterator[Event]:
        gate = run.gate
        try:
            if gate is not None:
                # Raises (403, 429) before the first event; a cache hit is replayed as it is.
                cached = await gate.admit(run)
                if cached is not None:
                    run.provider_used = "cache"
                    for event in cached:
                        if event.terminal:
                            event = await self.finish(run, event)
                        run.events_sent += 1
                        yield event
                    return
            if not run.request.generate:
                target = run.targets[0]
                opened = await self._via(run, target, self.providers[target.provider], upstream)
                if opened is not None:
                    # The warm-up goes to the provider, which prepares its state on that socket.
                    run.provider_used = target.provider
                    async for event in self._guarded(run, *opened):
                        yield event
                    return
                async with contextlib.aclosing(self._warmup(run)) as warmup:
                    async for event in warmup:
                        yield event
                return
            last_error: ProxyError | None = None
            for index, target in enumerate(run.targets):
                provider = self.providers[target.provider]
                try:
                    opened = await self._via(run, target, provider, upstream)
                    if opened is None and self._pushes(run, provider):
                        call = self._call_for(run, target, provider)
                        pushed = await provider.open_push(call, run.response_id, run.created_at)  # type: ignore[attr-defined]
                        opened = self._pushed(run, pushed), None
                    elif opened is None:
                        call = self._call_for(run, target, provider)
                        stream = provider.stream(call, run.response_id, run.created_at)
                        if run.request.conversation is not None:
                            stream = tag_conversation(stream, run.request.conversation)
                        opened = stream, await self._first(stream)
                    stream, first = opened
                except ProxyError as exc:
                    last_error = exc
                    if exc.retryable and index + 1 < len(run.targets):
                        log.warning("provider %s failed before output (%r); falling back", target, exc)
                        if self.observer is not None:
                            self.observer.metrics.retried(target.provider, "fallback")
                        continue
                    raise
                run.provider_used = target.provider
                # Closed with this iterator (the client left): the provider's stream is closed
                # now, not when the garbage collector finalizes the inner generator.
                async with contextlib.aclosing(self._guarded(run, stream, first)) as guarded:
                    async for event in guarded:
                        yield event
                return
            assert last_error is not None
            raise last_error
        finally:
            # However the stream ended (also closed unstarted-after-admission, or cancelled).
            if gate is not None:
                gate.end(run)

    def _pushes(self, run: ResponseRun, provider: Provider) -> bool:
        """The push data plane may carry this response: its consumer takes synchronous writes,
        and no per-event rewrite other than ``previous_response_id`` (a conversation's tagging, a
        trace span per attempt) sits between the provider and the client."""
        return (
            run.push_ok
            and run.request.conversation is None
            and self.tracing is None
            and getattr(provider, "open_push", None) is not None
            and getattr(provider, "tracing", None) is None
        )

    async def _pushed(self, run: ResponseRun, stream: PushStream) -> AsyncGenerator[Event, None]:
        """A pushed provider stream as ``_guarded`` sees it: the first events, then (while the
        consumer runs ``run.push``) nothing, then the tail from the terminal event on."""
        try:
            first = stream.first
            if stream.ended or any(event.terminal for event in first):
                for event in first:
                    yield event
                return
            want = run.request.previous_response_id
            observer = self.observer
            pusher = Pusher(
                run,
                stream,
                (lambda event: with_previous(event, want)) if want else None,
                observer.forward_delay if observer is not None else None,
            )
            for event in first[:-1]:
                yield event
            # Set before the last first event is handed on: the consumer writes it, sees
            # ``run.push`` and runs it; this generator resumes when the push is over.
            run.push = pusher
            yield first[-1]
            if pusher.ended:
                for event in pusher.tail:
                    yield event
                return
            # The consumer did not push (it gave up, or it is no sink): pull what is left.
            run.push = None
            while not stream.ended:
                chunk = await stream.response.read()
                for event in stream.process(chunk):
                    yield event
        finally:
            await stream.aclose()

    async def _first(self, stream: AsyncGenerator[Event, None]) -> Event | None:
        """The first event of ``stream`` (closed when that raises)."""
        try:
            return await anext(stream)
        except StopAsyncIteration:
            return None
        except BaseException:
            await stream.aclose()
            raise

    async def _via(
        self, run: ResponseRun, target: Target, provider: Provider, upstream: UpstreamRoute | None
    ) -> tuple[AsyncGenerator[Event, None], Event | None] | None:
        """The upstream route's stream and its first event; None for the HTTP path (no route,
        or no socket: the provider refused the upgrade or could not be reached)."""
        if upstream is None or run.request.conversation is not None:
            # A conversation turn carries its history from wsproxy's store: over HTTP.
            return None
        stream = upstream.stream(run, target, provider)
        if stream is None:
            return None
        try:
            return stream, await self._first(stream)
        except WebSocketUnavailable:
            return None  # no socket (refused, unreachable): this response goes over HTTP

    async def _guarded(
        self, run: ResponseRun, stream: AsyncGenerator[Event, None], first: Event | None
    ) -> AsyncGenerator[Event, None]:
        """Forward a provider's events; make sure exactly one terminal event ends them, and that
        the Response carries the ``previous_response_id`` the client asked for."""
        last_seq = -1
        pending = first
        want = run.request.previous_response_id
        try:
            while True:
                if pending is None:
                    try:
                        pending = await anext(stream)
                    except StopAsyncIteration:
                        break
                event, pending = pending, None
                if want:
                    event = with_previous(event, want)
                last_seq = event.seq
                if event.terminal:
                    event = await self.finish(run, event)
                    run.events_sent += 1
                    yield event
                    return
                run.events_sent += 1
                if event.type.endswith(".delta"):
                    run.deltas += 1
                    if not run.first_token_at:
                        run.first_token_at = time.monotonic()
                yield event
        except ProxyError as exc:
            log.error("provider %s raised after output began: %r", run.provider_used, exc)
            failure: tuple[str, str] | None = (exc.code or "server_error", exc.message)
        else:
            failure = ("server_error", "The upstream stream ended without a terminal event.")
        finally:
            await stream.aclose()
        if failure is not None:
            builder = ResponseBuilder(run.response_id, run.request.model, run.created_at, run.request.body)
            last_seq = max(last_seq, run.last_seq)
            builder.seq, builder.started = last_seq + 1, last_seq >= 0
            for event in builder.fail(*failure):
                if event.terminal:
                    event = await self.finish(run, event)
                yield event

    async def _warmup(self, run: ResponseRun) -> AsyncGenerator[Event, None]:
        """``generate: false``: prepare state without running the model."""
        builder = ResponseBuilder(run.response_id, run.request.model, run.created_at, run.request.body)
        events = builder.start(in_progress=False) + builder.complete(usage_object(), int(time.time()))
        for event in events:
            if event.terminal:
                event = await self.finish(run, event)
            yield event

    async def finish(self, run: ResponseRun, terminal: Event) -> Event:
        """``terminal`` ends ``run``: its final record is set, usage recorded, and (``store``) it
        is stored; returns the terminal event to send (a conversation turn may turn it into a
        failure). Called before the terminal event is yielded; the edge calls it for a response
        it ends itself (shutdown, a bug), so that ending is stored like any other."""
        if run.request.conversation is not None:
            turn_input = run.effective_input[run.extra.get(HISTORY_LEN, 0) :]
            terminal = await self.conversations.record_turn(run.request.conversation, turn_input, terminal)
        payload = terminal.json()
        response = payload.get("response") or {}
        record = StoredResponse(
            id=str(response.get("id") or run.response_id),
            response=response,
            input_items=run.effective_input,
            owner=run.principal,
            created_at=time.time(),
            extra={"provider": run.provider_used},
        )
        run.final = record
        model = str(response.get("model") or run.request.model or "")
        status = str(response.get("status") or terminal.type.removeprefix("response."))
        if self.on_usage is not None:
            self.on_usage(
                run.principal, run.provider_used or "", response.get("usage"), model=model, status=status
            )
        if self.observer is not None:
            now = time.monotonic()
            self.observer.finished(
                response_id=record.id,
                request_id=run.request_id,
                principal=run.principal,
                provider=run.provider_used or "",
                model=model,
                status=status,
                usage=response.get("usage"),
                ttft=run.first_token_at - run.started_at if run.first_token_at else None,
                duration=now - run.started_at,
            )
        if run.request.store:
            await self.store.put(record)
        return terminal
