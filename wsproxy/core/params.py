"""The values of create parameters, checked as OpenAI checks them, for every provider.

Role: after :func:`wsproxy.core.request.parse_create` has checked names and types, this module
checks what the values mean, so that a request is refused the same way whichever provider
serves it (a translating provider would otherwise answer something, or fail with its own
vaguer message):

- documented ranges and enums (:func:`check_values`): ``temperature`` 0-2, ``top_p`` 0-1,
  ``max_output_tokens`` >= 16, ``top_logprobs`` 0-20, ``truncation``, ``service_tier``,
  ``reasoning.effort``/``summary``, ``text.verbosity``, ``text.format.type``, ``metadata``
  (16 keys, 64-char keys, 512-char string values), penalties -2..2, ...;
- Chat Completions habits (:func:`apply_aliases`): ``messages``, ``response_format`` and
  ``max_tokens`` are taken for ``input``, ``text.format`` and ``max_output_tokens`` (both forms
  at once: a 400); ``n`` other than 1 is a 400 (a Response holds one answer);
- per-provider parameters (:func:`check_supported`): ``stop``, ``seed``, ``logit_bias`` and
  ``top_logprobs`` reach only providers whose dialect declares them in ``supported_params``;
  anywhere else they are a 400 naming the parameter and the provider, never silently dropped;
- tool outputs (:func:`check_tool_outputs`): a ``function_call_output`` must answer a
  ``function_call`` earlier in the (expanded) history, as OpenAI requires.

Pure: no I/O, no clock, no environment.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from wsproxy.errors import InvalidRequest, invalid_param, unsupported_parameter

# Parameters only some providers have; a dialect lists those it maps in ``supported_params``.
PROVIDER_PARAMS = ("stop", "seed", "logit_bias", "top_logprobs")

REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
REASONING_SUMMARIES = ("auto", "concise", "detailed")
VERBOSITIES = ("low", "medium", "high")
TRUNCATIONS = ("auto", "disabled")
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")
TEXT_FORMATS = ("text", "json_object", "json_schema")
MIN_MAX_OUTPUT_TOKENS = 16
METADATA_MAX_KEYS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512

# Chat Completions name -> Responses name.
ALIASES = {"messages": "input", "response_format": "text", "max_tokens": "max_output_tokens"}


def _enum(value: Any, allowed: tuple[str, ...], param: str) -> None:
    if value is not None and value not in allowed:
        raise invalid_param(
            param,
            f"Invalid value for '{param}': {value!r}. Supported values are: "
            + ", ".join(f"'{a}'" for a in allowed)
            + ".",
        )


def _number(body: dict[str, Any], key: str, low: float, high: float) -> None:
    value = body.get(key)
    if value is not None and not low <= value <= high:
        raise invalid_param(key, f"Invalid '{key}': expected a number between {low:g} and {high:g}.")


def check_values(body: dict[str, Any]) -> None:
    """Ranges and enums of the create parameters (types were checked before)."""
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    mot = body.get("max_output_tokens")
    if mot is not None and mot < MIN_MAX_OUTPUT_TOKENS:
        raise invalid_param(
            "max_output_tokens",
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
            f"{MIN_MAX_OUTPUT_TOKENS}, but got {mot} instead.",
            "integer_below_min_value",
        )
    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None and not 0 <= top_logprobs <= 20:
        raise invalid_param("top_logprobs", "Invalid 'top_logprobs': expected an integer between 0 and 20.")
    mtc = body.get("max_tool_calls")
    if mtc is not None and mtc < 1:
        raise invalid_param("max_tool_calls", "Invalid 'max_tool_calls': expected an integer >= 1.")
    _enum(body.get("truncation"), TRUNCATIONS, "truncation")
    _enum(body.get("service_tier"), SERVICE_TIERS, "service_tier")
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        _enum(reasoning.get("effort"), REASONING_EFFORTS, "reasoning.effort")
        _enum(reasoning.get("summary"), REASONING_SUMMARIES, "reasoning.summary")
    text = body.get("text")
    if isinstance(text, dict):
        _enum(text.get("verbosity"), VERBOSITIES, "text.verbosity")
        fmt = text.get("format")
        if fmt is not None:
            if not isinstance(fmt, dict):
                raise invalid_param("text.format", "Invalid type for 'text.format'.", "invalid_type")
            _enum(fmt.get("type"), TEXT_FORMATS, "text.format.type")
            if fmt.get("type") == "json_schema":
                if not isinstance(fmt.get("name"), str) or not fmt["name"]:
                    raise invalid_param(
                        "text.format.name",
                        "Missing required parameter: 'text.format.name'.",
                        "missing_required_parameter",
                    )
                if not isinstance(fmt.get("schema"), dict):
                    raise invalid_param(
                        "text.format.schema",
                        "Missing required parameter: 'text.format.schema'.",
                        "missing_required_parameter",
                    )
    check_tools(body.get("tools"))
    _metadata(body.get("metadata"))
    for key in ("safety_identifier", "prompt_cache_key"):
        value = body.get(key)
        if isinstance(value, str) and len(value) > 64:
            raise invalid_param(key, f"Invalid '{key}': string too long (at most 64 characters).")


def _function_tool(tool: dict[str, Any], param: str) -> None:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_param(
            f"{param}.name", f"Missing required parameter: '{param}.name'.", "missing_required_parameter"
        )
    for key, kinds in (("parameters", dict), ("description", str), ("strict", bool)):
        value = tool.get(key)
        if value is not None and not isinstance(value, kinds):
            raise invalid_param(f"{param}.{key}", f"Invalid type for '{param}.{key}'.", "invalid_type")


def check_tools(tools: Any) -> None:
    """Each tool is an object with a ``type``; a function tool has a ``name`` (and, when given,
    an object ``parameters``); a namespace holds function tools. Hosted tool types are left to
    the provider (OpenAI runs them; the translating dialects refuse them)."""
    if not isinstance(tools, list):
        return
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid_param(param, f"Invalid type for '{param}': expected an object.", "invalid_type")
        kind = tool.get("type")
        if not isinstance(kind, str):
            raise invalid_param(
                f"{param}.type", f"Missing required parameter: '{param}.type'.", "missing_required_parameter"
            )
        if kind == "function":
            _function_tool(tool, param)
        elif kind == "namespace":
            members = tool.get("tools")
            if not isinstance(tool.get("name"), str) or not isinstance(members, list):
                raise invalid_param(
                    param, "A namespace tool needs 'name' and 'tools'.", "missing_required_parameter"
                )
            for j, member in enumerate(members):
                if not isinstance(member, dict):
                    raise invalid_param(
                        f"{param}.tools[{j}]", "Invalid type: expected an object.", "invalid_type"
                    )
                if member.get("type", "function") == "function":
                    _function_tool(member, f"{param}.tools[{j}]")


def _metadata(metadata: Any) -> None:
    if isinstance(metadata, dict):  # (its type is checked with the other fields' types)
        validate_metadata(metadata)


def validate_metadata(value: Any) -> dict[str, str]:
    """``metadata`` as OpenAI limits it (16 pairs, 64-character keys, 512-character string
    values), for responses and conversations alike; ``null`` is the empty map."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_param("metadata", "Invalid type for 'metadata': expected an object.", "invalid_type")
    if len(value) > METADATA_MAX_KEYS:
        raise invalid_param(
            "metadata",
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{METADATA_MAX_KEYS} properties, but got an object with {len(value)} properties instead.",
            "object_above_max_properties",
        )
    for key, item in value.items():
        if len(key) > METADATA_MAX_KEY:
            raise invalid_param(
                "metadata",
                f"Invalid 'metadata': key '{key[:METADATA_MAX_KEY]}...' is longer than "
                f"{METADATA_MAX_KEY} characters.",
                "metadata_key_too_long",
            )
        if not isinstance(item, str):
            raise invalid_param(
                f"metadata.{key}", f"Invalid type for 'metadata.{key}': expected a string.", "invalid_type"
            )
        if len(item) > METADATA_MAX_VALUE:
            raise invalid_param(
                f"metadata.{key}",
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length "
                f"{METADATA_MAX_VALUE}, but got a string with length {len(item)} instead.",
                "string_above_max_length",
            )
    return dict(value)


