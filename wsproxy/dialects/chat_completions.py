"""The Chat Completions dialect: OpenAI-compatible ``/chat/completions`` servers (vLLM, SGLang,
llama.cpp, Ollama, Groq, OpenRouter, DeepSeek, OpenAI itself).

Role: ``build_request`` (mapping in :mod:`wsproxy.dialects.chat_request`, translation.md A), the
stream translator (translation.md B) and the HTTP error mapping (F: OpenAI envelope passed
through). Pure: no I/O, no clock (``completed_at`` comes from an injected clock, see
:class:`ChatStreamTranslator`), no environment, no settings beyond :class:`DialectOptions`.

Stream rules implemented here:

- ``delta.content`` -> ``output_text``; ``delta.refusal`` -> a ``refusal`` part;
  ``delta.reasoning_content`` / ``delta.reasoning`` -> a reasoning item with ``reasoning_text``;
  ``<think>...</think>`` at the start of ``content`` (``options.think_tags``) -> reasoning, with
  the tags found even when split across chunks.
- ``delta.tool_calls[]`` keyed by ``index``. Items stream strictly one after another: a call whose
  fragments arrive while another call is open is buffered, and becomes the open item once the open
  call's arguments form a complete JSON value (a closed JSON text cannot grow), or at the finish.
  A missing ``id`` gets a synthesized ``call_...`` id; flattened namespace names are mapped back to
  ``namespace`` + ``name``.
- usage from any chunk (``usage`` or Groq's ``x_groq.usage``); the finish is decided on
  ``data: [DONE]`` or EOF, not on ``finish_reason`` (the usage chunk comes after it).
- ``finish_reason``: ``stop``/``tool_calls``/``function_call`` (and unknown values) -> completed;
  ``length`` -> incomplete ``max_output_tokens``; ``content_filter`` -> incomplete
  ``content_filter``; ``error``/``abort`` -> failed. No finish_reason at [DONE]/EOF, an
  ``{"error": ...}`` chunk or a chunk that is not JSON -> failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from wsproxy.core.events import Event, usage_object
from wsproxy.core.ids import IdFactory
from wsproxy.core.sse import SSEMessage
from wsproxy.dialects.base import UpstreamCall, UpstreamRequest
from wsproxy.dialects.chat_request import build_chat_body
from wsproxy.dialects.common import (
    TranslatorBase,
    clock_from,
    int_field,
    is_complete_json,
    midstream_message,
    namespace_map,
    open_function_call,
    retry_headers,
    status_message,
)
from wsproxy.errors import UpstreamError, upstream_status_error

_INCOMPLETE = {
    "length": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "content_filter": "content_filter",
}
_FAILED = frozenset({"error", "abort"})


class _StreamError(Exception):
    """The upstream stream cannot be translated any further (ends the response as failed)."""


class ChatCompletionsDialect:
    name = "chat_completions"
    # Provider-specific create parameters this dialect maps (core.params.PROVIDER_PARAMS);
    # top_logprobs is not: logprobs are not translated into events.
    supported_params = frozenset({"stop", "seed", "logit_bias"})

    def build_request(self, call: UpstreamCall) -> UpstreamRequest:
        return UpstreamRequest(path="/chat/completions", body=orjson.dumps(build_chat_body(call)), headers={})

    def translator(
        self, response_id: str, call: UpstreamCall, created_at: int, ids: IdFactory
    ) -> ChatStreamTranslator:
        return ChatStreamTranslator(response_id, call, created_at, ids, clock=clock_from(call))

    def error_from_status(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
        return chat_error(status, body, headers)


def chat_error(status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
    """Non-2xx answer of a Chat server -> the error tree (OpenAI envelope passed through)."""
    try:
        parsed: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
        parsed = parsed[0]  # Google's OpenAI-compatible endpoint wraps the envelope in a list
    if not isinstance(parsed, dict) or parsed.get("error") is None:
        parsed = {"error": {"message": status_message(status, body)}}
    return upstream_status_error(status, parsed, retry_headers(headers))


class ThinkSplitter:
    """Splits a leading ``<think>...</think>`` out of streamed content.

    Only a tag at the very start of the content (after whitespace) opens reasoning: a model that
    writes "<think>" in the middle of its answer is quoting it. Text that could still become a
    tag is held back until the next piece decides it. ``feed``/``flush`` return
    ``("reasoning" | "text", piece)`` pairs with non-empty pieces.
    """

    OPEN = "<think>"
    CLOSE = "</think>"

    def __init__(self) -> None:
        self._state = "start"  # start | think | text
        self._buf = ""
        self._strip = False  # drop the whitespace that separates </think> from the answer

    def feed(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        self._buf += text
        while True:
            if self._state == "start":
                head = self._buf.lstrip()
                if head.startswith(self.OPEN):
                    self._buf = head[len(self.OPEN) :]
                    self._state = "think"
                    continue
                if self.OPEN.startswith(head):
                    return out  # empty, whitespace or a prefix of "<think>": wait for more
                self._state = "text"
            elif self._state == "think":
                end = self._buf.find(self.CLOSE)
                if end >= 0:
                    self._emit(out, "reasoning", self._buf[:end])
                    self._buf = self._buf[end + len(self.CLOSE) :]
                    self._state, self._strip = "text", True
                    continue
                keep = _partial_suffix(self._buf, self.CLOSE)
                self._emit(out, "reasoning", self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep :]
                return out
            else:
                if self._strip:
                    self._buf = self._buf.lstrip()
                    if not self._buf:
                        return out
                    self._strip = False
                self._emit(out, "text", self._buf)
                self._buf = ""
                return out

    def flush(self) -> list[tuple[str, str]]:
        """Whatever is held back, as what it is so far (the stream moved on or ended)."""
        out: list[tuple[str, str]] = []
        self._emit(out, "reasoning" if self._state == "think" else "text", self._buf)
        self._buf = ""
        if self._state == "start":
            self._state = "text"
        return out

    @staticmethod
    def _emit(out: list[tuple[str, str]], kind: str, piece: str) -> None:
        if piece:
            out.append((kind, piece))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


@dataclass(slots=True)
class _Call:
    index: int
    call_id: str = ""
    name: str = ""
    args: list[str] = field(default_factory=list)
    state: str = "pending"  # pending (buffered) | open (the builder's open item) | closed


class ChatStreamTranslator(TranslatorBase):
    """Chat Completions chunks in, Responses events out (one instance per response).

    ``clock`` gives ``completed_at``; without one (tests, or an edge that does not inject it)
    ``completed_at`` is ``created_at``.
    """

    def _setup(self, call: UpstreamCall) -> None:
        body = call.body
        self._names = namespace_map(body.get("tools"))
        self._think = ThinkSplitter() if call.options.think_tags else None
        self._calls: dict[int, _Call] = {}
        self._order: list[_Call] = []
        self._current: _Call | None = None
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        # self.upstream_id (set by TranslatorBase) will hold the provider's chatcmpl- id.

    # -- StreamTranslator -------------------------------------------------------------------

    _unit = "stream chunk"

    def feed(self, message: SSEMessage) -> list[Event]:
        if not self._b.finished and message.data.strip() == b"[DONE]":
            return self._terminal()
        return super().feed(message)

    def _event(self, chunk: dict[str, Any], message: SSEMessage) -> list[Event]:
        out: list[Event] = []
        try:
            self._chunk(chunk, out)
        except _StreamError as exc:
            out += self.fail("server_error", str(exc))
        return out

    def finish(self) -> list[Event]:
        if self._b.finished:
            return []
        return self._terminal()

    # -- chunks -----------------------------------------------------------------------------

    def _chunk(self, chunk: dict[str, Any], out: list[Event]) -> None:
        err = chunk.get("error")
        if err is not None:
            code, message = _error_fields(err)
            out += self.fail(code, message)
            return
        usage = chunk.get("usage")
        groq = chunk.get("x_groq")
        if not isinstance(usage, dict) and isinstance(groq, dict):
            usage = groq.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        if self.upstream_id is None and isinstance(chunk.get("id"), str):
            self.upstream_id = chunk["id"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            # We never ask for n > 1; a server that sends other choices anyway is ignored.
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta, out)
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self._finish(reason, out)

    def _delta(self, delta: dict[str, Any], out: list[Event]) -> None:
        reasoning = delta.get("reasoning_content")
        if not isinstance(reasoning, str) or not reasoning:
            # Some servers send both names with the same text: use one.
            reasoning = delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self._leave_call()
            out += self._b.reasoning_delta(reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            if self._think is None:
                self._emit(out, [("text", content)])
            else:
                self._emit(out, self._think.feed(content))
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._flush_think(out)
            self._leave_call()
            out += self._b.refusal_delta(refusal)
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list) and tool_calls:
            self._flush_think(out)
            for fragment in tool_calls:
                if isinstance(fragment, dict):
                    self._tool_fragment(fragment, out)

    def _emit(self, out: list[Event], pieces: list[tuple[str, str]]) -> None:
        for kind, piece in pieces:
            self._leave_call()
            out += self._b.reasoning_delta(piece) if kind == "reasoning" else self._b.text_delta(piece)

    def _flush_think(self, out: list[Event]) -> None:
        if self._think is not None:
            self._emit(out, self._think.flush())

    # -- tool calls -------------------------------------------------------------------------

    def _leave_call(self) -> None:
        """Text or reasoning is about to be emitted: the builder closes the open call."""
        if self._current is not None:
            self._current.state = "closed"
            self._current = None

    def _tool_fragment(self, fragment: dict[str, Any], out: list[Event]) -> None:
        index = fragment.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = self._guess_index(fragment)
        call = self._calls.get(index)
        if call is None:
            call = self._calls[index] = _Call(index)
            self._order.append(call)
        fn = fragment.get("function")
        fn = fn if isinstance(fn, dict) else {}
        call_id = fragment.get("id")
        if isinstance(call_id, str) and call_id and not call.call_id:
            call.call_id = call_id
        name = fn.get("name")
        if isinstance(name, str) and name and not call.name:
            call.name = name
        args = fn.get("arguments")
        if isinstance(args, dict):
            args = orjson.dumps(args).decode()  # a few servers send the arguments as an object
        piece = args if isinstance(args, str) else ""
        if call.state == "open":
            call.args.append(piece)
            out += self._b.arguments_delta(piece)
        elif call.state == "closed":
            if piece.strip():
                raise _StreamError(f"The upstream sent arguments for tool call {index} after it had ended.")
        else:
            call.args.append(piece)
        self._advance(out)

    def _guess_index(self, fragment: dict[str, Any]) -> int:
        """Servers that omit ``index``: a new ``id`` starts a new call, else the last call goes on."""
        call_id = fragment.get("id")
        if isinstance(call_id, str) and call_id:
            for call in self._order:
                if call.call_id == call_id:
                    return call.index
            return max(self._calls, default=-1) + 1
        return self._order[-1].index if self._order else 0

    def _advance(self, out: list[Event]) -> None:
        """Make the next buffered call the open item when the open one is certainly complete."""
        while True:
            nxt = next((c for c in self._order if c.state == "pending" and c.name), None)
            if nxt is None:
                return
            cur = self._current
            if cur is not None:
                if not is_complete_json("".join(cur.args)):
                    return
                out += self._b.close_item()
                cur.state = "closed"
                self._current = None
            self._open_call(nxt, out)

    def _open_call(self, call: _Call, out: list[Event]) -> None:
        if not call.name:
            raise _StreamError(f"The upstream sent tool call {call.index} without a function name.")
        if not call.call_id:
            call.call_id = self._ids("call")
        events = open_function_call(self._b, call.call_id, call.name, self._names)
        out += events
        call.state = "open"
        self._current = call
        out += self._b.arguments_delta("".join(call.args))

    # -- the end ----------------------------------------------------------------------------

    def _finish(self, reason: str, out: list[Event]) -> None:
        """finish_reason: emit what is buffered and close every item (the terminal event waits
        for [DONE]/EOF, because the usage chunk comes after this one)."""
        if self._finish_reason is not None:
            return
        self._finish_reason = reason
        self._flush_think(out)
        for call in self._order:
            if call.state == "pending":
                self._open_call(call, out)  # the builder closes the previous item as completed
        for call in self._order:
            call.state = "closed"
        self._current = None
        out += self._b.close_item("incomplete" if reason in _INCOMPLETE else "completed")

    def _terminal(self) -> list[Event]:
        reason = self._finish_reason
        if reason is None:
            return self.fail(
                "server_error", "The upstream stream ended before the model finished (no finish_reason)."
            )
        usage = self._usage_object()
        if reason in _INCOMPLETE:
            return self._b.incomplete(_INCOMPLETE[reason], usage)
        if reason in _FAILED:
            return self.fail(
                "server_error", f"The upstream ended the generation with finish_reason '{reason}'."
            )
        return self._complete(usage)

    def _usage_object(self) -> dict[str, Any] | None:
        u = self._usage
        if u is None:
            return None
        prompt_details = u.get("prompt_tokens_details")
        completion_details = u.get("completion_tokens_details")
        return usage_object(
            int_field(u.get("prompt_tokens")),
            int_field(u.get("completion_tokens")),
            cached_tokens=int_field(prompt_details.get("cached_tokens"))
            if isinstance(prompt_details, dict)
            else 0,
            reasoning_tokens=(
                int_field(completion_details.get("reasoning_tokens"))
                if isinstance(completion_details, dict)
                else 0
            ),
        )


def _error_fields(err: Any) -> tuple[str, str]:
    """A mid-stream ``{"error": ...}`` -> (code, message) for ``response.failed``."""
    if isinstance(err, dict):
        code = err.get("code")
        message = err.get("message")
        return code if isinstance(code, str) and code else "server_error", midstream_message(message)
    return "server_error", midstream_message(err)
