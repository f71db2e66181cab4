"""HTTP providers: one pooled httpx2 client per provider, a dialect to speak its protocol.

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
   the upstream sees its request cancelled (connection closed on HTTP/1.1, RST_STREAM on HTTP/2 --
   which httpcore does not send by itself, see ``_cancel_orphan_streams``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import h2.exceptions
import httpx2
import hyperframe.exceptions
import orjson
from h2.errors import ErrorCodes

from wsproxy.core.events import Event
from wsproxy.core.ids import random_id
from wsproxy.core.sse import SSEDecoder, SSEError, SSEMessage
from wsproxy.dialects.base import Dialect, UpstreamCall, UpstreamRequest
from wsproxy.errors import ProxyError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from wsproxy.settings import ProviderSettings

log = logging.getLogger("wsproxy.upstream")

MAX_ERROR_BODY = 64 * 1024


def make_client(settings: ProviderSettings) -> httpx2.AsyncClient:
    verify: bool | str
    v = settings.verify.strip().lower()
    verify = True if v in ("true", "1", "yes") else False if v in ("false", "0", "no") else settings.verify
    return httpx2.AsyncClient(
        http2=settings.http2 or settings.http2_prior_knowledge,
        http1=not settings.http2_prior_knowledge,
        verify=verify,
        limits=httpx2.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_keepalive_connections,
            keepalive_expiry=settings.keepalive_expiry,
        ),
        timeout=httpx2.Timeout(
            connect=settings.connect_timeout,
            read=settings.idle_timeout,
            write=settings.write_timeout,
            pool=settings.pool_timeout,
        ),
        follow_redirects=False,
        trust_env=False,
    )


# What a broken connection can raise. httpcore lets some HTTP/2 framing errors through unmapped
# (hyperframe's InvalidFrameError on a malformed frame), so those are caught here too.
TRANSPORT_ERRORS = (httpx2.HTTPError, OSError, h2.exceptions.H2Error, hyperframe.exceptions.HyperframeError)


def map_transport_error(exc: Exception, provider: str) -> ProxyError:
    """httpx2's exceptions, mapped once, here."""
    if isinstance(exc, (h2.exceptions.H2Error, hyperframe.exceptions.HyperframeError)):
        name = type(exc).__name__
        return UpstreamUnavailable(f"Provider '{provider}' broke the HTTP/2 protocol: {name}: {exc}.")
    if isinstance(exc, (httpx2.ConnectTimeout, httpx2.ReadTimeout, httpx2.WriteTimeout)):
        return UpstreamTimeout(f"Timed out talking to provider '{provider}': {type(exc).__name__}.")
    if isinstance(exc, httpx2.PoolTimeout):
        return UpstreamUnavailable(
            f"Provider '{provider}' has no free connection (pool exhausted).", status=503
        )
    if isinstance(exc, (httpx2.ConnectError, ConnectionRefusedError)):
        return UpstreamUnavailable(f"Could not reach provider '{provider}': {type(exc).__name__}: {exc}.")
    if isinstance(exc, (httpx2.TransportError, OSError)):
        name = type(exc).__name__
        return UpstreamUnavailable(f"The connection to provider '{provider}' failed: {name}: {exc}.")
    return UpstreamError(f"Provider '{provider}' failed: {type(exc).__name__}.")


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


# Streams one HTTP/2 connection carries before another is opened. httpcore keeps a single
# connection per origin and queues requests beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS
# (100 for most servers) behind it, where they wait out first_byte_timeout. Half of that leaves
# room for streams the server still counts while they close, and spreads a busy provider's load.
H2_STREAMS_PER_CONNECTION = 50


