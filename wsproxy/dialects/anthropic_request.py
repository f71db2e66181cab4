"""Responses request -> Anthropic Messages request body (translation.md section C).

Role: build the JSON body of ``POST {base}/messages`` from an already expanded Responses request,
and own the envelope that carries Anthropic thinking signatures through a Responses reasoning
item's ``encrypted_content``. Must not add ``x-api-key`` (the upstream layer does), perform I/O or
read anything but :class:`DialectOptions`.

What happens to each Responses field:

==========================  ==================================================================
``model``                   ``call.model``
``instructions`` + every    top-level ``system`` text blocks, in input order (the Messages API
system/developer message    has no system role inside ``messages``; their position is lost)
``input``                   ``messages`` (C.1): consecutive same-role items merged (roles then
                            alternate), tool_result blocks first in their user message; a
                            history that starts with the assistant gets a placeholder user turn
                            (:data:`HISTORY_PLACEHOLDER`) first; Responses-only item fields
                            (``phase``, ``id``, ``status``) are not sent
``tools``                   ``{"name","description","input_schema"}``; namespaces flattened;
                            hosted tools -> 400 ``tools`` (or dropped when configured)
``tool_choice``             auto/required/none/function -> auto/any/none/tool; allowed_tools ->
                            filtered tool list + auto/any
``parallel_tool_calls``     ``false`` -> ``tool_choice.disable_parallel_tool_use: true``
``max_output_tokens``       ``max_tokens`` (required: ``options.default_max_tokens`` when absent)
``reasoning.effort``        ``thinking.budget_tokens`` (:data:`THINKING_BUDGETS`), or adaptive
                            thinking + ``output_config.effort`` when
                            ``options.extra["anthropic_adaptive_thinking"]``
``text.format``             json_schema -> ``output_config.format``; json_object -> 400
``temperature``             clamped to <= 1 (Anthropic's range is 0..1; 1 is its maximum
                            randomness, the closest to a Responses value above 1)
``top_p``                   forwarded, unless ``temperature`` is also set: newer Claude models
                            reject both together, and temperature is kept
``stop``                    ``stop_sequences``
``safety_identifier``/      ``metadata.user_id``
``user``
==========================  ==================================================================

Extended thinking: the budget must be >= 1024 and < ``max_tokens``. Without ``max_output_tokens``
``max_tokens`` = default + budget (Responses counts reasoning inside the cap, so the answer keeps
the default room); with it, the budget is capped at half of it and ``max_output_tokens`` <= 1024 is
a 400. With thinking on, a temperature other than 1 and a forced tool (``required``/function) are
400s (Anthropic refuses them). A high effort without ``max_output_tokens`` can exceed a model's
output cap (e.g. 32k); the provider's 400 then names the limit.

Dropped, with the reason: everything the Chat dialect drops (see ``chat_request``), plus
``seed``, ``presence_penalty``, ``frequency_penalty`` (no Anthropic equivalent; sampling hints),
``strict`` on tools (only newer models accept it and agents send ``strict: true`` on every tool),
``input_image.detail``, and thinking blocks when this request does not enable thinking.
Rejected (400): as in Chat, plus ``file_id`` inputs, non-PDF/non-text files, images in system
messages.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from wsproxy.dialects.base import DialectOptions, UpstreamCall
from wsproxy.dialects.common import (
    HISTORY_PLACEHOLDER,
    TEXT_PARTS,
    FunctionDecl,
    arguments_object,
    assistant_texts,
    call_name,
    check_tool_pairs,
    encode_envelope,
    envelope_value,
    function_tools,
    json_schema_of,
    message_parts,
    parse_data_url,
    reject_unexpressible,
    resolve_tool_choice,
    split_instructions,
    system_texts,
    text_format,
)
from wsproxy.errors import invalid_param, unsupported_parameter

# reasoning.effort -> thinking budget_tokens. Roughly doubling steps from Anthropic's minimum.
THINKING_BUDGETS = {
    "minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768, "max": 49152,
}  # fmt: skip
MIN_THINKING_BUDGET = 1024
_ADAPTIVE_EFFORT = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
    "max": "max",
}

ENVELOPE_PREFIX = "anthropic:"


# -- thinking envelope ------------------------------------------------------------------------


def encode_thinking(thinking: str, signature: str) -> str:
    """``encrypted_content`` of a reasoning item made from an Anthropic thinking block. The text
    travels inside the envelope too: the signature only verifies the exact original text, and
    clients do not always send a reasoning item's ``content`` back."""
    return encode_envelope(
        ENVELOPE_PREFIX, {"type": "thinking", "thinking": thinking, "signature": signature}
    )