# -- Chat Completions habits ------------------------------------------------------------------


def apply_aliases(obj: dict[str, Any]) -> dict[str, Any]:
    """A create body with Chat Completions' names replaced by the Responses ones (a new dict
    when anything changed). Both names at once, or a value that has no Responses equivalent,
    is a 400."""
    if not any(key in obj for key in (*ALIASES, "n")):
        return obj
    out = dict(obj)
    n = out.pop("n", None)
    if n is not None and (isinstance(n, bool) or n != 1):
        raise unsupported_parameter(
            "n", "must be 1 with the Responses API: a response holds one answer (send n requests instead)."
        )
    for old, new in ALIASES.items():
        if old not in out:
            continue
        value = out.pop(old)
        if out.get(new) is not None and value is not None:
            what = "text.format" if new == "text" else new
            raise InvalidRequest(
                f"'{old}' is the Chat Completions name of '{what}': give only one of them.",
                param=old,
                code="invalid_request_error",
            )
        if value is None:
            continue
        if old == "messages":
            out["input"] = chat_messages_to_input(value)
        elif old == "response_format":
            out["text"] = {"format": _text_format(value)}
        else:
            out[new] = value
    return out


def _text_format(value: Any) -> dict[str, Any]:
    """Chat's ``response_format`` -> Responses' ``text.format`` (json_schema un-nested)."""
    if not isinstance(value, dict):
        raise invalid_param("response_format", "Invalid type for 'response_format'.", "invalid_type")
    if value.get("type") == "json_schema":
        inner = value.get("json_schema")
        if not isinstance(inner, dict):
            raise invalid_param(
                "response_format.json_schema",
                "Missing required parameter: 'response_format.json_schema'.",
                "missing_required_parameter",
            )
        return {"type": "json_schema", **inner}
    return dict(value)


