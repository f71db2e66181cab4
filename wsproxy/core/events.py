"""Responses streaming events: the one stream every transport consumes.

``Event`` is what flows from an upstream to a sink: the event ``type`` and its JSON ``data`` as it
goes on the wire (bytes, encoded once). The OpenAI-native path fills ``data`` with the provider's
own bytes; translating paths build events with :class:`ResponseBuilder`.

``ResponseBuilder`` is a pure emitter that keeps the running Response snapshot and produces the
event sequences of the spec (``responses-streaming.md`` section 4):

- ``sequence_number`` from 0, +1 for every event of the response;
- items strictly one after another: opening a new item closes the open one;
- every ``*.done`` payload and the terminal event equal the accumulated deltas;
- exactly one terminal event; after it every call is a no-op returning ``[]``.

Ids and ``created_at`` are injected, so transcripts are reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from wsproxy.core.ids import IdFactory, random_id

TERMINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Consumed from upstream WebSocket peers of the alpha era; never emitted.
LEGACY_TERMINAL_TYPES = frozenset({"response.done"})


class Event:
    """One Responses event: its type and its single-line JSON payload.

    ``more`` says that another event is already at hand behind this one (it came in the same
    upstream read): a transport that can may write both at once. It never delays an event.
    """

    __slots__ = ("data", "more", "seq", "type")

    def __init__(self, type: str, data: bytes, seq: int = -1) -> None:
        self.type = type
        self.data = data
        self.seq = seq
        self.more = False

    @classmethod
    def build(cls, payload: dict[str, Any]) -> Event:
        return cls(payload["type"], orjson.dumps(payload), payload.get("sequence_number", -1))

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.data)
        return value

    def __repr__(self) -> str:
        return f"Event({self.type!r}, seq={self.seq})"


# Response fields copied from the request into the Response object, with their defaults when
# the request leaves them out. Every key is always present: strict clients validate them.
_ECHOED_FIELDS: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "max_tool_calls": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "prompt_cache_key": None,
    "reasoning": {"effort": None, "summary": None},
    "safety_identifier": None,
    "service_tier": "default",
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}, "verbosity": "medium"},
    "tool_choice": "auto",
    "tools": [],
    "top_logprobs": 0,
    "top_p": 1.0,
    "truncation": "disabled",
    "user": None,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "prompt": None,
    "background": False,
    "conversation": None,
}


def response_skeleton(
    response_id: str, model: str, created_at: int, request: dict[str, Any]
) -> dict[str, Any]:
    """A Response object in status ``in_progress`` echoing the request's settings."""
    resp: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [],
        "usage": None,
    }
    for key, default in _ECHOED_FIELDS.items():
        value = request.get(key)
        resp[key] = default if value is None else value
    text = resp["text"]
    if isinstance(text, dict):
        fmt = text.get("format")
        if not isinstance(fmt, dict):
            text = {**text, "format": {"type": "text"}}
        elif fmt.get("type") == "json_schema":
            # Echoed with every key of OpenAI's (description and strict default to null/false).
            text = {**text, "format": {"description": None, **fmt, "strict": fmt.get("strict") is True}}
        resp["text"] = text
    if isinstance(resp["reasoning"], dict):
        resp["reasoning"] = {"effort": None, "summary": None, **resp["reasoning"]}
    if isinstance(resp["tools"], list):
        resp["tools"] = [echo_tool(tool) for tool in resp["tools"]]
    return resp


def echo_tool(tool: Any) -> Any:
    """A request tool as the Response echoes it: a function tool has every key of OpenAI's
    (``description``, ``parameters`` and ``strict``, which defaults to true in the Responses API);
    the members of a namespace tool likewise. Other tools are echoed unchanged."""
    if not isinstance(tool, dict):
        return tool
    kind = tool.get("type", "function")
    if kind == "function":
        return {
            **tool,
            "type": "function",
            "description": tool.get("description"),
            "parameters": tool.get("parameters"),
            "strict": tool["strict"] if isinstance(tool.get("strict"), bool) else True,
        }
    if kind == "namespace" and isinstance(tool.get("tools"), list):
        return {**tool, "tools": [echo_tool(member) for member in tool["tools"]]}
    return tool