def encode_redacted(data: str) -> str:
    return encode_envelope(ENVELOPE_PREFIX, {"type": "redacted_thinking", "data": data})


def decode_envelope(encrypted: Any) -> dict[str, Any] | None:
    """The Anthropic block in a reasoning item's ``encrypted_content``; None when it came from
    another provider or is damaged (it is then dropped, as other providers' reasoning is)."""
    block = envelope_value(ENVELOPE_PREFIX, encrypted)
    if not isinstance(block, dict):
        return None
    if (
        block.get("type") == "thinking"
        and isinstance(block.get("thinking"), str)
        and isinstance(block.get("signature"), str)
    ):
        return {"type": "thinking", "thinking": block["thinking"], "signature": block["signature"]}
    if block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
        return {"type": "redacted_thinking", "data": block["data"]}
    return None


# -- body -------------------------------------------------------------------------------------


def build_anthropic_body(call: UpstreamCall) -> dict[str, Any]:
    body = call.body
    opts = call.options
    reject_unexpressible(body, "Anthropic")
    max_tokens, thinking, effort = _thinking(body, opts)
    system, messages = anthropic_messages(
        call.input, body.get("instructions"), keep_thinking=thinking is not None
    )
    out: dict[str, Any] = {"model": call.model, "max_tokens": max_tokens}
    if system:
        out["system"] = system
    out["messages"] = messages
    decls = function_tools(body.get("tools"), drop_unsupported=opts.drop_unsupported_tools)
    decls, choice = _tool_choice(decls, body.get("tool_choice"), body.get("parallel_tool_calls"))
    if decls:
        out["tools"] = [_tool(d) for d in decls]
        if choice is not None:
            out["tool_choice"] = choice
    temperature = body.get("temperature")
    if thinking is not None:
        out["thinking"] = thinking
        if temperature is not None and temperature != 1:
            raise unsupported_parameter(
                "temperature",
                "cannot be combined with reasoning.effort on Anthropic (thinking needs temperature 1).",
            )
        if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
            raise unsupported_parameter(
                "tool_choice", "cannot force a tool together with reasoning.effort on Anthropic."
            )
    elif temperature is not None:
        out["temperature"] = min(float(temperature), 1.0)
    if body.get("top_p") is not None and "temperature" not in out:
        out["top_p"] = body["top_p"]
    output_config: dict[str, Any] = {}
    if effort is not None:
        output_config["effort"] = effort
    fmt = _format(body.get("text"))
    if fmt is not None:
        output_config["format"] = fmt
    if output_config:
        out["output_config"] = output_config
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = [str(s) for s in stop]
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    out["stream"] = True
    return out


