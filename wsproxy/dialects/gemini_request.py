"""Responses request -> Gemini ``GenerateContentRequest`` (gemini.md sections 2, 5, 7.1, 8).

Role: build the path and JSON body of ``POST {base}/models/{model}:streamGenerateContent?alt=sse``
from an already expanded Responses request, and own the envelope that carries Gemini thought
signatures through a Responses reasoning item's ``encrypted_content``. Must not add the
``x-goog-api-key`` header (the upstream layer does), perform I/O or read anything but
:class:`DialectOptions`.

What happens to each Responses field:

==========================  ==================================================================
``model``                   URL path ``models/{model}`` (validated: no ``..``, no query chars)
``instructions`` + every    ``systemInstruction.parts[].text`` in input order (Gemini contents
system/developer message    only know ``user`` and ``model``)
``input``                   ``contents``: user -> ``user``, assistant/function_call/reasoning ->
                            ``model``; consecutive same-role items merged into one Content
``input_image``/``_file``   data URL or base64 -> ``inlineData``; http(s) URL and ``files/...``
                            ids -> ``fileData``; ``input_audio`` -> ``inlineData``
``function_call``           ``functionCall{id?, name, args}`` + its restored ``thoughtSignature``
``function_call_output``    ``functionResponse{id?, name, response:{"output"}}``, name looked
                            up by ``call_id``; all outputs of a call turn in one user Content,
                            in call order, before any user text
``reasoning``               only ``gemini:`` envelopes: signed thought parts replayed, call and
                            text signatures put back on their parts; others dropped
``tools``                   ``tools[0].functionDeclarations[{name, description,
                            parametersJsonSchema}]`` (``$schema`` stripped); names Gemini
                            refuses are renamed (:func:`gemini_name`) and mapped back
``tool_choice``             auto/none/required -> AUTO/NONE/ANY; function -> ANY +
                            ``allowedFunctionNames``; allowed_tools -> filtered declarations +
                            AUTO, or ANY + ``allowedFunctionNames``
``text.format``             json_schema -> ``responseMimeType: application/json`` +
                            ``responseJsonSchema``; json_object -> the MIME type only
``max_output_tokens``       ``maxOutputTokens`` (both count thinking tokens)
``temperature``/``top_p``   ``temperature``/``topP``; ``seed`` -> ``seed``; ``stop`` ->
                            ``stopSequences`` (at most 5)
``reasoning.effort``        ``thinkingConfig.thinkingLevel`` on Gemini 3+, ``thinkingBudget``
                            before (:func:`thinking_config`)
``reasoning.summary``       ``thinkingConfig.includeThoughts: true``
==========================  ==================================================================

Dropped, with the reason: ``parallel_tool_calls`` (no Gemini equivalent), ``presence_penalty`` /
``frequency_penalty`` (several Gemini models answer 400 "Penalty is not enabled"), ``user`` /
``safety_identifier`` (no field), ``input_image.detail``, everything the proxy handles itself
(store, previous_response_id, conversation, metadata, truncation, background...). Rejected
(400): ``prompt``, ``top_logprobs``, ``moderation``, hosted tools (unless configured to drop),
OpenAI ``file_id``s. A history that opens with the model gets a placeholder user turn first.

Thought signatures (gemini.md section 5): a signature must go back on the part it came on. The
stream translator puts each one in a reasoning item whose ``encrypted_content`` is
``gemini:`` + base64(JSON ``{"v":1,"sigs":[entry...]}``), an entry being one of
``{"on":"thought","text","sig"}`` (a signed thought run, replayed as one thought part),
``{"on":"call","call_id","sig"}`` (put on that call's ``functionCall`` part) or
``{"on":"text","sig","empty"}`` (put on the text part just before it, or an empty text part).
A current-turn call step left without any signature (history from another provider, a client that
dropped reasoning items) gets Google's documented ``skip_thought_signature_validator``.
"""

from __future__ import annotations