def usage_object(
    input_tokens: int = 0,
    output_tokens: int = 0,
    *,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": cached_tokens,
            "cache_write_tokens": cache_write_tokens,
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def failed_ending(
    response: dict[str, Any],
    code: str,
    message: str,
    seq: int,
    *,
    output: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    error_event: bool = True,
    closing: Sequence[Event] = (),
) -> tuple[dict[str, Any], list[Event]]:
    """The one way a response ends in failure: ``error`` (OpenAI's flat SSE shape, numbered
    ``seq``), then the ``closing`` events the caller already numbered after it (items closed as
    ``incomplete``), then ``response.failed`` carrying ``response`` with status ``failed``, the
    error, ``output`` (when given, else the response's own) and ``usage`` (when given, else the
    response's own, else zeros). Returns the failed response object (a new dict; ``response``
    is not changed) and the events. Used by the event builder, the passthrough translator and
    the edge that ends a response the engine could not (shutdown, a bug)."""
    failed = dict(response)
    failed["status"] = "failed"
    failed["error"] = {"code": code, "message": message}
    if output is not None:
        failed["output"] = output
    if usage is not None:
        failed["usage"] = usage
    elif not failed.get("usage"):
        failed["usage"] = usage_object()
    events: list[Event] = []
    if error_event:
        error = {"type": "error", "sequence_number": seq, "code": code, "message": message, "param": None}
        events.append(Event("error", orjson.dumps(error), seq))
        seq += 1
    events.extend(closing)
    seq += len(closing)
    payload = {"type": "response.failed", "sequence_number": seq, "response": failed}
    events.append(Event("response.failed", orjson.dumps(payload), seq))
    return failed, events


class _OpenItem:
    """The item currently streaming: its index, the item dict and the open part, if any."""

    __slots__ = ("buffer", "index", "item", "part_index", "part_kind")

    def __init__(self, index: int, item: dict[str, Any]) -> None:
        self.index = index
        self.item = item
        self.part_kind: str | None = None  # "output_text" | "refusal" | "reasoning_text" | "summary"
        self.part_index = -1
        self.buffer: list[str] = []


class ResponseBuilder:
    """Builds the event stream and the Response snapshot of one response."""

    def __init__(
        self,
        response_id: str,
        model: str,
        created_at: int,
        request: dict[str, Any] | None = None,
        *,
        ids: IdFactory = random_id,
    ) -> None:
        self.ids = ids
        self.response = response_skeleton(response_id, model, created_at, request or {})
        self.seq = 0
        self.started = False
        self.finished = False
        self._open: _OpenItem | None = None

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return str(self.response["id"])

    @property
    def output(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.response["output"]
        return out

    def _event(self, type: str, **fields: Any) -> Event:
        payload = {"type": type, "sequence_number": self.seq, **fields}
        self.seq += 1
        return Event(type, orjson.dumps(payload), payload["sequence_number"])

    def _snapshot_event(self, type: str) -> Event:
        return self._event(type, response=self.response)

    # -- lifecycle --------------------------------------------------------------------------

    def queued(self) -> list[Event]:
        self.response["status"] = "queued"
        self.response["background"] = True
        return [self._snapshot_event("response.queued")]

    def start(self, *, in_progress: bool = True) -> list[Event]:
        """``response.created`` and (unless told otherwise) ``response.in_progress``."""
        if self.started:
            return []
        self.started = True
        self.response["status"] = "in_progress"
        events = [self._snapshot_event("response.created")]
        if in_progress:
            events.append(self._snapshot_event("response.in_progress"))
        return events

    def complete(self, usage: dict[str, Any] | None, completed_at: int) -> list[Event]:
        return self._terminal("completed", usage, completed_at=completed_at)

    def incomplete(self, reason: str, usage: dict[str, Any] | None) -> list[Event]:
        return self._terminal("incomplete", usage, incomplete_reason=reason)

    def fail(
        self, code: str, message: str, usage: dict[str, Any] | None = None, *, error_event: bool = True
    ) -> list[Event]:
        """``error`` (OpenAI's flat SSE shape) then ``response.failed`` (:func:`failed_ending`);
        open items are closed as ``incomplete`` between the two, so no item is left dangling."""
        if self.finished:
            return []
        events = self.start()
        error_seq = self.seq
        if error_event:
            self.seq += 1  # the error event's number: the closing events follow it
        closing = self.close_item("incomplete")
        self.finished = True
        self.response, ending = failed_ending(
            self.response,
            code,
            message,
            error_seq,
            usage=usage if usage is not None else usage_object(),
            error_event=error_event,
            closing=closing,
        )
        self.seq = ending[-1].seq + 1
        return events + ending

    def _terminal(
        self,
        status: str,
        usage: dict[str, Any] | None,
        *,
        completed_at: int | None = None,
        incomplete_reason: str | None = None,
    ) -> list[Event]:
        if self.finished:
            return []
        events = self.start()
        events += self.close_item("completed" if status == "completed" else "incomplete")
        self.finished = True
        resp = self.response
        resp["status"] = status
        resp["usage"] = usage if usage is not None else usage_object()
        if completed_at is not None:
            resp["completed_at"] = completed_at
        if incomplete_reason is not None:
            resp["incomplete_details"] = {"reason": incomplete_reason}
        events.append(self._snapshot_event(f"response.{status}"))
        return events

    # -- items ------------------------------------------------------------------------------

    def _open_item(self, item: dict[str, Any]) -> list[Event]:
        events = self.start()
        events += self.close_item()
        index = len(self.output)
        self.output.append(item)
        self._open = _OpenItem(index, item)
        events.append(self._event("response.output_item.added", output_index=index, item=dict(item)))
        return events

    def _ensure_message(self) -> list[Event]:
        if self._open is not None and self._open.item["type"] == "message":
            return []
        item = {
            "id": self.ids("msg"),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        return self._open_item(item)

    def _ensure_reasoning(self) -> list[Event]:
        if self._open is not None and self._open.item["type"] == "reasoning":
            return []
        return self._open_item({"id": self.ids("rs"), "type": "reasoning", "summary": []})

    def _open_part(self, kind: str) -> list[Event]:
        item = self._open
        assert item is not None
        if item.part_kind == kind:
            return []
        events = self._close_part()
        content: list[dict[str, Any]] = item.item.setdefault("content", [])
        if kind == "output_text":
            part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        elif kind == "refusal":
            part = {"type": "refusal", "refusal": ""}
        else:
            part = {"type": "reasoning_text", "text": ""}
        content.append(part)
        item.part_kind = kind
        item.part_index = len(content) - 1
        item.buffer = []
        events.append(
            self._event(
                "response.content_part.added",
                item_id=item.item["id"],
                output_index=item.index,
                content_index=item.part_index,
                part=dict(part),
            )
        )
        return events

    def _open_summary(self) -> list[Event]:
        item = self._open
        assert item is not None
        if item.part_kind == "summary":
            return []
        events = self._close_part()
        summary: list[dict[str, Any]] = item.item["summary"]
        summary.append({"type": "summary_text", "text": ""})
        item.part_kind = "summary"
        item.part_index = len(summary) - 1
        item.buffer = []
        events.append(
            self._event(
                "response.reasoning_summary_part.added",
                item_id=item.item["id"],
                output_index=item.index,
                summary_index=item.part_index,
                part={"type": "summary_text", "text": ""},
            )
        )
        return events

    def _close_part(self) -> list[Event]:
        item = self._open
        if item is None or item.part_kind is None:
            return []
        text = "".join(item.buffer)
        kind, idx = item.part_kind, item.part_index
        item.part_kind, item.part_index, item.buffer = None, -1, []
        common = {"item_id": item.item["id"], "output_index": item.index}
        if kind == "summary":
            part = item.item["summary"][idx]
            part["text"] = text
            return [
                self._event("response.reasoning_summary_text.done", **common, summary_index=idx, text=text),
                self._event(
                    "response.reasoning_summary_part.done", **common, summary_index=idx, part=dict(part)
                ),
            ]
        part = item.item["content"][idx]
        if kind == "output_text":
            part["text"] = text
            done = self._event(
                "response.output_text.done", **common, content_index=idx, text=text, logprobs=[]
            )
        elif kind == "refusal":
            part["refusal"] = text
            done = self._event("response.refusal.done", **common, content_index=idx, refusal=text)
        else:
            part["text"] = text
            done = self._event("response.reasoning_text.done", **common, content_index=idx, text=text)
        return [
            done,
            self._event("response.content_part.done", **common, content_index=idx, part=dict(part)),
        ]

    def close_item(self, status: str = "completed") -> list[Event]:
        """Close the open item (if any). Reasoning items carry no status in OpenAI's stream."""
        item = self._open
        if item is None:
            return []
        events = self._close_part()
        self._open = None
        it = item.item
        if it["type"] == "function_call":
            if not it["arguments"]:
                it["arguments"] = "".join(item.buffer)
                if not it["arguments"] and status == "completed":
                    # A call without arguments: "{}" goes out as a delta too, so that the deltas
                    # always add up to the arguments of the done event (as OpenAI streams it).
                    # A call cut off (incomplete) keeps what it got: nothing.
                    it["arguments"] = "{}"
                    events.append(
                        self._event(
                            "response.function_call_arguments.delta",
                            item_id=it["id"],
                            output_index=item.index,
                            delta="{}",
                        )
                    )
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=it["id"],
                    output_index=item.index,
                    arguments=it["arguments"],
                    name=it["name"],
                )
            )
        if it["type"] != "reasoning":
            it["status"] = status
        events.append(self._event("response.output_item.done", output_index=item.index, item=it))
        return events

    # -- deltas -----------------------------------------------------------------------------

    def text_delta(self, delta: str) -> list[Event]:
        if self.finished or not delta:
            return []
        events = self._ensure_message()
        events += self._open_part("output_text")
        item = self._open
        assert item is not None
        item.buffer.append(delta)
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item.item["id"],
                output_index=item.index,
                content_index=item.part_index,
                delta=delta,
                logprobs=[],
            )
        )
        return events

    def refusal_delta(self, delta: str) -> list[Event]:
        if self.finished or not delta:
            return []
        events = self._ensure_message()
        events += self._open_part("refusal")
        item = self._open
        assert item is not None
        item.buffer.append(delta)
        events.append(
            self._event(
                "response.refusal.delta",
                item_id=item.item["id"],
                output_index=item.index,
                content_index=item.part_index,
                delta=delta,
            )
        )
        return events

    def end_text_part(self) -> list[Event]:
        """Close the open text part but keep the message open (Anthropic text blocks)."""
        if self._open is None or self._open.item["type"] != "message":
            return []
        return self._close_part()

    def reasoning_delta(self, delta: str) -> list[Event]:
        """Raw reasoning text (``reasoning_text`` content part of a reasoning item)."""
        if self.finished or not delta:
            return []
        events = self._ensure_reasoning()
        events += self._open_part("reasoning_text")
        item = self._open
        assert item is not None
        item.buffer.append(delta)
        events.append(
            self._event(
                "response.reasoning_text.delta",
                item_id=item.item["id"],
                output_index=item.index,
                content_index=item.part_index,
                delta=delta,
            )
        )
        return events

    def reasoning_summary_delta(self, delta: str) -> list[Event]:
        if self.finished or not delta:
            return []
        events = self._ensure_reasoning()
        events += self._open_summary()
        item = self._open
        assert item is not None
        item.buffer.append(delta)
        events.append(
            self._event(
                "response.reasoning_summary_text.delta",
                item_id=item.item["id"],
                output_index=item.index,
                summary_index=item.part_index,
                delta=delta,
            )
        )
        return events

    def open_reasoning(self) -> list[Event]:
        """Start a (possibly empty) reasoning item, e.g. for a redacted thinking block."""
        if self.finished:
            return []
        if self._open is not None and self._open.item["type"] == "reasoning":
            return self._close_part() + self.close_item() + self._ensure_reasoning()
        return self._ensure_reasoning()

    def set_reasoning_encrypted(self, encrypted: str) -> None:
        """Attach opaque state (e.g. a provider's thinking signature) to the open reasoning item."""
        if self._open is not None and self._open.item["type"] == "reasoning":
            self._open.item["encrypted_content"] = encrypted

    def function_call(self, call_id: str, name: str, namespace: str | None = None) -> list[Event]:
        """Open a function_call item; arguments follow through :meth:`arguments_delta`.
        ``namespace`` is set for a member of a namespace tool (Codex dispatches on both)."""
        if self.finished:
            return []
        item: dict[str, Any] = {
            "id": self.ids("fc"),
            "type": "function_call",
            "status": "in_progress",
            "call_id": call_id,
            "name": name,
            "arguments": "",
        }
        if namespace is not None:
            item["namespace"] = namespace
        return self._open_item(item)

    def arguments_delta(self, delta: str) -> list[Event]:
        item = self._open
        if self.finished or not delta or item is None or item.item["type"] != "function_call":
            return []
        item.buffer.append(delta)
        return [
            self._event(
                "response.function_call_arguments.delta",
                item_id=item.item["id"],
                output_index=item.index,
                delta=delta,
            )
        ]

    @property
    def open_item_type(self) -> str | None:
        return None if self._open is None else str(self._open.item["type"])


def output_text(output: Iterable[dict[str, Any]]) -> str:
    """The concatenated ``output_text`` of a response's message items (the SDK's ``output_text``)."""
    parts: list[str] = []
    for item in output:
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if part.get("type") == "output_text":
                    parts.append(part.get("text", ""))
    return "".join(parts)
