"""HTTP providers: a connection pool per provider (``pool``), a dialect to speak its protocol.

What happens on one attempt:

1. The dialect builds the request; it is sent on the provider's pool (HTTP/2 multiplexes many
   client sessions over few connections). Waiting for the response headers is bounded by
   ``first_byte_timeout``.
2. A non-2xx answer is read (bounded) and mapped by the dialect. 429, 5xx, transport errors,
   timeouts, a stream that ends or breaks before its first event, and an impossible first event
   are retried here with backoff that honours ``Retry-After``, bounded in count and time, as long
   as nothing was yielded; what is left is raised for the caller to fail over.
3. On 2xx, raw bytes are fed to the SSE decoder and the dialect's translator as they arrive; each
   resulting event is yielded at once. Silence between chunks longer than ``idle_timeout`` (timed
   per stream) is a stalled upstream. From the first event on, any failure (stall, reset, GOAWAY,
   malformed SSE or UTF-8, a second ``response.created``) ends the stream with exactly one
   ``response.failed`` (never an exception, never a retry).
4. ``finally`` closes the upstream response: when the client leaves, the generator is closed and
   the upstream sees its request cancelled (connection closed on HTTP/1.1, RST_STREAM on HTTP/2).

Retries, by concern -- this module does only the second:

- connection-level resend (``wsproxy.upstream.pool``): a request the server never saw;
- **provider-level retry** (here, ``_before_retry``, one step for the streaming and the JSON
  calls): the same provider again after 429, 5xx, a transport error or timeout, or a stream that
  broke before its first event; backoff honours ``Retry-After``; bounded by ``max_retries`` and
  by a deadline; never after an event was yielded;
- fallback (``wsproxy.service.engine``): another provider, once this one gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import orjson

from wsproxy.core.events import Event
from wsproxy.core.ids import random_id
from wsproxy.core.sse import SSEError
from wsproxy.dialects.base import Dialect, UpstreamCall, UpstreamRequest
from wsproxy.errors import ProxyError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from wsproxy.settings import ProviderSettings
from wsproxy.upstream.pool import ConnectionPool, UpstreamResponse
from wsproxy.upstream.push import OutOfOrder, PushStream

log = logging.getLogger("wsproxy.upstream")

MAX_ERROR_BODY = 64 * 1024
# A plain JSON answer (``/responses/compact``) larger than this is refused.
MAX_JSON_BODY = 64 * 1024 * 1024


def retry_after_seconds(headers: Mapping[str, str], now: float) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class HTTPProvider:
    def __init__(self, settings: ProviderSettings, dialect: Dialect, api_key: str | None) -> None:
        self.name = settings.name
        self.kind = settings.kind
        self.settings = settings
        self.dialect = dialect
        self.supported_params: frozenset[str] = frozenset(getattr(dialect, "supported_params", ()))
        self.pool = ConnectionPool(settings)
        # Built once: the same for every request of this provider.
        self.headers: dict[str, str] = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            **self._auth_headers(api_key),
            **{k.lower(): v for k, v in settings.headers.items()},
        }
        # Called with (provider name, seconds to the response headers) after every answer;
        # set by the wiring to feed the metrics (upstream imports no observability).
        self.on_headers: Callable[[str, float], None] | None = None
        # Called with (provider name, reason) before a retry (set by the wiring, for the metrics).
        self.on_retry: Callable[[str, str], None] | None = None
        # wsproxy.observability.tracing.Tracing when traces are on (set by the wiring).
        self.tracing: Any = None

    def _auth_headers(self, key: str | None) -> dict[str, str]:
        if not key:
            return {}
        if self.kind == "anthropic":
            return {"x-api-key": key}
        if self.kind == "gemini":
            return {"x-goog-api-key": key}
        return {"authorization": f"Bearer {key}"}

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def _send(self, req: UpstreamRequest) -> UpstreamResponse:
        headers = self.headers
        if req.headers:
            headers = {**headers, **{k.lower(): v for k, v in req.headers.items()}}
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.first_byte_timeout):
                response = await self.pool.request(req.method, req.path, list(headers.items()), req.body)
        except TimeoutError:
            raise UpstreamTimeout(
                f"Provider '{self.name}' sent no answer within {self.settings.first_byte_timeout:g}s."
            ) from None
        if self.on_headers is not None:
            self.on_headers(self.name, time.monotonic() - started)
        return response

    async def _error_from(self, response: UpstreamResponse) -> UpstreamError:
        try:
            body = await response.read_all(MAX_ERROR_BODY)
        except ProxyError:
            body = b""  # the status is what matters; a truncated body still maps
        finally:
            response.close()
        keep = {
            k: v for k, v in response.headers.items() if k == "retry-after" or k.startswith("x-ratelimit-")
        }
        return self.dialect.error_from_status(response.status, body, keep)

    def _retry_deadline(self) -> float:
        return time.monotonic() + self.settings.retry_max_wait * (self.settings.max_retries + 1)

    async def _before_retry(self, error: ProxyError, attempt: int, deadline: float) -> None:
        """Wait before attempt ``attempt + 1`` (honouring ``Retry-After``), or raise ``error``:
        not retryable, out of attempts, or a wait past what we may spend (the caller may fail
        over)."""
        if not error.retryable or attempt >= self.settings.max_retries:
            raise error
        wait = retry_after_seconds(error.headers, time.time())
        if wait is None:
            wait = min(self.settings.retry_max_wait, 0.25 * (2**attempt))
        if wait > self.settings.retry_max_wait or time.monotonic() + wait > deadline:
            raise error  # the provider asks for longer than we may wait: fail over now
        log.info("retrying provider=%s attempt=%d wait=%.2fs after %r", self.name, attempt + 1, wait, error)
        if self.on_retry is not None:
            self.on_retry(self.name, str(error.status))
        await asyncio.sleep(wait)

    async def _open(self, req: UpstreamRequest) -> UpstreamResponse:
        """Send with bounded retries on 429, 5xx and transport errors (for plain JSON calls)."""
        deadline = self._retry_deadline()
        attempt = 0
        while True:
            try:
                response = await self._send(req)
                if response.status < 300:
                    return response
                error: ProxyError = await self._error_from(response)
            except ProxyError as exc:
                error = exc
            await self._before_retry(error, attempt, deadline)
            attempt += 1

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A plain JSON call (e.g. ``/responses/compact``), with the same retries and mapping."""
        req = UpstreamRequest(path=path, body=orjson.dumps(body), headers={"accept": "application/json"})
        response = await self._open(req)
        try:
            data = await response.read_all(MAX_JSON_BODY)
            if not response.complete:
                raise UpstreamError(f"Provider '{self.name}' answered with more than {MAX_JSON_BODY} bytes.")
        finally:
            response.close()
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"Provider '{self.name}' answered with invalid JSON.") from None
        if not isinstance(value, dict):
            raise UpstreamError(f"Provider '{self.name}' answered with a non-object.")
        return value

    async def stream(
        self, call: UpstreamCall, response_id: str, created_at: int
    ) -> AsyncGenerator[Event, None]:
        """Attempts with bounded retries on 429, 5xx, transport errors and timeouts, as long as
        no event was yielded; after the first event nothing is retried."""
        req = self.dialect.build_request(call)
        deadline = self._retry_deadline()
        attempt = 0
        while True:
            span = None
            sent = req
            if self.tracing is not None:
                span, trace_headers = self.tracing.attempt(call.trace, self.name, call.model, attempt)
                sent = dataclasses.replace(req, headers={**req.headers, **trace_headers})
            try:
                async with contextlib.aclosing(self._attempt(sent, call, response_id, created_at)) as events:
                    async for event in events:
                        yield event
                return
            except ProxyError as error:  # raised by _attempt only before its first event
                if span is not None:
                    span.set(**{"http.response.status_code": error.status})
                    span.end(error.code or error.message)
                await self._before_retry(error, attempt, deadline)
            finally:
                if span is not None:
                    span.end()
            attempt += 1

    async def open_push(self, call: UpstreamCall, response_id: str, created_at: int) -> PushStream:
        """Like :meth:`stream` up to its first events (the same retries, the same errors before
        them), then a :class:`PushStream` whose further events the connection's callback decodes
        and hands on (``wsproxy.upstream.push``). Without tracing only (no span per attempt)."""
        req = self.dialect.build_request(call)
        deadline = self._retry_deadline()
        attempt = 0
        while True:
            try:
                return await self._open_push(req, call, response_id, created_at)
            except ProxyError as error:
                await self._before_retry(error, attempt, deadline)
            attempt += 1

    async def _open_push(
        self, req: UpstreamRequest, call: UpstreamCall, response_id: str, created_at: int
    ) -> PushStream:
        response = await self._send(req)
        if response.status >= 300:
            raise await self._error_from(response)
        stream = PushStream(
            self.name, response, self.dialect.translator(response_id, call, created_at, random_id)
        )
        try:
            first = stream.start_events()
            while not first and not stream.done:
                chunk = await response.read()
                if not chunk:
                    # The end: what the decoder holds (an unterminated last message), if readable.
                    with contextlib.suppress(SSEError, ValueError, KeyError, TypeError, OutOfOrder):
                        first = stream.decode(b"")
                    break
                first = stream.process(chunk)
            if not first:
                raise UpstreamUnavailable(
                    f"Provider '{self.name}' closed the stream before sending any event."
                )
            if not stream.ended and (stream.done or response.complete):
                # All there is came with the first read: the ending is added now.
                first = first + stream.process(b"")
        except BaseException:
            response.close()
            raise
        stream.first = first
        return stream

    async def _attempt(
        self, req: UpstreamRequest, call: UpstreamCall, response_id: str, created_at: int
    ) -> AsyncGenerator[Event, None]:
        """One upstream request, pulled. Raises ``ProxyError`` only before its first event; after
        it, every failure ends the stream with the translator's ``response.failed``. The reads are
        decoded by :class:`~wsproxy.upstream.push.PushStream`, as on the push data plane: one
        decoder (SSE split, translator, order checks, ``more`` marking) for both paths."""
        stream = await self._open_push(req, call, response_id, created_at)
        try:
            for event in stream.first:
                yield event
            response = stream.response
            while not stream.ended:
                try:
                    chunk = await response.read()
                except UpstreamError as err:  # a stall (idle timeout), a reset, a lost connection
                    events = stream.failed(err)
                else:
                    events = stream.process(chunk)
                for event in events:
                    yield event
        finally:
            # After a terminal event the end of the body is read briefly: the connection stays
            # reusable, an HTTP/2 stream ends cleanly instead of with a RST_STREAM.
            await stream.aclose()
