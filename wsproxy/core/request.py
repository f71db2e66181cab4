"""Parsing and validating a ``POST /v1/responses`` body or a WebSocket ``response.create`` frame.

A request is parsed once, at the edge, into :class:`CreateRequest`. Validation follows OpenAI's
behaviour: an unknown top-level field is a 400 ``unknown_parameter`` naming it; a field of the
wrong type is a 400 naming the param; values out of their documented range or enum, and Chat
Completions names (``messages``, ``response_format``, ``max_tokens``, ``n``), are handled by
:mod:`wsproxy.core.params`. Transport fields are separated from the body that travels
on: ``stream``, ``background`` (HTTP only), ``stream_id`` and ``generate`` (WebSocket only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from wsproxy.core.params import apply_aliases, check_values
from wsproxy.errors import InvalidRequest, invalid_param, unknown_parameter

# Every top-level field of the create params (openai-python, Open Responses), plus what real
# clients send that is not in the typed params (Codex: client_metadata).
BODY_FIELDS = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
        "store", "previous_response_id", "conversation", "include", "reasoning", "text",
        "max_output_tokens", "max_tool_calls", "temperature", "top_p", "top_logprobs",
        "truncation", "metadata", "service_tier", "prompt_cache_key", "prompt_cache_retention",
        "prompt_cache_options", "safety_identifier", "user", "prompt", "context_management",
        "moderation", "presence_penalty", "frequency_penalty", "client_metadata",
        "stream_options", "seed", "stop", "logit_bias",
    }
)  # fmt: skip
HTTP_ONLY = frozenset({"stream", "background"})
WS_ONLY = frozenset({"type", "stream_id", "generate"})

STREAM_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,256}")

_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "instructions": (str,),
    "tools": (list,),
    "tool_choice": (str, dict),
    "parallel_tool_calls": (bool,),
    "store": (bool,),
    "previous_response_id": (str,),
    "conversation": (str, dict),
    "include": (list,),
    "reasoning": (dict,),
    "text": (dict,),
    "max_output_tokens": (int,),
    "max_tool_calls": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "top_logprobs": (int,),
    "truncation": (str,),
    "metadata": (dict,),
    "service_tier": (str,),
    "prompt_cache_key": (str,),
    "safety_identifier": (str,),
    "user": (str,),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "stream": (bool,),
    "background": (bool,),
    "generate": (bool,),
    "stream_options": (dict,),
    "seed": (int,),
    "stop": (str, list),
    "logit_bias": (dict,),
}


@dataclass(slots=True)
class CreateRequest:
    """A validated create request. ``body`` holds the Responses fields that travel upstream."""

    body: dict[str, Any]
    model: str
    input: list[dict[str, Any]]
    stream: bool = False
    background: bool = False
    store: bool = True
    previous_response_id: str | None = None
    stream_id: str | None = None
    generate: bool = True
    # The conversation id of a ``conversation`` turn (wsproxy.service.conversations).
    conversation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def instructions(self) -> Any:
        return self.body.get("instructions")


def loads_object(data: bytes | str, what: str = "request body") -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}.", code="invalid_json"
        ) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"The {what} must be a JSON object.", code="invalid_json")
    return value


def normalize_input(value: Any) -> list[dict[str, Any]]:
    """``input`` as a list of items: a string is one user message."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise invalid_param(
            "input", "Invalid type for 'input': expected a string or an array.", "invalid_type"
        )
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise invalid_param(
                f"input[{i}]", f"Invalid type for 'input[{i}]': expected an object.", "invalid_type"
            )
        kind = item.get("type", "message")
        if not isinstance(kind, str):
            raise invalid_param(f"input[{i}].type", "Invalid type for item 'type'.", "invalid_type")
        if kind == "message":
            if item.get("role") not in ("user", "assistant", "system", "developer"):
                raise invalid_param(
                    f"input[{i}].role",
                    f"Invalid value for 'input[{i}].role': "
                    "expected one of user, assistant, system, developer.",
                )
            if not isinstance(item.get("content"), (str, list)):
                raise invalid_param(
                    f"input[{i}].content", f"Invalid type for 'input[{i}].content'.", "invalid_type"
                )
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise invalid_param(
                    f"input[{i}].call_id",
                    "Missing required parameter: 'call_id'.",
                    "missing_required_parameter",
                )
        elif kind == "function_call":
            if not isinstance(item.get("call_id"), str) or not isinstance(item.get("name"), str):
                raise invalid_param(
                    f"input[{i}]",
                    "A function_call item needs 'call_id' and 'name'.",
                    "missing_required_parameter",
                )
    return value