def _thinking(body: dict[str, Any], opts: DialectOptions) -> tuple[int, dict[str, Any] | None, str | None]:
    """(max_tokens, thinking config or None, adaptive output_config.effort or None)."""
    requested = body.get("max_output_tokens")
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    base = requested if isinstance(requested, int) else opts.default_max_tokens
    if effort is None or effort == "none":
        return base, None, None
    if effort not in THINKING_BUDGETS:
        raise invalid_param("reasoning.effort", f"Invalid value for 'reasoning.effort': '{effort}'.")
    if opts.extra.get("anthropic_adaptive_thinking"):
        return base, {"type": "adaptive"}, _ADAPTIVE_EFFORT[effort]
    budget = THINKING_BUDGETS[effort]
    if not isinstance(requested, int):
        return opts.default_max_tokens + budget, {"type": "enabled", "budget_tokens": budget}, None
    if requested <= MIN_THINKING_BUDGET:
        raise unsupported_parameter(
            "reasoning.effort",
            f"needs max_output_tokens > {MIN_THINKING_BUDGET} on Anthropic (the thinking budget is at least "
            f"{MIN_THINKING_BUDGET} tokens and must stay below the output cap).",
        )
    budget = min(budget, max(MIN_THINKING_BUDGET, requested // 2))
    return requested, {"type": "enabled", "budget_tokens": budget}, None


def _tool(decl: FunctionDecl) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": decl.name}
    if decl.description is not None:
        tool["description"] = decl.description
    schema = decl.parameters
    if "type" not in schema:
        # Anthropic needs an explicit object schema; a schema without a type means "any arguments".
        schema = {"type": "object", **schema}
    elif schema["type"] != "object":
        raise invalid_param(
            "tools", f"The parameters of '{decl.name}' must be an object schema for Anthropic."
        )
    tool["input_schema"] = schema
    return tool


def _tool_choice(decls: list[FunctionDecl], choice: Any, parallel: Any) -> tuple[list[FunctionDecl], Any]:
    decls, resolved = resolve_tool_choice(decls, choice)
    out: dict[str, Any] | None = None
    if resolved is not None and resolved.function is not None:
        out = {"type": "tool", "name": resolved.function}
    elif resolved is not None:
        out = {"type": {"auto": "auto", "none": "none", "required": "any"}[resolved.mode]}
    if parallel is False and decls:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return decls, out


def _format(text: Any) -> dict[str, Any] | None:
    fmt = text_format(text)
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "json_schema":
        return {"type": "json_schema", "schema": json_schema_of(fmt)}
    raise unsupported_parameter(
        "text.format", f"(type '{kind}') is not supported by Anthropic: use json_schema."
    )


# -- messages ---------------------------------------------------------------------------------


def anthropic_messages(
    items: list[dict[str, Any]], instructions: Any, *, keep_thinking: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Input items -> (system text blocks, messages) per translation.md C.1."""
    system: list[dict[str, Any]] = []
    intro, items = split_instructions(items, instructions)
    if intro is not None:
        _text(system, intro)
    # System/developer messages are hoisted, so they do not end a tool-call turn here.
    check_tool_pairs(items, turn_roles=frozenset({"user"}))
    msgs: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if msgs and msgs[-1]["role"] == role:
            msgs[-1]["content"] += blocks
        else:
            msgs.append({"role": role, "content": blocks})

    for i, item in enumerate(items):
        param = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role in ("system", "developer"):
                refusal = "Anthropic system prompts hold text only."
                for text in system_texts(item.get("content"), param, refusal):
                    _text(system, text)
            elif role == "assistant":
                add("assistant", _assistant_blocks(item.get("content"), param))
            else:
                add("user", _user_blocks(item.get("content"), param))
        elif kind == "function_call":
            add(
                "assistant",
                [
                    {
                        "type": "tool_use",
                        "id": str(item.get("call_id")),
                        "name": call_name(item),
                        "input": arguments_object(item.get("arguments")),
                    }
                ],
            )
        elif kind == "function_call_output":
            add("user", [_tool_result(item, param)])
        elif kind == "reasoning":
            block = decode_envelope(item.get("encrypted_content"))
            if block is not None and keep_thinking:
                add("assistant", [block])
        else:
            raise unsupported_parameter(param, f"(item type '{kind}') cannot be sent to Anthropic.")
    for msg in msgs:
        if msg["role"] == "user":
            # Anthropic wants the tool_result blocks first; text the user added comes after.
            blocks = msg["content"]
            msg["content"] = [b for b in blocks if b["type"] == "tool_result"] + [
                b for b in blocks if b["type"] != "tool_result"
            ]
    if not msgs:
        raise invalid_param("input", "Anthropic needs at least one non-empty user message in 'input'.")
    if msgs[0]["role"] != "user":
        # Histories of real clients may open with assistant turns (a greeting, a resumed
        # session's commentary); Anthropic requires a user turn first.
        msgs.insert(0, {"role": "user", "content": [{"type": "text", "text": HISTORY_PLACEHOLDER}]})
    return system, msgs


def _text(blocks: list[dict[str, Any]], text: str) -> None:
    # Anthropic rejects empty and whitespace-only text blocks; they carry nothing.
    if text.strip():
        blocks.append({"type": "text", "text": text})


def _assistant_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for text in assistant_texts(content, param):
        _text(blocks, text)
    return blocks


def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(message_parts(content)):
        pparam = f"{param}.content[{j}]"
        kind = part.get("type")
        if kind in TEXT_PARTS:
            _text(blocks, str(part.get("text") or ""))
        elif kind == "input_image":
            blocks.append(_image(part, pparam))
        elif kind == "input_file":
            blocks.append(_document(part, pparam))
        else:
            raise unsupported_parameter(pparam, f"(type '{kind}') cannot be sent to Anthropic.")
    return blocks


def _image(part: dict[str, Any], param: str) -> dict[str, Any]:
    url = part.get("image_url")
    if isinstance(url, str) and url:
        data = parse_data_url(url)
        if data is not None:
            return {"type": "image", "source": {"type": "base64", "media_type": data[0], "data": data[1]}}
        if url.startswith(("https://", "http://")):
            return {"type": "image", "source": {"type": "url", "url": url}}
        raise invalid_param(f"{param}.image_url", "Expected an http(s) URL or a base64 data URL.")
    if part.get("file_id") is not None:
        raise unsupported_parameter(
            f"{param}.file_id", "is not supported by Anthropic: send a URL or data URL."
        )
    raise invalid_param(
        f"{param}.image_url", "An input_image needs 'image_url'.", "missing_required_parameter"
    )


def _document(part: dict[str, Any], param: str) -> dict[str, Any]:
    block: dict[str, Any]
    file_data = part.get("file_data")
    filename = part.get("filename") if isinstance(part.get("filename"), str) else None
    if isinstance(file_data, str):
        parsed = parse_data_url(file_data)
        # A bare base64 payload carries no media type: Responses clients send PDFs that way.
        media, data = parsed if parsed is not None else ("application/pdf", file_data)
        if media == "application/pdf":
            block = {"type": "document", "source": {"type": "base64", "media_type": media, "data": data}}
        elif media == "text/plain":
            try:
                text = base64.b64decode(data, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise invalid_param(
                    f"{param}.file_data", "The text file is not valid base64 UTF-8."
                ) from None
            block = {"type": "document", "source": {"type": "text", "media_type": media, "data": text}}
        else:
            raise unsupported_parameter(
                f"{param}.file_data", f"({media}): Anthropic reads PDF and plain-text files."
            )
    elif isinstance(part.get("file_url"), str):
        block = {"type": "document", "source": {"type": "url", "url": part["file_url"]}}
    elif part.get("file_id") is not None:
        raise unsupported_parameter(f"{param}.file_id", "is not supported by Anthropic: send file_data.")
    else:
        raise invalid_param(
            param, "An input_file needs 'file_data' or 'file_url'.", "missing_required_parameter"
        )
    if filename:
        block["title"] = filename
    return block


def _tool_result(item: dict[str, Any], param: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": str(item.get("call_id"))}
    output = item.get("output")
    if isinstance(output, str):
        if output:
            block["content"] = output
    elif isinstance(output, list):
        content: list[dict[str, Any]] = []
        for j, part in enumerate(message_parts(output)):
            kind = part.get("type")
            if kind in TEXT_PARTS:
                _text(content, str(part.get("text") or ""))
            elif kind == "input_image":
                content.append(_image(part, f"{param}.output[{j}]"))
            else:
                raise unsupported_parameter(f"{param}.output[{j}]", f"(type '{kind}') in a tool output.")
        if content:
            block["content"] = content
    elif output is not None:
        raise invalid_param(f"{param}.output", f"Invalid type for '{param}.output'.", "invalid_type")
    return block
