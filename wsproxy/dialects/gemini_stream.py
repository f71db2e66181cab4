"""The Gemini dialect (``POST {base}/models/{model}:streamGenerateContent?alt=sse``, base URL
``https://generativelanguage.googleapis.com/v1beta``).

Role: ``build_request`` (mapping in :mod:`wsproxy.dialects.gemini_request`, gemini.md 7.1), the
stream translator (gemini.md 4, 7.2, 7.3) and the error mapping (6). Pure: no I/O, no clock
(``completed_at`` from an injected clock, as in the other dialects), no environment. The upstream
layer adds ``x-goog-api-key``. The upstream is always streamed, JSON clients get the aggregate
(as with Chat and Anthropic upstreams).

Stream rules. Every SSE event is a whole ``GenerateContentResponse`` (no event names, no
``[DONE]``; the stream ends at EOF) whose ``candidates[0].content.parts`` hold only new content:

==========================  ==================================================================
``thought: true`` part      reasoning item, ``reasoning_summary_text.delta`` (Gemini returns
                            thought summaries); a signature on the run -> ``{"on":"thought"}``
text part                   message item, ``output_text.delta``; a signature on it is held
                            until the message closes, then a reasoning item right after it
                            carries ``{"on":"text"}`` (``empty`` for a signature-only part)
``functionCall`` part       ``function_call`` item with ``call_id`` = Gemini's ``id`` or a
                            made-up ``call_gemini_...``, arguments = ``args`` as JSON in one
                            delta; its signature -> ``{"on":"call"}`` in the open reasoning
                            item, or a new empty one just before the call
other parts                 ignored (inline data, code execution: never requested)
``usageMetadata``           running totals: the last one wins
``promptFeedback``          prompt blocked: a refusal message naming ``blockReason``, then
  ``.blockReason``          ``response.incomplete`` (``content_filter``)
``finishReason``            saved; the terminal event is decided at EOF per :data:`FINISH`
``{"error": ...}`` event    ``response.failed`` with the mapped code
==========================  ==================================================================

EOF without a ``finishReason`` (and no block) -> failed.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from wsproxy.core.events import Event, usage_object
from wsproxy.core.ids import IdFactory
from wsproxy.core.sse import SSEMessage
from wsproxy.dialects.base import UpstreamCall, UpstreamRequest
from wsproxy.dialects.common import (
    TranslatorBase,
    clock_from,
    int_field,
    midstream_message,
    retry_headers,
    status_message,
    upstream_error,
)
from wsproxy.dialects.gemini_request import (
    SYNTH_CALL_PREFIX,
    build_gemini_body,
    declared_names,
    encode_signatures,
    model_path,
)
from wsproxy.errors import UpstreamError

# finishReason -> ("completed" | "incomplete" | "failed", incomplete reason or error code).
_CONTENT_FILTER = (
    "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "LANGUAGE",
    "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION",
)  # fmt: skip
_FAILED = (
    "MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS", "OTHER",
    "FINISH_REASON_UNSPECIFIED", "NO_IMAGE", "IMAGE_OTHER",
)  # fmt: skip
# finishReason -> ("completed" | "incomplete" | "failed", incomplete reason or error code).
# Unknown (newer) reasons complete. LANGUAGE and the failed rows are design choices (gemini.md 7.3).
FINISH: dict[str, tuple[str, str | None]] = {
    "STOP": ("completed", None),
    "MAX_TOKENS": ("incomplete", "max_output_tokens"),
    **{reason: ("incomplete", "content_filter") for reason in _CONTENT_FILTER},
    **{reason: ("failed", "server_error") for reason in _FAILED},
}

# google.rpc status -> Responses error code, for errors inside a stream.
STATUS_CODES = {
    "RESOURCE_EXHAUSTED": "rate_limit_exceeded",
    "UNAVAILABLE": "server_is_overloaded",
    "DEADLINE_EXCEEDED": "upstream_timeout",
    "INVALID_ARGUMENT": "invalid_request_error",
    "INTERNAL": "server_error",
}

_DELAY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)s\s*$")


class GeminiDialect:
    name = "gemini"
    # generationConfig.stopSequences and .seed (wsproxy.core.params: the others are refused).
    supported_params = frozenset({"stop", "seed"})

    def build_request(self, call: UpstreamCall) -> UpstreamRequest:
        return UpstreamRequest(path=model_path(call.model), body=orjson.dumps(build_gemini_body(call)))

    def translator(
        self, response_id: str, call: UpstreamCall, created_at: int, ids: IdFactory
    ) -> GeminiStreamTranslator:
        return GeminiStreamTranslator(response_id, call, created_at, ids, clock=clock_from(call))

    def error_from_status(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
        return gemini_error(status, body, headers)


# -- errors ---------------------------------------------------------------------------------------


def _google_error(body: bytes) -> dict[str, Any]:
    """``{"error": {...}}``, or the one-element array the non-SSE endpoints wrap it in."""
    try:
        parsed: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return {}
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]
    err = parsed.get("error") if isinstance(parsed, dict) else None
    return err if isinstance(err, dict) else {}


def retry_delay(err: dict[str, Any]) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"retryDelay": "12s"`` / ``"0.5s"``)."""
    details = err.get("details")
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _reasons(err: dict[str, Any]) -> set[str]:
    details = err.get("details")
    return {
        str(d["reason"])
        for d in (details if isinstance(details, list) else [])
        if isinstance(d, dict) and isinstance(d.get("reason"), str)
    }


