"""Responses request -> Chat Completions request body (translation.md section A).

Role: build the JSON body of ``POST {base}/chat/completions`` from an already expanded Responses
request (``call.input`` holds the effective items). Must not add auth headers (the upstream layer
does), read settings other than :class:`DialectOptions`, or perform I/O.

What happens to each Responses field:

==========================  ==================================================================
``model``                   ``call.model`` (the routed upstream model name)
``instructions``            first message, role ``options.system_role``
``input``                   ``messages`` (A.1; see :func:`chat_messages`)
``tools``                   nested ``{"type":"function","function":{...}}``; namespace members
                            flattened (:func:`common.flat_name`); hosted tools -> 400 ``tools``
                            or dropped when ``options.drop_unsupported_tools``
``tool_choice``             A.3; ``allowed_tools`` -> the tool list filtered to the allowed set
                            + ``mode`` (works on every server, OpenAI included)
``parallel_tool_calls``     forwarded when tools are sent (OpenAI rejects it without tools)
``text.format``             ``response_format`` (A.4); ``{"type":"text"}`` -> omitted
``max_output_tokens``       ``options.max_tokens_field``
``reasoning.effort``        ``reasoning_effort`` when ``options.send_reasoning_effort``
``temperature`` ``top_p`` ``presence_penalty`` ``frequency_penalty`` ``seed`` ``stop``
``logit_bias`` ``safety_identifier`` ``user``   forwarded unchanged
``stream``                  always ``true`` + ``stream_options.include_usage`` (we aggregate)
==========================  ==================================================================

Rejected with 400 ``unsupported_parameter`` (dropping them would silently change the answer):
``prompt`` (stored prompt templates live at OpenAI), ``top_logprobs`` > 0 (logprobs are not
translated), ``moderation``, hosted tools (unless configured to drop), hosted ``tool_choice``,
``input_file.file_url``, ``file_id`` images, unknown item types (``item_reference`` included: the
proxy resolves those before a dialect sees them).

Dropped, with the reason:

- ``store``, ``background``, ``include``, ``previous_response_id``, ``conversation``,
  ``stream_options``, ``client_metadata``: handled by the proxy itself.
- ``truncation``: the proxy never truncates; ``"auto"`` behaves as ``"disabled"`` (an overflowing
  context is the provider's 400).
- ``metadata``, ``prompt_cache_key``, ``prompt_cache_retention``, ``prompt_cache_options``,
  ``service_tier``: OpenAI-only routing/caching hints; OSS servers reject the unknown keys and
  they do not change the generated text.
- ``max_tool_calls``: caps hosted tool calls, which this dialect never sends.
- ``reasoning.summary``: no Chat equivalent; reasoning text is streamed as ``reasoning_text``.
- ``text.verbosity``: OpenAI-only Chat field (a length hint); OSS servers reject unknown keys.
- ``context_management``: server-side compaction is an OpenAI feature.
- reasoning input items: Chat has no field for prior reasoning (most chat templates drop it).
- assistant ``refusal`` parts: sent as plain assistant text (OSS servers have no ``refusal``).
"""

from __future__ import annotations

from typing import Any

import orjson

from wsproxy.dialects.base import DialectOptions, UpstreamCall
from wsproxy.dialects.common import (
    TEXT_PARTS,
    FunctionDecl,
    assistant_texts,
    call_name,
    check_tool_pairs,
    function_tools,
    message_parts,
    reject_unexpressible,
    resolve_tool_choice,
    split_instructions,
    text_format,
)
from wsproxy.errors import InvalidRequest, invalid_param, unsupported_parameter

# Optional sampling fields that have the same name and meaning in Chat Completions.
_PASSTHROUGH = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "logit_bias",
    "safety_identifier",
    "user",
)