def _chat_parts(content: Any, role: str, param: str) -> Any:
    if not isinstance(content, list):
        return content
    text_type = "output_text" if role == "assistant" else "input_text"
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": text_type, "text": str(part.get("text") or "")})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            entry: dict[str, Any] = {"type": "input_image", "image_url": url}
            if isinstance(image, dict) and isinstance(image.get("detail"), str):
                entry["detail"] = image["detail"]
            parts.append(entry)
        elif isinstance(part, dict):
            parts.append(part)  # already a Responses part (input_text, input_file...)
        else:
            raise invalid_param(f"{param}[{j}]", f"Invalid type for '{param}[{j}]'.", "invalid_type")
    return parts


def chat_messages_to_input(messages: Any) -> list[dict[str, Any]]:
    """Chat ``messages`` -> Responses input items: tool calls become ``function_call`` items,
    ``tool`` messages ``function_call_output`` items."""
    if not isinstance(messages, list):
        raise invalid_param("messages", "Invalid type for 'messages': expected an array.", "invalid_type")
    items: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise invalid_param(param, f"Invalid type for '{param}': expected an object.", "invalid_type")
        role = msg.get("role")
        if role == "tool":
            output = msg.get("content")
            if isinstance(output, list):
                output = _chat_parts(output, "user", f"{param}.content")
            items.append(
                {"type": "function_call_output", "call_id": msg.get("tool_call_id"), "output": output or ""}
            )
            continue
        if role not in ("user", "assistant", "system", "developer"):
            raise invalid_param(f"{param}.role", f"Invalid value for '{param}.role': {role!r}.")
        content = msg.get("content")
        if content is not None and content != "":
            items.append(
                {"type": "message", "role": role, "content": _chat_parts(content, role, f"{param}.content")}
            )
        for j, call in enumerate(msg.get("tool_calls") or [] if role == "assistant" else []):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict):
                raise invalid_param(
                    f"{param}.tool_calls[{j}]", "A tool call needs 'function'.", "missing_required_parameter"
                )
            items.append(
                {
                    "type": "function_call",
                    "call_id": call.get("id"),
                    "name": fn.get("name"),
                    "arguments": fn.get("arguments") or "{}",
                }
            )
    return items


# -- per provider -----------------------------------------------------------------------------


def check_supported(body: dict[str, Any], supported: Iterable[str], provider: str) -> None:
    """400 for a provider-specific parameter the provider's dialect does not map."""
    allowed = frozenset(supported)
    for key in PROVIDER_PARAMS:
        value = body.get(key)
        if value is None or key in allowed:
            continue
        if key == "top_logprobs" and value == 0:
            continue  # the default: asks for nothing
        raise unsupported_parameter(key, f"is not supported by provider '{provider}'.")


# -- tool outputs -----------------------------------------------------------------------------


def check_tool_outputs(items: list[dict[str, Any]]) -> None:
    """Every ``function_call_output`` answers a ``function_call`` before it (OpenAI's 400)."""
    calls: set[Any] = set()
    for item in items:
        kind = item.get("type", "message")
        if kind == "function_call":
            calls.add(item.get("call_id"))
        elif kind == "function_call_output" and item.get("call_id") not in calls:
            raise InvalidRequest(
                f"No tool call found for function call output with call_id {item.get('call_id')}.",
                param="input",
                code="invalid_request_error",
            )