def gemini_error(status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
    """Google's ``{"error":{"code","message","status","details"}}`` -> the error tree (gemini.md 6).

    A ``RetryInfo`` delay becomes ``retry-after`` (whole seconds, rounded up) when the provider
    sent no such header: the provider-level retry waits that long, and a client that gets the
    429 sees it."""
    err = _google_error(body)
    gstatus = str(err.get("status") or "")
    message = err.get("message")
    if not isinstance(message, str) or not message:
        message = status_message(status, body)
    hdrs = retry_headers(headers)
    delay = retry_delay(err)
    if delay is not None and "retry-after" not in hdrs:
        hdrs["retry-after"] = str(math.ceil(delay))
    low = message.lower()
    if "API_KEY_INVALID" in _reasons(err) or status == 401 or (status == 400 and "api key not valid" in low):
        # Google answers a bad key with 400: say the proxy's key was refused, without key details.
        return upstream_error(
            "The upstream provider rejected the proxy's credentials.",
            401,
            "invalid_request_error",
            "upstream_authentication_error",
            hdrs,
        )
    if status == 403 or gstatus == "PERMISSION_DENIED":
        return upstream_error(
            "The upstream provider rejected the proxy's permissions (HTTP 403).",
            403,
            "invalid_request_error",
            "upstream_authentication_error",
            hdrs,
        )
    if status == 404 or gstatus == "NOT_FOUND":
        if "model" in low:
            return upstream_error(message, 404, "invalid_request_error", "model_not_found", hdrs, "model")
        return upstream_error(message, 404, "invalid_request_error", "not_found", hdrs)
    if status == 429 or gstatus == "RESOURCE_EXHAUSTED":
        return upstream_error(message, 429, "rate_limit_error", "rate_limit_exceeded", hdrs)
    if status == 400:
        # Codex and others key on this code to compact the conversation.
        too_long = "input token count" in low and "exceeds the maximum" in low
        code = "context_length_exceeded" if too_long else "invalid_request_error"
        if gstatus == "FAILED_PRECONDITION":
            code = "failed_precondition"
        return upstream_error(message, 400, "invalid_request_error", code, hdrs)
    if status == 503 or gstatus == "UNAVAILABLE":
        return upstream_error(message, 503, "server_error", "server_is_overloaded", hdrs)
    if status == 504 or gstatus == "DEADLINE_EXCEEDED":
        return upstream_error(message, 504, "server_error", "upstream_timeout", hdrs)
    if status >= 500:
        return upstream_error(message, status, "server_error", "server_error", hdrs)
    return upstream_error(message, status, "invalid_request_error", "upstream_error", hdrs)


# -- stream ---------------------------------------------------------------------------------------


class GeminiStreamTranslator(TranslatorBase):
    """Gemini ``GenerateContentResponse`` chunks in, Responses events out (one per response)."""

    def _setup(self, call: UpstreamCall) -> None:
        body = call.body
        self._names = declared_names(body.get("tools"))
        self._finish: str | None = None
        self._finish_message: str | None = None
        self._blocked: str | None = None
        self._usage: dict[str, Any] | None = None
        # Signature entries of the open reasoning item, and its thought text so far.
        self._sigs: list[dict[str, Any]] = []
        self._thought: list[str] = []
        # Text-part signatures waiting for the open message to close: (sig, part was empty).
        self._text_sigs: list[tuple[str, bool]] = []
        # self.upstream_id (set by TranslatorBase) will hold Gemini's responseId.

    def _event(self, chunk: dict[str, Any], message: SSEMessage) -> list[Event]:
        if "error" in chunk:
            err = chunk["error"] if isinstance(chunk["error"], dict) else {}
            return self.fail(
                STATUS_CODES.get(str(err.get("status")), "server_error"),
                midstream_message(err.get("message")),
            )
        if isinstance(chunk.get("responseId"), str):
            self.upstream_id = chunk["responseId"]
        if isinstance(chunk.get("usageMetadata"), dict):
            self._usage = chunk["usageMetadata"]  # running totals: the last one wins
        feedback = chunk.get("promptFeedback")
        if isinstance(feedback, dict) and isinstance(feedback.get("blockReason"), str):
            self._blocked = feedback["blockReason"]
        candidates = chunk.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else None
        if not isinstance(candidate, dict):
            return []
        out: list[Event] = []
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, dict):
                out += self._part(part)
        if isinstance(candidate.get("finishReason"), str):
            self._finish = candidate["finishReason"]
            if isinstance(candidate.get("finishMessage"), str):
                self._finish_message = candidate["finishMessage"]
        return out

    def finish(self) -> list[Event]:
        if self._b.finished:
            return []
        if self._blocked is not None and self._finish is None:
            events = self._flush_text_sigs()
            events += self._b.refusal_delta(
                f"Gemini blocked this request (promptFeedback.blockReason: {self._blocked})."
            )
            return events + self._b.incomplete("content_filter", self._usage_object())
        if self._finish is None:
            return self.fail("server_error", "The upstream stream ended before a finishReason.")
        events = self._flush_text_sigs()
        status, detail = FINISH.get(self._finish, ("completed", None))
        usage = self._usage_object()
        if status == "incomplete":
            return events + self._b.incomplete(detail or "content_filter", usage)
        if status == "failed":
            message = self._finish_message or f"Gemini stopped with finishReason {self._finish}."
            return events + self._b.fail(detail or "server_error", message, usage)
        return events + self._complete(usage)

    # -- parts ------------------------------------------------------------------------------

    def _part(self, part: dict[str, Any]) -> list[Event]:
        sig = part.get("thoughtSignature")
        sig = sig if isinstance(sig, str) and sig else None
        if isinstance(part.get("functionCall"), dict):
            return self._function_call(part["functionCall"], sig)
        text = part.get("text")
        if part.get("thought") is True:
            events = self._flush_text_sigs()
            if isinstance(text, str) and text:
                if self._b.open_item_type != "reasoning":
                    self._sigs, self._thought = [], []
                elif any(e["on"] == "thought" for e in self._sigs):
                    # A signature closes a thought run: it verifies exactly the text before it.
                    events += self._b.open_reasoning()
                    self._sigs, self._thought = [], []
                self._thought.append(text)
                events += self._b.reasoning_summary_delta(text)
            if sig is not None:
                events += self._reasoning_for_signature()
                self._sigs = [e for e in self._sigs if e["on"] != "thought"]
                self._sigs.append({"on": "thought", "text": "".join(self._thought), "sig": sig})
                self._b.set_reasoning_encrypted(encode_signatures(self._sigs))
            return events
        if not isinstance(text, str):
            return []
        events = []
        if text:
            if self._b.open_item_type != "message":
                events += self._flush_text_sigs()
            events += self._b.text_delta(text)
        if sig is not None:
            self._text_sigs.append((sig, not text))
            if self._b.open_item_type != "message":
                events += self._flush_text_sigs()
        return events

    def _function_call(self, fc: dict[str, Any], sig: str | None) -> list[Event]:
        events = self._flush_text_sigs()
        raw_id = fc.get("id")
        call_id = raw_id if isinstance(raw_id, str) and raw_id else self._ids(SYNTH_CALL_PREFIX)
        if sig is not None:
            events += self._reasoning_for_signature()
            self._sigs.append({"on": "call", "call_id": call_id, "sig": sig})
            self._b.set_reasoning_encrypted(encode_signatures(self._sigs))
        name = str(fc.get("name") or "")
        namespace, client_name = self._names.get(name, (None, name))
        events += self._b.function_call(call_id, client_name, namespace)
        args = fc.get("args")
        events += self._b.arguments_delta(orjson.dumps(args if isinstance(args, dict) else {}).decode())
        return events

    def _reasoning_for_signature(self) -> list[Event]:
        """The reasoning item a signature goes into: the open one, or a new empty one."""
        if self._b.open_item_type == "reasoning":
            return []
        self._sigs, self._thought = [], []
        return self._b.open_reasoning()

    def _flush_text_sigs(self) -> list[Event]:
        """Signatures of text parts, in a reasoning item right after their message."""
        if not self._text_sigs:
            return []
        events = self._reasoning_for_signature()
        for sig, empty in self._text_sigs:
            self._sigs.append({"on": "text", "sig": sig, "empty": empty})
        self._text_sigs = []
        self._b.set_reasoning_encrypted(encode_signatures(self._sigs))
        return events

    # -- usage ------------------------------------------------------------------------------

    def _usage_object(self) -> dict[str, Any] | None:
        u = self._usage
        if u is None:
            return None
        thoughts = int_field(u.get("thoughtsTokenCount"))
        return usage_object(
            int_field(u.get("promptTokenCount")) + int_field(u.get("toolUsePromptTokenCount")),
            # candidatesTokenCount excludes thinking; Responses counts reasoning in output_tokens.
            int_field(u.get("candidatesTokenCount")) + thoughts,
            cached_tokens=int_field(u.get("cachedContentTokenCount")),
            reasoning_tokens=thoughts,
        )