import itertools
import re
from typing import Any
from urllib.parse import quote

from wsproxy.dialects.base import DialectOptions, UpstreamCall
from wsproxy.dialects.common import (
    HISTORY_PLACEHOLDER,
    TEXT_PARTS,
    FunctionDecl,
    ToolChoice,
    arguments_object,
    assistant_texts,
    call_name,
    check_tool_pairs,
    encode_envelope,
    envelope_value,
    function_tools,
    json_schema_of,
    message_parts,
    namespace_map,
    parse_data_url,
    reject_unexpressible,
    resolve_tool_choice,
    split_instructions,
    system_texts,
    text_format,
)
from wsproxy.errors import InvalidRequest, invalid_param, unsupported_parameter

ENVELOPE_PREFIX = "gemini:"
# Call ids this proxy made up for calls Gemini sent without one: never sent back as ``id``.
SYNTH_CALL_PREFIX = "call_gemini"
DUMMY_SIGNATURE = "skip_thought_signature_validator"
MAX_STOP_SEQUENCES = 5

# reasoning.effort -> thinkingBudget (Gemini 2.x) and thinkingLevel (Gemini 3+).
THINKING_BUDGETS = {
    "none": 0, "minimal": 512, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 24576, "max": 32768,
}  # fmt: skip
THINKING_LEVELS = {
    "none": "MINIMAL", "minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH",
    "xhigh": "HIGH", "max": "HIGH",
}  # fmt: skip
MIN_THINKING_BUDGET = 128

_MODEL = re.compile(r"^(?:(?:models|tunedModels)/)?[A-Za-z0-9][A-Za-z0-9._@-]*$")
_FAMILY = re.compile(r"^(?:models/)?gemini-(\d+)")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")
_EXTENSION_TYPES = {
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
    "webp": "image/webp", "heic": "image/heic", "heif": "image/heif", "pdf": "application/pdf",
    "txt": "text/plain", "mp3": "audio/mp3", "wav": "audio/wav", "mp4": "video/mp4",
}  # fmt: skip


# -- names and paths ------------------------------------------------------------------------------


def model_path(model: str, *, stream: bool = True) -> str:
    """``/models/{model}:streamGenerateContent?alt=sse`` (or ``:generateContent``)."""
    if not _MODEL.match(model) or ".." in model:
        raise invalid_param("model", f"The model name '{model}' is not a valid Gemini model name.")
    path = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/{quote(path, safe='/@')}:{method}"


def gemini_name(name: str) -> str:
    """The function name Gemini accepts (starts with a letter or ``_``; ``[A-Za-z0-9_.:-]``):
    other characters become ``_`` and a leading digit or ``-`` gets a ``_`` in front."""
    out = _NAME_CHARS.sub("_", name)
    if not out or not (out[0].isascii() and (out[0].isalpha() or out[0] == "_")):
        out = "_" + out
    return out


def declared_names(tools: Any) -> dict[str, tuple[str | None, str]]:
    """Gemini function name -> (namespace, name) the client declared. Never raises: the
    translator runs after ``build_request`` validated the same tools."""
    try:
        decls = function_tools(tools, drop_unsupported=True)
    except InvalidRequest:
        return {}
    members = namespace_map(tools)
    out: dict[str, tuple[str | None, str]] = {}
    for decl in decls:
        ns, name = members.get(decl.name, (None, decl.name))
        out[gemini_name(decl.name)] = (ns, name)
    return out


# -- thought-signature envelope -------------------------------------------------------------------


def encode_signatures(entries: list[dict[str, Any]]) -> str:
    return encode_envelope(ENVELOPE_PREFIX, {"v": 1, "sigs": entries})


