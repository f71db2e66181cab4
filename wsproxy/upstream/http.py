"""HTTP providers: one pooled httpx2 client per provider, a dialect to speak its protocol.

What happens on one attempt:

1. The dialect builds the request; it is sent on the provider's pool (HTTP/2 multiplexes many
   client sessions over few connections). Waiting for the response headers is bounded by
   ``first_byte_timeout``.
2. A non-2xx answer is read (bounded) and mapped by the dialect. 429, 5xx and transport errors
   are retried here with backoff that honours ``Retry-After``, bounded in count and time; what is
   left is raised for the caller to fail over.
3. On 2xx, raw bytes are fed to the SSE decoder and the dialect's translator as they arrive; each
   resulting event is yielded at once. httpx2's read timeout is the idle timeout between chunks.
   Any failure from here on ends the stream with ``response.failed`` (never an exception).
4. ``finally`` closes the upstream response: when the client leaves, the generator is closed and
   the upstream sees its request cancelled (connection closed on HTTP/1.1, RST_STREAM on HTTP/2).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import httpx2
import orjson

from wsproxy.core.events import Event
from wsproxy.core.ids import random_id
from wsproxy.core.sse import SSEDecoder, SSEError
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


def map_transport_error(exc: Exception, provider: str) -> ProxyError:
    """httpx2's exceptions, mapped once, here."""
    if isinstance(exc, (httpx2.ConnectTimeout, httpx2.ReadTimeout, httpx2.WriteTimeout)):
        return UpstreamTimeout(f"Timed out talking to provider '{provider}': {type(exc).__name__}.")
    if isinstance(exc, httpx2.PoolTimeout):
        return UpstreamUnavailable(f"Provider '{provider}' has no free connection (pool exhausted).", status=503)
    if isinstance(exc, (httpx2.TransportError, OSError)):
        return UpstreamUnavailable(f"Could not reach provider '{provider}': {type(exc).__name__}: {exc}.")
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


class HTTPProvider:
    def __init__(
        self,
        settings: ProviderSettings,
        dialect: Dialect,
        client: httpx2.AsyncClient,
        api_key: str | None,
    ) -> None:
        self.name = settings.name
        self.kind = settings.kind
        self.settings = settings
        self.dialect = dialect
        self.client = client
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
        await self.client.aclose()

    async def _send(self, req: UpstreamRequest) -> httpx2.Response:
        url = self.settings.base_url + req.path
        request = self.client.build_request(
            req.method, url, content=req.body, headers={**self.headers, **req.headers}
        )
        try:
            async with asyncio.timeout(self.settings.first_byte_timeout):
                return await self.client.send(request, stream=True)
        except TimeoutError:
            raise UpstreamTimeout(
                f"Provider '{self.name}' sent no answer within {self.settings.first_byte_timeout:g}s."
            ) from None
        except httpx2.HTTPError as exc:
            raise map_transport_error(exc, self.name) from None
        except OSError as exc:
            raise map_transport_error(exc, self.name) from None

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

    async def _open(self, req: UpstreamRequest) -> httpx2.Response:
        """Send with bounded retries on 429, 5xx and transport errors."""
        deadline = time.monotonic() + self.settings.retry_max_wait * (self.settings.max_retries + 1)
        attempt = 0
        while True:
            try:
                response = await self._send(req)
                if response.status_code < 300:
                    return response
                error: ProxyError = await self._error_from(response)
            except ProxyError as exc:
                error = exc
            if not error.retryable or attempt >= self.settings.max_retries:
                raise error
            wait = retry_after_seconds(error.headers, time.time())
            if wait is None:
                wait = min(self.settings.retry_max_wait, 0.25 * (2**attempt))
            if wait > self.settings.retry_max_wait or time.monotonic() + wait > deadline:
                raise error  # the provider asks for longer than we may wait: fail over now
            log.info("retrying provider=%s attempt=%d wait=%.2fs after %r", self.name, attempt + 1, wait, error)
            attempt += 1
            await asyncio.sleep(wait)

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A plain JSON call (e.g. ``/responses/compact``), with the same retries and mapping."""
        req = UpstreamRequest(path=path, body=orjson.dumps(body), headers={"accept": "application/json"})
        response = await self._open(req)
        try:
            data = await response.aread()
        except (httpx2.HTTPError, OSError) as exc:
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

    async def stream(self, call: UpstreamCall, response_id: str, created_at: int) -> AsyncGenerator[Event, None]:
        req = self.dialect.build_request(call)
        response = await self._open(req)
        translator = self.dialect.translator(response_id, call, created_at, random_id)
        try:
            for event in translator.start():
                yield event
            decoder = SSEDecoder()
            try:
                async for chunk in response.aiter_raw():
                    for message in decoder.feed(chunk):
                        for event in translator.feed(message):
                            yield event
                    if translator.done:
                        break
                else:
                    for message in decoder.flush():
                        for event in translator.feed(message):
                            yield event
            except (SSEError, ValueError, KeyError, TypeError) as exc:
                # A stream we cannot read (bad SSE, bad JSON, impossible shapes) fails the response.
                log.warning("malformed stream from provider=%s: %r", self.name, exc)
                for event in translator.fail("server_error", f"Malformed stream from provider: {exc}."):
                    yield event
            except (httpx2.HTTPError, OSError) as exc:
                err = map_transport_error(exc, self.name)
                code = "upstream_timeout" if isinstance(err, UpstreamTimeout) else "server_error"
                for event in translator.fail(code, err.message):
                    yield event
            for event in translator.finish():
                yield event
        finally:
            await response.aclose()