def build_chat_body(call: UpstreamCall) -> dict[str, Any]:
    body = call.body
    opts = call.options
    reject_unexpressible(body, "a Chat Completions upstream")
    out: dict[str, Any] = {
        "model": call.model,
        "messages": chat_messages(call.input, body.get("instructions"), opts),
    }
    decls = function_tools(body.get("tools"), drop_unsupported=opts.drop_unsupported_tools)
    decls, choice = tool_choice(decls, body.get("tool_choice"))
    if decls:
        out["tools"] = [chat_tool(d) for d in decls]
        if choice is not None:
            out["tool_choice"] = choice
        if isinstance(body.get("parallel_tool_calls"), bool):
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    fmt = response_format(body.get("text"))
    if fmt is not None:
        out["response_format"] = fmt
    if body.get("max_output_tokens") is not None:
        out[opts.max_tokens_field] = body["max_output_tokens"]
    reasoning = body.get("reasoning")
    if opts.send_reasoning_effort and isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        out["reasoning_effort"] = reasoning["effort"]
    for key in _PASSTHROUGH:
        if body.get(key) is not None:
            out[key] = body[key]
    out["stream"] = True
    out["stream_options"] = {"include_usage": True}
    return out


# -- tools ------------------------------------------------------------------------------------


def chat_tool(decl: FunctionDecl) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": decl.name}
    if decl.description is not None:
        fn["description"] = decl.description
    fn["parameters"] = decl.parameters
    # Responses tools are strict by default while Chat's are not: copy the flag when the client
    # set it. When absent we send nothing, so a non-strict-compatible schema is not a 400.
    if decl.strict is not None:
        fn["strict"] = decl.strict
    return {"type": "function", "function": fn}


def tool_choice(decls: list[FunctionDecl], choice: Any) -> tuple[list[FunctionDecl], Any]:
    """(the tools to send, the Chat ``tool_choice`` or None to omit it)."""
    decls, resolved = resolve_tool_choice(decls, choice)
    if resolved is None:
        return decls, None
    if resolved.function is not None:
        return decls, {"type": "function", "function": {"name": resolved.function}}
    return decls, resolved.mode


def response_format(text: Any) -> dict[str, Any] | None:
    fmt = text_format(text)
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise invalid_param(
                "text.format", "A json_schema format needs 'name' and 'schema'.", "missing_required_parameter"
            )
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise unsupported_parameter("text.format", f"(type '{kind}') is not supported.")


# -- messages ---------------------------------------------------------------------------------


def chat_messages(
    items: list[dict[str, Any]], instructions: Any, opts: DialectOptions
) -> list[dict[str, Any]]:
    """Input items -> Chat messages (translation.md A.1)."""
    msgs: list[dict[str, Any]] = []
    intro, items = split_instructions(items, instructions)
    if intro:
        msgs.append({"role": opts.system_role, "content": intro})
    check_tool_pairs(items, turn_roles=frozenset({"user", "system", "developer"}))
    # Chat tool messages carry text only: images a tool returned go in one user message right after
    # the run of tool messages (a user message in between would break the tool-call sequence).
    tool_images: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind != "function_call_output" and tool_images:
            msgs.append({"role": "user", "content": tool_images})
            tool_images = []
        if kind == "message":
            _message(msgs, item, f"input[{i}]", opts)
        elif kind == "function_call":
            tail = msgs[-1] if msgs and msgs[-1]["role"] == "assistant" else None
            if tail is None:
                tail = {"role": "assistant", "content": None}
                msgs.append(tail)
            arguments = item.get("arguments")
            if isinstance(arguments, dict):
                arguments = orjson.dumps(arguments).decode()
            tail.setdefault("tool_calls", []).append(
                {
                    "id": str(item.get("call_id")),
                    "type": "function",
                    # Chat templates parse the arguments: an empty string is not JSON.
                    "function": {"name": call_name(item), "arguments": arguments or "{}"},
                }
            )
        elif kind == "function_call_output":
            text, images = _tool_output(item.get("output"), f"input[{i}].output")
            msgs.append({"role": "tool", "tool_call_id": str(item.get("call_id")), "content": text})
            tool_images += images
        elif kind == "reasoning":
            continue
        else:
            raise unsupported_parameter(
                f"input[{i}]", f"(item type '{kind}') cannot be sent to a Chat Completions upstream."
            )
    if tool_images:
        msgs.append({"role": "user", "content": tool_images})
    return msgs