class HTTPProvider:
    def __init__(
        self,
        settings: ProviderSettings,
        dialect: Dialect,
        client: httpx2.AsyncClient,
        api_key: str | None,
        new_client: Callable[[], httpx2.AsyncClient] | None = None,
    ) -> None:
        self.name = settings.name
        self.kind = settings.kind
        self.settings = settings
        self.dialect = dialect
        self.client = client
        # HTTP/2: more clients (each its own connection) when the busiest ones are full.
        self._new_client = new_client if settings.http2 or settings.http2_prior_knowledge else None
        self._load: dict[httpx2.AsyncClient, int] = {client: 0}
        self.headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            **self._auth_headers(api_key),
            **dict(settings.headers),
        }

    def _auth_headers(self, key: str | None) -> dict[str, str]:
        if not key:
            return {}
        if self.kind == "anthropic":
            return {"x-api-key": key}
        return {"authorization": f"Bearer {key}"}

    async def aclose(self) -> None:
        for client in list(self._load):
            await client.aclose()

    def _pick(self) -> httpx2.AsyncClient:
        """The least busy client; a new one (a new HTTP/2 connection) when all are full."""
        client = min(self._load, key=self._load.__getitem__)
        full = self._load[client] >= H2_STREAMS_PER_CONNECTION
        if full and self._new_client is not None and len(self._load) < self.settings.max_connections:
            client = self._new_client()
            self._load[client] = 0
            log.info("provider=%s: opening HTTP/2 connection #%d", self.name, len(self._load))
        return client

    async def _send(self, req: UpstreamRequest, client: httpx2.AsyncClient | None = None) -> httpx2.Response:
        client = client or self.client
        url = self.settings.base_url + req.path
        request = client.build_request(
            req.method, url, content=req.body, headers={**self.headers, **req.headers}
        )
        try:
            async with asyncio.timeout(self.settings.first_byte_timeout):
                return await client.send(request, stream=True)
        except TimeoutError:
            await self._cancel_orphan_streams(client)
            raise UpstreamTimeout(
                f"Provider '{self.name}' sent no answer within {self.settings.first_byte_timeout:g}s."
            ) from None
        except TRANSPORT_ERRORS as exc:
            raise map_transport_error(exc, self.name) from None
        except asyncio.CancelledError:
            await self._cancel_orphan_streams(client)
            raise

    async def _error_from(self, response: httpx2.Response) -> UpstreamError:
        body = bytearray()
        try:
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > MAX_ERROR_BODY:
                    break
        except httpx2.HTTPError:
            pass  # the status is what matters; a truncated body still maps
        finally:
            await response.aclose()
        headers = {k.lower(): v for k, v in response.headers.items()}
        keep = {k: v for k, v in headers.items() if k == "retry-after" or k.startswith("x-ratelimit-")}
        return self.dialect.error_from_status(response.status_code, bytes(body[:MAX_ERROR_BODY]), keep)

    def _retry_wait(self, error: ProxyError, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before the next attempt, or None: give up (the caller may fail over)."""
        if not error.retryable or attempt >= self.settings.max_retries:
            return None
        wait = retry_after_seconds(error.headers, time.time())
        if wait is None:
            wait = min(self.settings.retry_max_wait, 0.25 * (2**attempt))
        if wait > self.settings.retry_max_wait or time.monotonic() + wait > deadline:
            return None  # the provider asks for longer than we may wait: fail over now
        return wait

    async def _open(self, req: UpstreamRequest) -> httpx2.Response:
        """Send with bounded retries on 429, 5xx and transport errors (for plain JSON calls)."""
        deadline = time.monotonic() + self.settings.retry_max_wait * (self.settings.max_retries + 1)
        attempt = 0
        while True:
            try:
                response = await self._send(req, self._pick())
                if response.status_code < 300:
                    return response
                error: ProxyError = await self._error_from(response)
            except ProxyError as exc:
                error = exc
            wait = self._retry_wait(error, attempt, deadline)
            if wait is None:
                raise error
            log.info(
                "retrying provider=%s attempt=%d wait=%.2fs after %r", self.name, attempt + 1, wait, error
            )
            attempt += 1
            await asyncio.sleep(wait)

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A plain JSON call (e.g. ``/responses/compact``), with the same retries and mapping."""
        req = UpstreamRequest(path=path, body=orjson.dumps(body), headers={"accept": "application/json"})
        response = await self._open(req)
        try:
            data = await response.aread()
        except TRANSPORT_ERRORS as exc:
            raise map_transport_error(exc, self.name) from None
        finally:
            await response.aclose()
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
        deadline = time.monotonic() + self.settings.retry_max_wait * (self.settings.max_retries + 1)
        attempt = 0
        while True:
            try:
                async with contextlib.aclosing(self._attempt(req, call, response_id, created_at)) as events:
                    async for event in events:
                        yield event
                return
            except ProxyError as error:  # raised by _attempt only before its first event
                wait = self._retry_wait(error, attempt, deadline)
                if wait is None:
                    raise
                log.info(
                    "retrying provider=%s attempt=%d wait=%.2fs after %r", self.name, attempt + 1, wait, error
                )
                attempt += 1
                await asyncio.sleep(wait)

    async def _attempt(
        self, req: UpstreamRequest, call: UpstreamCall, response_id: str, created_at: int
    ) -> AsyncGenerator[Event, None]:
        """One upstream request, on the least busy connection (counted while it streams)."""
        client = self._pick()
        self._load[client] += 1
        try:
            events = self._attempt_on(client, req, call, response_id, created_at)
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event
        finally:
            self._load[client] -= 1

    async def _attempt_on(
        self,
        client: httpx2.AsyncClient,
        req: UpstreamRequest,
        call: UpstreamCall,
        response_id: str,
        created_at: int,
    ) -> AsyncGenerator[Event, None]:
        """Raises ``ProxyError`` only before its first event; after it, every failure ends the
        stream with the translator's ``response.failed``."""
        response = await self._send(req, client)
        if response.status_code >= 300:
            raise await self._error_from(response)
        translator = self.dialect.translator(response_id, call, created_at, random_id)
        chunks = response.aiter_raw().__aiter__()
        sent = 0
        complete = False  # the body was read to its end
        upstream_ended = False  # the upstream's own terminal event came
        try:
            failure: tuple[str, str] | None = None
            try:
                for event in translator.start():
                    self._check_order(event, sent)
                    sent += 1
                    yield event
                async with contextlib.aclosing(self._messages(chunks)) as messages:
                    async for message in messages:
                        for event in translator.feed(message):
                            if sent and event.type in _FIRST_TYPES:
                                raise _OutOfOrder(f"Provider '{self.name}' sent {event.type} twice.")
                            self._check_order(event, sent)
                            sent += 1
                            upstream_ended = upstream_ended or event.terminal
                            yield event
                        if translator.done:
                            break
                    else:
                        complete = True
            except _OutOfOrder as exc:
                failure = ("server_error", f"Impossible event order from provider: {exc}")
            except (SSEError, ValueError, KeyError, TypeError) as exc:
                # A stream we cannot read (bad SSE, bad JSON or UTF-8, impossible shapes).
                log.warning("malformed stream from provider=%s: %r", self.name, exc)
                if not sent:
                    raise UpstreamError(
                        f"Malformed stream from provider '{self.name}': {exc}.", retryable=True
                    ) from None
                failure = ("server_error", f"Malformed stream from provider: {exc}.")
            except UpstreamTimeout as stalled:  # the idle timeout of _messages
                if not sent:
                    raise
                failure = ("upstream_timeout", stalled.message)
            except TRANSPORT_ERRORS as exc:
                err = map_transport_error(exc, self.name)
                if not sent:
                    raise err from None
                code = "upstream_timeout" if isinstance(err, UpstreamTimeout) else "server_error"
                failure = (code, err.message)
            if failure is not None:
                log.warning("provider=%s failed after %d events: %s", self.name, sent, failure[1])
                for event in translator.fail(*failure):
                    yield event
            elif not sent and not translator.done:
                raise UpstreamUnavailable(
                    f"Provider '{self.name}' closed the stream before sending any event."
                )
            for event in translator.finish():
                yield event
        finally:
            if upstream_ended and not complete:
                # The terminal event came; the end of the body is normally right behind it.
                # Reading it (briefly) ends the stream cleanly instead of with a RST_STREAM.
                complete = await self._read_to_end(chunks)
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(*TRANSPORT_ERRORS):
                    await aclose()
            await response.aclose()
            if not complete:
                await self._cancel_orphan_streams(client)

    async def _read_to_end(self, chunks: Any, limit: float = 0.25, max_bytes: int = 64 * 1024) -> bool:
        seen = 0
        try:
            async with asyncio.timeout(limit):
                async for chunk in chunks:
                    seen += len(chunk)
                    if seen > max_bytes:
                        return False
            return True
        except (TimeoutError, *TRANSPORT_ERRORS):
            return False

    def _check_order(self, event: Event, sent: int) -> None:
        if not sent and event.type not in _FIRST_TYPES:
            raise UpstreamError(
                f"Provider '{self.name}' sent {event.type} before response.created.", retryable=True
            )

    async def _messages(self, chunks: Any) -> AsyncGenerator[SSEMessage, None]:
        """The SSE messages of a body's chunks (the caller owns and closes the chunk iterator).
        Silence longer than ``idle_timeout`` raises ``UpstreamTimeout``;
        it is timed per stream here (on HTTP/2 a connection-level read timeout never fires while
        other streams of the connection are busy). Data that is not UTF-8 raises ``ValueError``."""
        idle = self.settings.idle_timeout
        decoder = SSEDecoder()
        while True:
            try:
                async with asyncio.timeout(idle):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                messages = decoder.flush()
                for message in messages:
                    message.data.decode()
                for message in messages:
                    yield message
                return
            except TimeoutError:
                raise UpstreamTimeout(
                    f"Timed out talking to provider '{self.name}': no data for {idle:g}s (idle timeout)."
                ) from None
            for message in decoder.feed(chunk):
                message.data.decode()  # UnicodeDecodeError is a ValueError: malformed
                yield message

    async def _cancel_orphan_streams(self, client: httpx2.AsyncClient) -> None:
        """Reset the HTTP/2 streams httpcore gave up on without telling the server.

        httpcore closes an unfinished HTTP/2 response (client gone, timeout, cancel) without a
        RST_STREAM (encode/httpcore#943, #1022): the provider would go on generating for nobody
        and the connection's open-stream count drifts until it refuses new streams. A stream
        that h2 still counts as open but httpcore no longer tracks is such an orphan: reset it
        (CANCEL) and flush, bounded, without being interrupted by a second cancellation.
        """
        if not (self.settings.http2 or self.settings.http2_prior_knowledge):
            return
        pool = getattr(getattr(client, "_transport", None), "_pool", None)
        for pooled in list(getattr(pool, "connections", ())):
            conn = getattr(pooled, "_connection", None)
            state = getattr(conn, "_h2_state", None)
            tracked = getattr(conn, "_events", None)
            if conn is None or state is None or tracked is None or getattr(conn, "_write_exception", None):
                continue
            orphans = [sid for sid, st in list(state.streams.items()) if not st.closed and sid not in tracked]
            reset = 0
            for sid in orphans:
                try:
                    state.reset_stream(sid, ErrorCodes.CANCEL)
                    reset += 1
                except h2.exceptions.ProtocolError:
                    pass  # already closed, or the connection is gone
            if not reset:
                continue
            write = conn._write_outgoing_data(_FlushRequest(self.settings.write_timeout))
            flush = asyncio.ensure_future(write)
            flush.add_done_callback(_retrieve)
            try:
                async with asyncio.timeout(self.settings.write_timeout):
                    await asyncio.shield(flush)
            except (TimeoutError, asyncio.CancelledError, Exception):
                pass  # a connection that cannot write is closed by httpcore on its next use


_FIRST_TYPES = frozenset({"response.created", "response.queued"})


class _OutOfOrder(Exception):
    pass


class _FlushRequest:
    """The one thing httpcore's ``_write_outgoing_data`` reads from a request: its timeouts."""

    def __init__(self, write_timeout: float) -> None:
        self.extensions = {"timeout": {"write": write_timeout}}


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()
