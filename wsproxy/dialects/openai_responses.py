"""The OpenAI-native dialect: the upstream already speaks the Responses API.

Requests are forwarded as the client sent them (after the proxy's own fields are removed and the
model renamed for the upstream). Upstream events are forwarded **without re-encoding**: the SSE
``data`` bytes become the event's bytes. The translator only peeks at what it must:

- the event type (the SSE ``event:`` line, or the JSON ``type`` when a server omits it);
- ``response.created`` (small) for the response snapshot, ``response.output_item.done`` for the
  items so far, and the terminal event for the final response (to store and cache it);
- everything else (the deltas) is forwarded as received, after a check that it is one valid
  JSON object: a broken event ends the response with one ``response.failed``.

Because the translator counts events, it can end a broken stream with a ``response.failed`` whose
``sequence_number`` continues the upstream's.
"""

from __future__ import annotations

from typing import Any

import orjson

from wsproxy.core.events import LEGACY_TERMINAL_TYPES, TERMINAL_TYPES, Event, failed_ending
from wsproxy.core.ids import IdFactory
from wsproxy.core.sse import SSEMessage
from wsproxy.dialects.base import UpstreamCall, UpstreamRequest
from wsproxy.errors import UpstreamError, upstream_status_error

# Fields of a create body that are the proxy's business, never the upstream's.
_PROXY_ONLY = ("stream_id", "generate", "type", "background")

_OUTPUT_EVENT_PREFIXES = (
    "response.output_text",
    "response.refusal",
    "response.function_call_arguments",
    "response.reasoning",
    "response.output_item",
    "response.content_part",
    "response.custom_tool_call_input",
)


class OpenAIResponsesDialect:
    name = "openai"
    # Of the provider-specific create parameters, the Responses API has only top_logprobs
    # (stop, seed and logit_bias are Chat Completions parameters OpenAI refuses here).
    supported_params = frozenset({"top_logprobs"})

    def build_request(self, call: UpstreamCall) -> UpstreamRequest:
        body = {k: v for k, v in call.body.items() if k not in _PROXY_ONLY}
        body["model"] = call.model
        body["input"] = call.input
        body["stream"] = True
        return UpstreamRequest(path="/responses", body=orjson.dumps(body))

    def translator(
        self, response_id: str, call: UpstreamCall, created_at: int, ids: IdFactory
    ) -> PassthroughTranslator:
        return PassthroughTranslator(response_id, call.body.get("model", call.model), created_at)

    def error_from_status(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        return upstream_status_error(status, parsed if isinstance(parsed, dict) else None, headers)


# The events parsed whole below anyway (a broken one raises there and fails the stream).
_PARSED_TYPES = TERMINAL_TYPES | {"response.created", "response.in_progress", "response.output_item.done"}


def _is_json_object(data: bytes) -> bool:
    """Whether forwarded bytes are one JSON object. A full parse (orjson: ~0.5 us for a
    typical 180-byte delta) is the only check that catches a broken payload between braces."""
    if not (data.startswith(b"{") and data.endswith(b"}")):
        return False
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def _peek_type(data: bytes) -> str | None:
    """The JSON ``type`` of an event without a full parse when it is the first key (OpenAI)."""
    if data.startswith(b'{"type":"'):
        end = data.find(b'"', 9)
        if end != -1:
            return data[9:end].decode()
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None


class PassthroughTranslator:
    def __init__(self, response_id: str, model: str, created_at: int) -> None:
        # Used only if the upstream fails before sending its own response.created.
        self._response: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": created_at,
            "status": "in_progress",
            "model": model,
            "output": [],
            "usage": None,
            "error": None,
        }
        self._items: dict[int, dict[str, Any]] = {}
        self.seq = 0
        self.done = False
        self.started_output = False

    @property
    def response(self) -> dict[str, Any]:
        return self._response

    def start(self) -> list[Event]:
        return []  # the upstream sends its own response.created

    def feed(self, message: SSEMessage) -> list[Event]:
        if self.done:
            return []
        data = message.data
        if data == b"[DONE]":
            return []
        kind = message.event if message.event and message.event != "message" else None
        if kind is None:
            kind = _peek_type(data)
        if kind is None:
            return self.fail("server_error", "The upstream sent an event that is not a JSON object.")
        if kind in LEGACY_TERMINAL_TYPES:
            return self._legacy_done(data)
        if kind == "error" and self.seq == 0:
            # An error before response.created: the request failed, there is no response.
            return self._error_before_start(data)
        if kind not in _PARSED_TYPES and not _is_json_object(data):
            # Forwarded bytes must be valid: a broken event ends the response instead.
            return self.fail("server_error", "The upstream sent an event that is not valid JSON.")
        event = Event(kind, data, self.seq)
        self.seq += 1
        if kind in TERMINAL_TYPES:
            self.done = True
            payload = orjson.loads(data)
            response = payload.get("response")
            if isinstance(response, dict):
                self._response = response
        elif kind == "response.created" or kind == "response.in_progress":
            response = orjson.loads(data).get("response")
            if isinstance(response, dict):
                self._response = response
                self._response.setdefault("output", [])
        elif kind == "response.output_item.done":
            payload = orjson.loads(data)
            idx = payload.get("output_index")
            if isinstance(idx, int) and isinstance(payload.get("item"), dict):
                self._items[idx] = payload["item"]
            self.started_output = True
        elif kind.startswith(_OUTPUT_EVENT_PREFIXES):
            self.started_output = True
        return [event]

    def _legacy_done(self, data: bytes) -> list[Event]:
        payload = orjson.loads(data)
        response = payload.get("response") or {}
        status = response.get("status", "completed")
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
            status, "response.failed"
        )
        payload["type"] = kind
        payload["sequence_number"] = self.seq
        self.seq += 1
        self.done = True
        if isinstance(response, dict):
            self._response = response
        return [Event(kind, orjson.dumps(payload), payload["sequence_number"])]

    def _error_before_start(self, data: bytes) -> list[Event]:
        payload = orjson.loads(data)
        err = payload.get("error") if isinstance(payload.get("error"), dict) else payload
        return self.fail(str(err.get("code") or "server_error"), str(err.get("message") or "Upstream error."))

    def finish(self) -> list[Event]:
        if self.done:
            return []
        return self.fail("server_error", "The upstream closed the stream before a terminal event.")

    def fail(self, code: str, message: str) -> list[Event]:
        if self.done:
            return []
        self.done = True
        events = []
        if self.seq == 0:
            # Nothing was forwarded yet: open the response so the failure has a home.
            self._response.setdefault("object", "response")
            events.append(self._own("response.created", response={**self._response, "status": "in_progress"}))
        output = [self._items[i] for i in sorted(self._items)]
        self._response, ending = failed_ending(self._response, code, message, self.seq, output=output)
        self.seq += len(ending)
        return events + ending

    def _own(self, kind: str, **fields: Any) -> Event:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return Event(kind, orjson.dumps(payload), payload["sequence_number"])
