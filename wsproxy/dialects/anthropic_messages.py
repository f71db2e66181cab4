"""The Anthropic Messages dialect (``POST {base}/messages``, base URL ending in ``/v1``).

Role: ``build_request`` (mapping in :mod:`wsproxy.dialects.anthropic_request`, translation.md C),
the stream translator (D, E) and the HTTP error mapping (F). Pure: no I/O, no clock
(``completed_at`` from an injected clock, as in the Chat dialect), no environment. The upstream
layer adds ``x-api-key``; this module only sets ``anthropic-version``.

Stream rules (one Anthropic content block at a time):

==========================  ==================================================================
``message_start``           ``response.created`` + ``in_progress`` (when not already sent);
                            input usage saved; Anthropic's ``msg_`` id kept as ``upstream_id``
text block                  message item (opened on the first text, kept open across text
                            blocks); each block is one ``output_text`` part, closed at its
                            ``content_block_stop``
tool_use block              ``function_call`` item; ``input_json_delta`` -> arguments deltas
thinking block              reasoning item with a ``reasoning_text`` part; at its stop the text
                            and ``signature`` go into ``encrypted_content`` (``anthropic:``
                            envelope, see ``anthropic_request.encode_thinking``)
redacted_thinking block     reasoning item with only ``encrypted_content``
``citations_delta``         dropped (annotations are not translated)
server-tool blocks          ignored (this dialect never declares server tools)
``message_delta``           ``stop_reason`` + cumulative usage saved
``message_stop``            terminal event per :data:`STOP_REASONS`
``ping``, unknown events    ignored (Anthropic may add event types)
``error``                   ``response.failed`` with the mapped code
==========================  ==================================================================

Items other than the message are closed when the next item opens or at the end, never at their
``content_block_stop``: a block cut off by ``max_tokens`` then ends with status ``incomplete``.
EOF after ``message_delta`` ends as its stop_reason says; EOF before it -> failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from wsproxy.core.events import Event, usage_object
from wsproxy.core.ids import IdFactory
from wsproxy.core.sse import SSEMessage
from wsproxy.dialects.anthropic_request import build_anthropic_body, encode_redacted, encode_thinking
from wsproxy.dialects.base import UpstreamCall, UpstreamRequest
from wsproxy.dialects.common import (
    TranslatorBase,
    clock_from,
    int_field,
    midstream_message,
    namespace_map,
    open_function_call,
    retry_headers,
    status_message,
    upstream_error,
)
from wsproxy.errors import UpstreamError

# stop_reason -> incomplete_details.reason (None: completed). Unknown reasons complete.
STOP_REASONS: dict[str, str | None] = {
    "end_turn": None,
    "stop_sequence": None,
    "tool_use": None,
    "max_tokens": "max_output_tokens",
    "model_context_window_exceeded": "max_output_tokens",  # no exact Responses reason
    "pause_turn": "max_output_tokens",  # server tools only; the turn is unfinished
    "refusal": "content_filter",
}

# Anthropic error type (in-stream ``error`` events) -> Responses error code.
STREAM_ERROR_CODES = {
    "overloaded_error": "server_is_overloaded",
    "api_error": "server_error",
    "rate_limit_error": "rate_limit_exceeded",
    "timeout_error": "server_error",
    "invalid_request_error": "invalid_request_error",
}


class AnthropicMessagesDialect:
    name = "anthropic"
    # Provider-specific create parameters this dialect maps: stop -> stop_sequences.
    supported_params = frozenset({"stop"})

    def build_request(self, call: UpstreamCall) -> UpstreamRequest:
        return UpstreamRequest(
            path="/messages",
            body=orjson.dumps(build_anthropic_body(call)),
            headers={"anthropic-version": call.options.anthropic_version},
        )

    def translator(
        self, response_id: str, call: UpstreamCall, created_at: int, ids: IdFactory
    ) -> AnthropicStreamTranslator:
        return AnthropicStreamTranslator(response_id, call, created_at, ids, clock=clock_from(call))

    def error_from_status(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
        return anthropic_error(status, body, headers)


def anthropic_error(status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
    """Anthropic's ``{"type":"error","error":{"type","message"}}`` -> the error tree (table F)."""
    try:
        parsed: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    etype = err.get("type") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    if not isinstance(message, str) or not message:
        message = status_message(status, body)
    hdrs = retry_headers(headers)
    if status == 529 or etype == "overloaded_error":
        return upstream_error(message, 503, "server_error", "server_is_overloaded", hdrs)
    if status in (401, 403):
        # The provider refused the proxy's own key: say so without repeating key details.
        what = "credentials" if status == 401 else "permissions"
        return upstream_error(
            f"The upstream provider rejected the proxy's {what} (HTTP {status}).",
            status,
            "invalid_request_error",
            "upstream_authentication_error",
            hdrs,
        )
    if status == 404:
        if "model" in message.lower():
            return upstream_error(message, 404, "invalid_request_error", "model_not_found", hdrs, "model")
        return upstream_error(message, 404, "invalid_request_error", "not_found", hdrs)
    if status == 413:
        return upstream_error(message, 413, "invalid_request_error", "request_too_large", hdrs)
    if status == 429:
        return upstream_error(message, 429, "rate_limit_error", "rate_limit_exceeded", hdrs)
    if status == 400:
        # Codex and others key on this code to compact the conversation.
        too_long = "prompt is too long" in message.lower()
        code = "context_length_exceeded" if too_long else "invalid_request_error"
        return upstream_error(message, 400, "invalid_request_error", code, hdrs)
    if status == 504:
        return upstream_error(message, 504, "server_error", "upstream_timeout", hdrs)
    if status >= 500:
        return upstream_error(message, status, "server_error", "server_error", hdrs)
    return upstream_error(
        message, status, "invalid_request_error", etype if isinstance(etype, str) else "upstream_error", hdrs
    )


