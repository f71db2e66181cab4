"""The dialect interface shared by every kind of upstream.

A dialect has two halves:

- ``build_request(call)``: a Responses request (already expanded: ``call.input`` holds the
  effective input items, ``previous_response_id`` resolved by the proxy) -> the upstream HTTP
  request (path, headers, JSON body bytes).
- ``translator(...)``: a :class:`StreamTranslator` fed the upstream's SSE messages one at a time,
  returning Responses events. It owns the Response snapshot, so that when the upstream dies it
  can end the stream with exactly one terminal event (``fail``), and at EOF (``finish``) it
  decides between completed, incomplete and failed.

``error_from_status`` maps a non-2xx upstream answer into the one error tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from wsproxy.core.events import Event
from wsproxy.core.ids import IdFactory
from wsproxy.core.sse import SSEMessage
from wsproxy.errors import UpstreamError


@dataclass(frozen=True, slots=True)
class DialectOptions:
    """Per-provider knobs a dialect needs (all from the settings)."""

    # Chat Completions: name of the output cap field ("max_tokens" for most OSS servers,
    # "max_completion_tokens" for OpenAI).
    max_tokens_field: str = "max_tokens"
    # Chat Completions: role used for instructions/system messages ("system" or "developer").
    system_role: str = "system"
    # Chat Completions: send reasoning.effort as reasoning_effort.
    send_reasoning_effort: bool = True
    # Chat Completions: parse <think>...</think> in content as reasoning.
    think_tags: bool = True
    # Anthropic: max_tokens when the request has no max_output_tokens (the field is required).
    default_max_tokens: int = 4096
    anthropic_version: str = "2023-06-01"
    # Drop hosted (non-function) tools instead of rejecting them with a 400.
    drop_unsupported_tools: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class UpstreamCall:
    """What a dialect translates: the request body (Responses fields), the effective input
    items, and the model name as the upstream knows it."""

    body: dict[str, Any]
    input: list[dict[str, Any]]
    model: str
    options: DialectOptions = field(default_factory=DialectOptions)
    # The response's trace span, opaque here: the upstream makes its attempt spans under it.
    trace: Any = None


@dataclass(slots=True)
class UpstreamRequest:
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"


class StreamTranslator(Protocol):
    """Upstream SSE messages in, Responses events out. One instance per response."""

    @property
    def response(self) -> dict[str, Any]:
        """The Response snapshot (final once ``done``)."""
        ...

    @property
    def done(self) -> bool:
        """True once the terminal event was returned."""
        ...

    @property
    def started_output(self) -> bool:
        """True once an event carrying model output was returned (no failover after this)."""
        ...

    def start(self) -> list[Event]:
        """Events to send as soon as the upstream accepted the request (created, in_progress)."""
        ...

    def feed(self, message: SSEMessage) -> list[Event]: ...

    def finish(self) -> list[Event]:
        """The upstream stream ended (EOF): close open items and end with one terminal event."""
        ...

    def fail(self, code: str, message: str) -> list[Event]:
        """The upstream died or misbehaved: ``response.failed`` (no-op when already done)."""
        ...


class Dialect(Protocol):
    name: str
    # The provider-specific create parameters (wsproxy.core.params.PROVIDER_PARAMS) this dialect
    # maps; any other one given is refused with a 400 naming it and the provider.
    supported_params: frozenset[str]

    def build_request(self, call: UpstreamCall) -> UpstreamRequest: ...

    def translator(
        self, response_id: str, call: UpstreamCall, created_at: int, ids: IdFactory
    ) -> StreamTranslator: ...

    def error_from_status(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError: ...