def decode_signatures(encrypted: Any) -> list[dict[str, Any]]:
    """The valid entries of a ``gemini:`` envelope; ``[]`` for another provider's reasoning or a
    damaged envelope (dropped, as other providers' reasoning is)."""
    value = envelope_value(ENVELOPE_PREFIX, encrypted)
    sigs = value.get("sigs") if isinstance(value, dict) else None
    out: list[dict[str, Any]] = []
    for entry in sigs if isinstance(sigs, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("sig"), str) or not entry["sig"]:
            continue
        on = entry.get("on")
        if on == "thought" and isinstance(entry.get("text"), str):
            out.append({"on": "thought", "text": entry["text"], "sig": entry["sig"]})
        elif on == "call" and isinstance(entry.get("call_id"), str):
            out.append({"on": "call", "call_id": entry["call_id"], "sig": entry["sig"]})
        elif on == "text":
            out.append({"on": "text", "sig": entry["sig"], "empty": entry.get("empty") is True})
    return out


# -- body -----------------------------------------------------------------------------------------


def build_gemini_body(call: UpstreamCall) -> dict[str, Any]:
    body = call.body
    opts = call.options
    reject_unexpressible(body, "Gemini")
    system, contents = gemini_contents(call.input, body.get("instructions"))
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    decls = function_tools(body.get("tools"), drop_unsupported=opts.drop_unsupported_tools)
    decls, config = _tool_config(decls, body.get("tool_choice"))
    if decls:
        out["tools"] = [{"functionDeclarations": [_declaration(d) for d in decls]}]
        if config is not None:
            out["toolConfig"] = {"functionCallingConfig": config}
    generation = _generation_config(body, call.model, opts)
    if generation:
        out["generationConfig"] = generation
    return out


def _generation_config(body: dict[str, Any], model: str, opts: DialectOptions) -> dict[str, Any]:
    gen: dict[str, Any] = {}
    cap = body.get("max_output_tokens")
    if isinstance(cap, int) and not isinstance(cap, bool):
        gen["maxOutputTokens"] = cap
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed")):
        if body.get(src) is not None:
            gen[dst] = body[src]
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    if stops:
        if len(stops) > MAX_STOP_SEQUENCES:
            raise invalid_param("stop", f"Gemini accepts at most {MAX_STOP_SEQUENCES} stop sequences.")
        gen["stopSequences"] = [str(s) for s in stops]
    gen.update(_format(body.get("text")))
    thinking = thinking_config(body, model, opts)
    if thinking:
        gen["thinkingConfig"] = thinking
    return gen