def _message(msgs: list[dict[str, Any]], item: dict[str, Any], param: str, opts: DialectOptions) -> None:
    role = item.get("role")
    content = item.get("content")
    if role == "assistant":
        text = content if isinstance(content, str) else _assistant_text(content, param)
        tail = msgs[-1] if msgs else None
        if tail is not None and tail["role"] == "assistant" and tail.get("tool_calls"):
            # Text after the calls of the same turn: Chat holds both in one assistant message.
            tail["content"] = (tail.get("content") or "") + text
        else:
            msgs.append({"role": "assistant", "content": text})
        return
    if role in ("system", "developer"):
        msgs.append({"role": opts.system_role, "content": _user_content(content, param)})
    elif role == "user":
        msgs.append({"role": "user", "content": _user_content(content, param)})
    else:
        raise invalid_param(f"{param}.role", f"Invalid value for '{param}.role'.")


def _assistant_text(content: Any, param: str) -> str:
    return "".join(assistant_texts(content, param))


def _user_content(content: Any, param: str) -> str | list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(message_parts(content)):
        pparam = f"{param}.content[{j}]"
        kind = part.get("type")
        if kind in TEXT_PARTS:
            parts.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "input_image":
            parts.append(_image(part, pparam))
        elif kind == "input_file":
            parts.append(_file(part, pparam))
        else:
            raise unsupported_parameter(
                pparam, f"(type '{kind}') cannot be sent to a Chat Completions upstream."
            )
    if all(p["type"] == "text" for p in parts):
        # Plain strings work with every chat template; servers join text parts with "\n" too.
        return "\n".join(p["text"] for p in parts)
    return parts


def _image(part: dict[str, Any], param: str) -> dict[str, Any]:
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        if part.get("file_id") is not None:
            raise unsupported_parameter(
                f"{param}.file_id", "is not supported: send the image as a URL or data URL."
            )
        raise invalid_param(
            f"{param}.image_url", "An input_image needs 'image_url'.", "missing_required_parameter"
        )
    image: dict[str, Any] = {"url": url}
    if isinstance(part.get("detail"), str):
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _file(part: dict[str, Any], param: str) -> dict[str, Any]:
    file: dict[str, Any] = {}
    if isinstance(part.get("file_data"), str):
        file["file_data"] = part["file_data"]
    elif isinstance(part.get("file_id"), str):
        file["file_id"] = part["file_id"]
    elif part.get("file_url") is not None:
        raise unsupported_parameter(
            f"{param}.file_url", "is not supported by Chat Completions: send file_data."
        )
    else:
        raise invalid_param(
            param, "An input_file needs 'file_data' or 'file_id'.", "missing_required_parameter"
        )
    if isinstance(part.get("filename"), str):
        file["filename"] = part["filename"]
    return {"type": "file", "file": file}


def _tool_output(output: Any, param: str) -> tuple[str, list[dict[str, Any]]]:
    """A function_call_output's ``output`` -> (text for the tool message, image parts)."""
    if output is None:
        return "", []
    if isinstance(output, str):
        return output, []
    if not isinstance(output, list):
        raise InvalidRequest(f"Invalid type for '{param}'.", param=param, code="invalid_type")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for j, part in enumerate(message_parts(output)):
        kind = part.get("type")
        if kind in TEXT_PARTS:
            texts.append(str(part.get("text") or ""))
        elif kind == "input_image":
            images.append(_image(part, f"{param}[{j}]"))
        else:
            raise unsupported_parameter(f"{param}[{j}]", f"(type '{kind}') in a tool output.")
    return "\n".join(texts), images