@dataclass(slots=True)
class _Block:
    kind: str  # text | tool_use | thinking | redacted_thinking | ignored
    thinking: list[str] = field(default_factory=list)
    signature: list[str] = field(default_factory=list)
    input: Any = None  # tool_use input given whole in content_block_start
    streamed_args: bool = False


class AnthropicStreamTranslator(TranslatorBase):
    """Anthropic stream events in, Responses events out (one instance per response)."""

    def _setup(self, call: UpstreamCall) -> None:
        body = call.body
        self._names = namespace_map(body.get("tools"))
        self._blocks: dict[int, _Block] = {}
        self._stop_reason: str | None = None
        self._usage: dict[str, int] = {}
        # self.upstream_id (set by TranslatorBase) will hold Anthropic's msg_ id.

    def finish(self) -> list[Event]:
        if self._b.finished:
            return []
        if self._stop_reason is None:
            return self.fail("server_error", "The upstream stream ended before the message was finished.")
        return self._terminal()

    def _event(self, event: dict[str, Any], message: SSEMessage) -> list[Event]:
        kind = event.get("type") or message.event
        if kind == "message_start":
            return self._message_start(event)
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "content_block_delta":
            return self._block_delta(event)
        if kind == "content_block_stop":
            return self._block_stop(event)
        if kind == "message_delta":
            return self._message_delta(event)
        if kind == "message_stop":
            return self._terminal()
        if kind == "error":
            err = event.get("error")
            err = err if isinstance(err, dict) else {}
            etype = err.get("type")
            return self.fail(
                STREAM_ERROR_CODES.get(etype, "server_error") if isinstance(etype, str) else "server_error",
                midstream_message(err.get("message")),
            )
        return []  # ping and event types added after this was written

    # -- events -----------------------------------------------------------------------------

    def _message_start(self, event: dict[str, Any]) -> list[Event]:
        message = event.get("message")
        if isinstance(message, dict):
            if isinstance(message.get("id"), str):
                self.upstream_id = message["id"]
            self._save_usage(message.get("usage"))
        return self._b.start()

    def _block_start(self, event: dict[str, Any]) -> list[Event]:
        index = event.get("index")
        block = event.get("content_block")
        if not isinstance(index, int) or not isinstance(block, dict):
            return []
        kind = block.get("type")
        out: list[Event] = []
        if kind == "text":
            self._blocks[index] = _Block("text")
            text = block.get("text")
            if isinstance(text, str) and text:
                out += self._b.text_delta(text)
        elif kind == "tool_use":
            self._blocks[index] = _Block("tool_use", input=block.get("input"))
            out += open_function_call(
                self._b, str(block.get("id") or ""), str(block.get("name") or ""), self._names
            )
        elif kind == "thinking":
            state = self._blocks[index] = _Block("thinking")
            out += self._b.open_reasoning()
            text = block.get("thinking")
            if isinstance(text, str) and text:
                state.thinking.append(text)
                out += self._b.reasoning_delta(text)
            if isinstance(block.get("signature"), str):
                state.signature.append(block["signature"])
        elif kind == "redacted_thinking":
            self._blocks[index] = _Block("redacted_thinking")
            out += self._b.open_reasoning()
            if isinstance(block.get("data"), str):
                self._b.set_reasoning_encrypted(encode_redacted(block["data"]))
        else:
            self._blocks[index] = _Block("ignored")
        return out

    def _block(self, event: dict[str, Any]) -> _Block | None:
        """The block an event's ``index`` names (content_block_stop does not say its type)."""
        index = event.get("index")
        return self._blocks.get(index) if isinstance(index, int) else None

    def _block_delta(self, event: dict[str, Any]) -> list[Event]:
        block = self._block(event)
        delta = event.get("delta")
        if block is None or not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta" and block.kind == "text":
            return self._b.text_delta(str(delta.get("text") or ""))
        if kind == "input_json_delta" and block.kind == "tool_use":
            block.streamed_args = True
            return self._b.arguments_delta(str(delta.get("partial_json") or ""))
        if kind == "thinking_delta" and block.kind == "thinking":
            text = str(delta.get("thinking") or "")
            block.thinking.append(text)
            return self._b.reasoning_delta(text)
        if kind == "signature_delta" and block.kind == "thinking":
            block.signature.append(str(delta.get("signature") or ""))
        return []

    def _block_stop(self, event: dict[str, Any]) -> list[Event]:
        block = self._block(event)
        if block is None:
            return []
        if block.kind == "text":
            return self._b.end_text_part()
        if (
            block.kind == "tool_use"
            and not block.streamed_args
            and isinstance(block.input, dict)
            and block.input
        ):
            return self._b.arguments_delta(orjson.dumps(block.input).decode())
        if block.kind == "thinking":
            signature = "".join(block.signature)
            if signature:
                self._b.set_reasoning_encrypted(encode_thinking("".join(block.thinking), signature))
        return []

    def _message_delta(self, event: dict[str, Any]) -> list[Event]:
        delta = event.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
            self._stop_reason = delta["stop_reason"]
        self._save_usage(event.get("usage"))
        return []

    def _terminal(self) -> list[Event]:
        reason = self._stop_reason
        if reason is None:
            return self.fail("server_error", "The upstream ended the message without a stop_reason.")
        usage = self._usage_object()
        incomplete = STOP_REASONS.get(reason)
        if incomplete is not None:
            return self._b.incomplete(incomplete, usage)
        return self._complete(usage)

    # -- usage ------------------------------------------------------------------------------

    def _save_usage(self, usage: Any) -> None:
        """message_start has the input side, message_delta the cumulative output (and sometimes
        updated input counts): later non-null values win."""
        if not isinstance(usage, dict):
            return
        for key in (
            "input_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "output_tokens",
        ):
            if usage.get(key) is not None:
                self._usage[key] = int_field(usage[key])
        details = usage.get("output_tokens_details")
        if isinstance(details, dict) and details.get("reasoning_tokens") is not None:
            self._usage["reasoning_tokens"] = int_field(details["reasoning_tokens"])

    def _usage_object(self) -> dict[str, Any] | None:
        u = self._usage
        if not u:
            return None
        cache_read = u.get("cache_read_input_tokens", 0)
        cache_write = u.get("cache_creation_input_tokens", 0)
        return usage_object(
            # Anthropic's input_tokens excludes the cached part; Responses' includes it.
            u.get("input_tokens", 0) + cache_read + cache_write,
            u.get("output_tokens", 0),
            cached_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=u.get("reasoning_tokens", 0),
        )