def thinking_config(body: dict[str, Any], model: str, opts: DialectOptions) -> dict[str, Any]:
    """``reasoning`` -> ``thinkingConfig``. Gemini 3+ takes ``thinkingLevel`` (a budget of 0 is a
    400 there, and Pro refuses MINIMAL); 2.x takes ``thinkingBudget``. ``options.extra
    ["gemini_thinking"]`` = ``"level"`` / ``"budget"`` overrides the guess from the model name.
    The budget stays at most half of ``max_output_tokens``: Gemini, like Responses, counts
    thinking inside the output cap, and a budget that eats it all ends in MAX_TOKENS with no text.
    """
    reasoning = body.get("reasoning")
    if not isinstance(reasoning, dict):
        return {}
    effort = reasoning.get("effort")
    summary = reasoning.get("summary")
    out: dict[str, Any] = {}
    if effort is not None:
        if effort not in THINKING_BUDGETS:
            raise invalid_param("reasoning.effort", f"Invalid value for 'reasoning.effort': '{effort}'.")
        style = opts.extra.get("gemini_thinking")
        if style not in ("level", "budget"):
            family = _FAMILY.match(model)
            style = "level" if family is not None and int(family.group(1)) >= 3 else "budget"
        if style == "level":
            level = THINKING_LEVELS[effort]
            if level == "MINIMAL" and "-pro" in model:
                level = "LOW"
            out["thinkingLevel"] = level
        else:
            budget = THINKING_BUDGETS[effort]
            cap = body.get("max_output_tokens")
            if budget and isinstance(cap, int):
                budget = min(budget, max(MIN_THINKING_BUDGET, cap // 2))
            out["thinkingBudget"] = budget
    if isinstance(summary, str) and summary != "none" and effort != "none":
        out["includeThoughts"] = True
    return out


def _declaration(decl: FunctionDecl) -> dict[str, Any]:
    out: dict[str, Any] = {"name": gemini_name(decl.name)}
    if decl.description:
        out["description"] = decl.description
    out["parametersJsonSchema"] = {k: v for k, v in decl.parameters.items() if k != "$schema"}
    return out


def _tool_config(decls: list[FunctionDecl], choice: Any) -> tuple[list[FunctionDecl], Any]:
    decls, resolved = resolve_tool_choice(decls, choice)
    return decls, _function_calling_config(decls, resolved)


def _function_calling_config(decls: list[FunctionDecl], choice: ToolChoice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice.function is not None:
        return {"mode": "ANY", "allowedFunctionNames": [gemini_name(choice.function)]}
    if choice.allowed and choice.mode == "required":
        return {"mode": "ANY", "allowedFunctionNames": [gemini_name(d.name) for d in decls]}
    return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice.mode]}


def _format(text: Any) -> dict[str, Any]:
    fmt = text_format(text)
    if fmt is None:
        return {}
    kind = fmt.get("type")
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        clean = {k: v for k, v in json_schema_of(fmt).items() if k != "$schema"}
        return {"responseMimeType": "application/json", "responseJsonSchema": clean}
    raise invalid_param("text.format.type", f"Invalid value for 'text.format.type': '{kind}'.")


# -- contents -------------------------------------------------------------------------------------


class _Contents:
    """Gemini contents under construction: consecutive same-role parts merged into one Content.

    Parts of calls and responses carry a private ``_call`` key (their call_id) until the end,
    for ordering responses and placing signatures."""

    def __init__(self) -> None:
        self.contents: list[dict[str, Any]] = []

    def add(self, role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if self.contents and self.contents[-1]["role"] == role:
            self.contents[-1]["parts"] += parts
        else:
            self.contents.append({"role": role, "parts": parts})

    def last_model_text(self) -> dict[str, Any] | None:
        """The last text part of the model Content at the tail, if the tail is the model's."""
        if not self.contents or self.contents[-1]["role"] != "model":
            return None
        for part in reversed(self.contents[-1]["parts"]):
            if "text" in part and not part.get("thought"):
                return part if "thoughtSignature" not in part else None
            if "functionCall" in part:
                return None
        return None


def gemini_contents(
    items: list[dict[str, Any]], instructions: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Input items -> (systemInstruction parts, contents)."""
    system: list[dict[str, Any]] = []
    intro, items = split_instructions(items, instructions)
    if intro is not None:
        _text(system, intro)
    check_tool_pairs(items, turn_roles=frozenset({"user"}))
    out = _Contents()
    names: dict[str, str] = {}  # call_id -> Gemini function name
    call_sigs: dict[str, str] = {}  # call_id -> thought signature from a reasoning envelope
    for i, item in enumerate(items):
        param = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role in ("system", "developer"):
                refusal = "Gemini system instructions hold text only."
                for text in system_texts(item.get("content"), param, refusal):
                    _text(system, text)
            elif role == "assistant":
                out.add("model", _assistant_parts(item.get("content"), param))
            else:
                out.add("user", _user_parts(item.get("content"), param))
        elif kind == "function_call":
            call_id = str(item.get("call_id"))
            name = gemini_name(call_name(item))
            names[call_id] = name
            fc: dict[str, Any] = {"name": name, "args": arguments_object(item.get("arguments"))}
            if not call_id.startswith(SYNTH_CALL_PREFIX):
                fc["id"] = call_id
            call_part: dict[str, Any] = {"functionCall": fc, "_call": call_id}
            if call_id in call_sigs:
                call_part["thoughtSignature"] = call_sigs[call_id]
            out.add("model", [call_part])
        elif kind == "function_call_output":
            call_id = str(item.get("call_id"))
            out.add("user", [_function_response(item, names[call_id], call_id, param)])
        elif kind == "reasoning":
            _replay_signatures(out, decode_signatures(item.get("encrypted_content")), call_sigs)
        else:
            raise unsupported_parameter(param, f"(item type '{kind}') cannot be sent to Gemini.")
    contents = out.contents
    _order_responses(contents)
    _fill_current_turn_signatures(contents)
    for content in contents:
        for part in content["parts"]:
            part.pop("_call", None)
    if not contents:
        raise invalid_param("input", "Gemini needs at least one non-empty user message in 'input'.")
    if contents[0]["role"] != "user":
        # Real clients send histories that open with the assistant (a greeting, a resumed
        # session); Gemini refuses those, so a placeholder user turn goes first, as for Anthropic.
        contents.insert(0, {"role": "user", "parts": [{"text": HISTORY_PLACEHOLDER}]})
    return system, contents


def _replay_signatures(out: _Contents, entries: list[dict[str, Any]], call_sigs: dict[str, str]) -> None:
    for entry in entries:
        if entry["on"] == "thought":
            out.add("model", [{"text": entry["text"], "thought": True, "thoughtSignature": entry["sig"]}])
        elif entry["on"] == "call":
            call_sigs[entry["call_id"]] = entry["sig"]
        else:
            target = None if entry["empty"] else out.last_model_text()
            if target is not None:
                target["thoughtSignature"] = entry["sig"]
            else:
                out.add("model", [{"text": "", "thoughtSignature": entry["sig"]}])


def _order_responses(contents: list[dict[str, Any]]) -> None:
    """Gemini pairs responses with calls by position: a user Content that answers a call turn
    gets its functionResponse parts in the calls' order, before any text the user added."""
    for prev, content in itertools.pairwise(contents):
        if content["role"] != "user" or prev["role"] != "model":
            continue
        order = {p["_call"]: n for n, p in enumerate(prev["parts"]) if "functionCall" in p}
        responses = [p for p in content["parts"] if "functionResponse" in p]
        if not responses:
            continue
        responses.sort(key=lambda p: order.get(p["_call"], len(order)))
        content["parts"] = responses + [p for p in content["parts"] if "functionResponse" not in p]


def _fill_current_turn_signatures(contents: list[dict[str, Any]]) -> None:
    """Gemini 3 validates the current turn (everything after the last user Content with ordinary
    content): the first call of every step needs a signature. A step whose calls carry none
    (history from elsewhere) gets the documented validator-skipping value."""
    start = 0
    for n, content in enumerate(contents):
        if content["role"] == "user" and any("functionResponse" not in p for p in content["parts"]):
            start = n
    for content in contents[start:]:
        if content["role"] != "model":
            continue
        calls = [p for p in content["parts"] if "functionCall" in p]
        if calls and not any("thoughtSignature" in p for p in calls):
            calls[0]["thoughtSignature"] = DUMMY_SIGNATURE


def _text(parts: list[dict[str, Any]], text: str) -> None:
    # Gemini answers 400 to empty text parts ("contents.parts must not be empty").
    if text:
        parts.append({"text": text})


def _assistant_parts(content: Any, param: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for text in assistant_texts(content, param):
        _text(parts, text)
    return parts


def _user_parts(content: Any, param: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(message_parts(content)):
        pparam = f"{param}.content[{j}]"
        kind = part.get("type")
        if kind in TEXT_PARTS:
            _text(parts, str(part.get("text") or ""))
        elif kind in ("input_image", "input_file", "input_audio"):
            parts.append(media_part(part, pparam))
        else:
            raise unsupported_parameter(pparam, f"(type '{kind}') cannot be sent to Gemini.")
    return parts


def _guess_type(url: str) -> str | None:
    path = url.split("?", 1)[0].split("#", 1)[0]
    ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return _EXTENSION_TYPES.get(ext)


def _file_data(uri: str, mime: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"fileUri": uri}
    if mime:
        data["mimeType"] = mime
    return {"fileData": data}


def _gemini_file(file_id: Any, param: str) -> dict[str, Any]:
    """A ``file_id`` that names a Gemini Files API file (``files/abc`` or its full URI)."""
    if isinstance(file_id, str) and (file_id.startswith("files/") or file_id.startswith("https://")):
        return _file_data(file_id, None)
    raise unsupported_parameter(
        f"{param}.file_id",
        "must name a Gemini file ('files/...' or its URI): Gemini cannot read OpenAI file ids.",
    )


def media_part(part: dict[str, Any], param: str) -> dict[str, Any]:
    """An image, file or audio input part -> ``inlineData`` or ``fileData``."""
    kind = part.get("type")
    if kind == "input_audio":
        nested = part.get("input_audio")
        audio: dict[str, Any] = nested if isinstance(nested, dict) else part
        data, fmt = audio.get("data"), audio.get("format")
        if not isinstance(data, str) or not data:
            raise invalid_param(param, "An input_audio needs base64 'data'.", "missing_required_parameter")
        return {"inlineData": {"mimeType": f"audio/{fmt if isinstance(fmt, str) else 'wav'}", "data": data}}
    if kind == "input_image":
        url = part.get("image_url")
        if isinstance(url, str) and url:
            parsed = parse_data_url(url)
            if parsed is not None:
                return {"inlineData": {"mimeType": parsed[0], "data": parsed[1]}}
            if url.startswith(("https://", "http://")):
                return _file_data(url, _guess_type(url) or "image/jpeg")
            raise invalid_param(f"{param}.image_url", "Expected an http(s) URL or a base64 data URL.")
        if part.get("file_id") is not None:
            return _gemini_file(part.get("file_id"), param)
        raise invalid_param(
            f"{param}.image_url", "An input_image needs 'image_url'.", "missing_required_parameter"
        )
    file_data = part.get("file_data")
    if isinstance(file_data, str) and file_data:
        parsed = parse_data_url(file_data)
        filename = part.get("filename")
        guessed = _guess_type(filename) if isinstance(filename, str) else None
        # A bare base64 payload carries no media type: Responses clients send PDFs that way.
        mime, data = parsed if parsed is not None else (guessed or "application/pdf", file_data)
        return {"inlineData": {"mimeType": mime, "data": data}}
    if isinstance(part.get("file_url"), str) and part["file_url"]:
        return _file_data(part["file_url"], _guess_type(part["file_url"]))
    if part.get("file_id") is not None:
        return _gemini_file(part.get("file_id"), param)
    raise invalid_param(param, "An input_file needs 'file_data' or 'file_url'.", "missing_required_parameter")


def _function_response(item: dict[str, Any], name: str, call_id: str, param: str) -> dict[str, Any]:
    output = item.get("output")
    media: list[dict[str, Any]] = []
    if isinstance(output, str):
        text = output
    elif isinstance(output, list):
        texts: list[str] = []
        for j, part in enumerate(message_parts(output)):
            kind = part.get("type")
            if kind in TEXT_PARTS:
                texts.append(str(part.get("text") or ""))
            elif kind in ("input_image", "input_file"):
                media.append(media_part(part, f"{param}.output[{j}]"))
            else:
                raise unsupported_parameter(f"{param}.output[{j}]", f"(type '{kind}') in a tool output.")
        text = "\n".join(t for t in texts if t)
    elif output is None:
        text = ""
    else:
        raise invalid_param(f"{param}.output", f"Invalid type for '{param}.output'.", "invalid_type")
    response: dict[str, Any] = {"name": name, "response": {"output": text}}
    if not call_id.startswith(SYNTH_CALL_PREFIX):
        response["id"] = call_id
    if media:
        # The multimodal form of a function result (FunctionResponse.parts).
        response["parts"] = media
    return {"functionResponse": response, "_call": call_id}