def conversation_ref(value: Any) -> str:
    """The conversation id of the ``conversation`` parameter (a string or ``{"id": ...}``)."""
    if isinstance(value, dict):
        extra = set(value) - {"id"}
        if extra:
            name = sorted(extra)[0]
            raise InvalidRequest(
                f"Unknown parameter: 'conversation.{name}'.",
                param=f"conversation.{name}",
                code="unknown_parameter",
            )
        value = value.get("id")
        param = "conversation.id"
    else:
        param = "conversation"
    if not isinstance(value, str) or not value:
        raise invalid_param(param, f"Invalid '{param}': expected a conversation id string.", "invalid_type")
    return value


def parse_create(obj: dict[str, Any], *, websocket: bool) -> CreateRequest:
    """Validate a create body (HTTP) or ``response.create`` frame (WebSocket)."""
    allowed_transport = WS_ONLY | {"stream", "background"} if websocket else HTTP_ONLY
    obj = apply_aliases(obj)  # messages, response_format, max_tokens, n: Chat Completions habits
    body: dict[str, Any] = {}
    for key, value in obj.items():
        if key in BODY_FIELDS:
            if value is not None:
                body[key] = value
        elif key not in allowed_transport:
            raise unknown_parameter(key)
        expected = _TYPES.get(key)
        if expected is not None and value is not None:
            # bool is an int subclass: a boolean is never a number here.
            bad = not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)
            if bad:
                raise invalid_param(key, f"Invalid type for '{key}'.", "invalid_type")

    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_param("model", "Missing required parameter: 'model'.", "missing_required_parameter")
    check_values(body)
    if "previous_response_id" in body and "conversation" in body:
        raise InvalidRequest(
            "Mutually exclusive parameters: 'previous_response_id' and 'conversation'. Ensure you "
            "are only providing one of: 'previous_response_id' or 'conversation'.",
            param="conversation",
            code="mutually_exclusive_parameters",
        )
    conversation: str | None = None
    if "conversation" in body:
        conversation = conversation_ref(body["conversation"])
        # The Response object always echoes the object form, whichever form was sent.
        body["conversation"] = {"id": conversation}

    items = normalize_input(obj.get("input"))
    stream_id = obj.get("stream_id") if websocket else None
    if websocket and "stream_id" in obj:
        if not isinstance(stream_id, str) or not STREAM_ID_RE.fullmatch(stream_id):
            raise InvalidRequest(
                "Invalid 'stream_id': expected 1 to 256 characters of letters, digits, '_', '.' or '-'.",
                param="stream_id",
                code="invalid_stream_id",
            )
    background = bool(obj.get("background", False))
    if websocket and background:
        raise InvalidRequest(
            "'background' is not supported in WebSocket mode.",
            param="background",
            code="unsupported_parameter",
        )
    return CreateRequest(
        body=body,
        model=model,
        input=items,
        stream=bool(obj.get("stream", False)) if not websocket else True,
        background=background,
        store=bool(body.get("store", True)),
        previous_response_id=body.get("previous_response_id"),
        stream_id=stream_id,
        generate=bool(obj.get("generate", True)),
        conversation=conversation,
    )
