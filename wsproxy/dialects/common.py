"""Helpers shared by the translating dialects (Chat Completions, Anthropic Messages, Gemini).

Role: the parts of the translation that do not depend on the provider:

- ``function_tools``: the request's ``tools`` as plain function declarations. Codex's
  ``{"type": "namespace", "name": ns, "tools": [...]}`` entries are flattened into functions
  named :func:`flat_name` ``(ns, name)``; hosted tools (``web_search``, ``file_search``, ``mcp``,
  ``custom``...) are rejected with a 400 naming ``tools`` or dropped when the provider is
  configured to drop them.
- ``namespace_map``: the reverse of that flattening, used by stream translators to emit
  ``function_call`` items with the ``namespace`` + ``name`` the client declared.
- ``reject_unexpressible``: 400 for request fields no translation can honour.
- ``check_tool_pairs``: every ``function_call`` must be answered by a ``function_call_output``
  before the next user turn; providers reject such histories with vague errors, we say which
  ``call_id`` is missing.
- ``open_function_call``: open a function_call item with the client's namespace restored.
- ``clock_from``: the clock the edge may inject for ``completed_at``.
- ``resolve_tool_choice``: the request's ``tool_choice`` validated against the declared tools,
  as a :class:`ToolChoice` each dialect spells in its own wire format.
- ``text_format``, ``split_instructions``, ``system_texts``, ``assistant_texts``: the request
  fields and message parts every translating dialect reads the same way.
- ``encode_envelope`` / ``envelope_value``: ``<provider>:`` + base64(JSON), how provider
  reasoning state rides in a reasoning item's ``encrypted_content``.
- ``TranslatorBase``: what the stream translators share (builder, JSON event decoding, the
  terminal ``complete`` with the injected clock).
- ``upstream_error`` / ``status_message``: the error-tree leaf and the fallback message for an
  upstream error body without one.
- data-URL parsing, tool-call arguments as an object, retry headers, token counts.

Pure: no I/O, no clock, no environment. Knows no provider's wire format.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from wsproxy.core.events import Event, ResponseBuilder
from wsproxy.core.ids import IdFactory
from wsproxy.core.sse import SSEMessage
from wsproxy.dialects.base import UpstreamCall
from wsproxy.errors import InvalidRequest, UpstreamError, invalid_param, unsupported_parameter

Clock = Callable[[], int]

EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}

# The user turn put in front of a history that starts with the assistant, for upstreams that
# require the user to speak first (Anthropic, Gemini).
HISTORY_PLACEHOLDER = "(conversation continues)"


@dataclass(frozen=True, slots=True)
class FunctionDecl:
    """One function the upstream may call."""

    name: str  # the name the upstream sees (flattened for namespace members)
    description: str | None
    parameters: dict[str, Any]
    strict: bool | None
    namespace: str | None = None


def flat_name(namespace: str, name: str) -> str:
    """The single function name a namespace member gets upstream.

    Codex names MCP namespaces like ``mcp__server__`` / ``mcp__apps__gmail`` with members like
    ``_search_emails``: plain concatenation is then the name the model knows. Otherwise a ``__``
    separator keeps the two parts readable. Either way the reverse map is a table lookup.
    """
    if namespace.endswith("_") or name.startswith("_"):
        return namespace + name
    return f"{namespace}__{name}"


def _hosted(kind: str, param: str, drop: bool) -> None:
    if not drop:
        raise unsupported_parameter(
            "tools",
            f"({param} has type '{kind}'): this provider can only call function tools; "
            "remove the hosted tool or enable drop_unsupported_tools for this provider.",
        )


def _decl(tool: dict[str, Any], param: str, namespace: str | None) -> FunctionDecl:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_param(
            f"{param}.name", f"Missing required parameter: '{param}.name'.", "missing_required_parameter"
        )
    params = tool.get("parameters")
    if params is None:
        params = EMPTY_SCHEMA
    elif not isinstance(params, dict):
        raise invalid_param(
            f"{param}.parameters",
            f"Invalid type for '{param}.parameters': expected an object.",
            "invalid_type",
        )
    description = tool.get("description")
    strict = tool.get("strict")
    return FunctionDecl(
        name=flat_name(namespace, name) if namespace is not None else name,
        description=description if isinstance(description, str) else None,
        parameters=params,
        strict=strict if isinstance(strict, bool) else None,
        namespace=namespace,
    )


def reject_unexpressible(body: dict[str, Any], provider: str) -> None:
    """400 for request fields no translating dialect can honour (every translating dialect)."""
    if body.get("prompt") is not None:
        raise unsupported_parameter(
            "prompt", f"is not supported with {provider}: stored prompts live at OpenAI."
        )
    top_logprobs = body.get("top_logprobs")
    if isinstance(top_logprobs, int) and top_logprobs > 0:
        raise unsupported_parameter("top_logprobs", f"is not supported with {provider}.")
    if body.get("moderation") is not None:
        raise unsupported_parameter("moderation", f"is not supported with {provider}.")


def function_tools(tools: Any, *, drop_unsupported: bool) -> list[FunctionDecl]:
    """The request's ``tools`` as function declarations (namespaces flattened, hosted tools
    rejected or dropped)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise invalid_param("tools", "Invalid type for 'tools': expected an array.", "invalid_type")
    out: list[FunctionDecl] = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid_param(param, f"Invalid type for '{param}': expected an object.", "invalid_type")
        kind = tool.get("type", "function")
        if kind == "function":
            out.append(_decl(tool, param, None))
        elif kind == "namespace":
            ns = tool.get("name")
            if not isinstance(ns, str) or not ns:
                raise invalid_param(
                    f"{param}.name",
                    f"Missing required parameter: '{param}.name'.",
                    "missing_required_parameter",
                )
            members = tool.get("tools", [])
            if not isinstance(members, list):
                raise invalid_param(f"{param}.tools", "Invalid type: expected an array.", "invalid_type")
            for j, member in enumerate(members):
                mparam = f"{param}.tools[{j}]"
                if not isinstance(member, dict):
                    raise invalid_param(
                        mparam, f"Invalid type for '{mparam}': expected an object.", "invalid_type"
                    )
                mkind = member.get("type", "function")
                if mkind == "function":
                    out.append(_decl(member, mparam, ns))
                else:
                    _hosted(str(mkind), mparam, drop_unsupported)
        else:
            _hosted(str(kind), param, drop_unsupported)
    seen: set[str] = set()
    for decl in out:
        if decl.name in seen:
            raise invalid_param("tools", f"Duplicate function name '{decl.name}' in 'tools'.")
        seen.add(decl.name)
    return out


def namespace_map(tools: Any) -> dict[str, tuple[str, str]]:
    """Flattened upstream name -> (namespace, member name), for the request's namespace tools.

    Never raises: the translator runs after ``build_request`` validated the same tools."""
    out: dict[str, tuple[str, str]] = {}
    if not isinstance(tools, list):
        return out
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "namespace":
            continue
        ns = tool.get("name")
        if not isinstance(ns, str):
            continue
        for member in tool.get("tools") or []:
            if isinstance(member, dict) and member.get("type", "function") == "function":
                name = member.get("name")
                if isinstance(name, str):
                    out[flat_name(ns, name)] = (ns, name)
    return out


def call_name(item: dict[str, Any]) -> str:
    """The upstream name of a ``function_call`` input item (namespace members flattened)."""
    name = str(item.get("name") or "")
    ns = item.get("namespace")
    return flat_name(ns, name) if isinstance(ns, str) and ns else name


def allowed_tool_names(choice: dict[str, Any]) -> tuple[str, set[str]]:
    """``{"type": "allowed_tools", "mode", "tools": [...]}`` -> (mode, allowed upstream names)."""
    mode = choice.get("mode", "auto")
    if mode not in ("auto", "required"):
        raise invalid_param("tool_choice.mode", "Invalid 'tool_choice.mode': expected 'auto' or 'required'.")
    names: set[str] = set()
    for i, entry in enumerate(choice.get("tools") or []):
        if not isinstance(entry, dict) or entry.get("type", "function") != "function":
            raise unsupported_parameter(
                "tool_choice", f"(tools[{i}]): only function tools can be allowed with this provider."
            )
        names.add(call_name(entry))
    return str(mode), names


def check_tool_pairs(items: list[dict[str, Any]], *, turn_roles: frozenset[str]) -> None:
    """Every function_call must get its function_call_output before the next message whose role
    is in ``turn_roles``, and every output must answer an earlier call. Raises a 400 naming the
    ``call_id`` (providers reject such histories with far less helpful messages)."""
    pending: dict[str, int] = {}
    answered: set[str] = set()
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "function_call":
            pending[str(item.get("call_id"))] = i
        elif kind == "function_call_output":
            call_id = str(item.get("call_id"))
            if call_id not in pending:
                why = "answers it twice" if call_id in answered else "has no matching function_call before it"
                raise InvalidRequest(
                    f"The function_call_output for call_id '{call_id}' (input[{i}]) {why}.",
                    param=f"input[{i}].call_id",
                    code="invalid_value",
                )
            del pending[call_id]
            answered.add(call_id)
        elif kind == "message" and item.get("role") in turn_roles and pending:
            _missing_output(pending)
    if pending:
        _missing_output(pending)


def _missing_output(pending: dict[str, int]) -> None:
    call_id, index = next(iter(pending.items()))
    raise InvalidRequest(
        f"No tool output found for function call {call_id} (input[{index}]): every function_call must be "
        "followed by a function_call_output with the same call_id before the next user message.",
        param="input",
        code="invalid_value",
    )


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:<media type>;base64,<data>`` -> (media type, base64 data); None for anything else."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep:
        return None
    fields = head.split(";")
    if "base64" not in fields[1:]:
        return None
    return (fields[0] or "application/octet-stream").lower(), data


def arguments_object(arguments: Any) -> dict[str, Any]:
    """Tool-call arguments (a JSON string) as an object; invalid or non-object -> ``{}``."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def is_complete_json(text: str) -> bool:
    """True when ``text`` is a whole JSON value: a closed object cannot grow any further."""
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def message_parts(content: Any) -> list[dict[str, Any]]:
    """A message's ``content`` as a list of parts (a string is one text part)."""
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    if isinstance(content, list):
        return [p if isinstance(p, dict) else {"type": "input_text", "text": str(p)} for p in content]
    return []


TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})


def retry_headers(headers: dict[str, str]) -> dict[str, str]:
    """The provider headers a client should see with an error: retry and rate-limit hints."""
    keep: dict[str, str] = {}
    for key, value in headers.items():
        low = key.lower()
        if low in ("retry-after", "retry-after-ms") or low.startswith("x-ratelimit-"):
            keep[low] = value
    return keep


def int_field(value: Any) -> int:
    """A token count from a provider's usage object (missing/null/garbage -> 0)."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    return 0


def clock_from(call: UpstreamCall) -> Clock | None:
    """The clock the edge injected through ``options.extra["clock"]`` (dialects never read one);
    without it translators use ``created_at`` as ``completed_at``."""
    clock = call.options.extra.get("clock")
    return clock if callable(clock) else None


def open_function_call(
    builder: ResponseBuilder, call_id: str, upstream_name: str, names: dict[str, tuple[str, str]]
) -> list[Event]:
    """Open a function_call item; a flattened namespace member gets its ``namespace`` + ``name``
    back (Codex dispatches on both)."""
    namespace, name = names.get(upstream_name, (None, upstream_name))
    return builder.function_call(call_id, name, namespace)


# -- request fields ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """A validated Responses ``tool_choice``.

    ``mode`` is ``auto``, ``none`` or ``required``; ``function`` names the one forced tool (mode
    ``required``); ``allowed`` is True for ``allowed_tools`` (the declarations returned with it
    are already filtered to the allowed ones)."""

    mode: str
    function: str | None = None
    allowed: bool = False


def resolve_tool_choice(
    decls: list[FunctionDecl], choice: Any
) -> tuple[list[FunctionDecl], ToolChoice | None]:
    """(the declarations to send, the validated choice or None when the request has none)."""
    if choice is None:
        return decls, None
    names = {d.name for d in decls}
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise invalid_param(
                "tool_choice", "Invalid 'tool_choice': expected 'auto', 'none' or 'required'."
            )
        if not decls and choice == "required":
            raise invalid_param(
                "tool_choice", "'tool_choice' is 'required' but no function tools were given."
            )
        return decls, ToolChoice(choice)
    if not isinstance(choice, dict):
        raise invalid_param("tool_choice", "Invalid type for 'tool_choice'.", "invalid_type")
    kind = choice.get("type")
    if kind == "function":
        name = call_name(choice)
        if name not in names:
            raise invalid_param("tool_choice", f"Tool choice '{name}' not found in 'tools'.")
        return decls, ToolChoice("required", function=name)
    if kind == "allowed_tools":
        mode, allowed = allowed_tool_names(choice)
        unknown = sorted(allowed - names)
        if unknown:
            raise invalid_param("tool_choice", f"Allowed tool '{unknown[0]}' not found in 'tools'.")
        return [d for d in decls if d.name in allowed], ToolChoice(mode, allowed=True)
    raise unsupported_parameter("tool_choice", f"(type '{kind}'): only function tool choices are supported.")


def text_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` when it asks for something other than plain text (None otherwise)."""
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise invalid_param("text.format", "Invalid type for 'text.format'.", "invalid_type")
    return None if fmt.get("type") == "text" else fmt


def json_schema_of(fmt: dict[str, Any]) -> dict[str, Any]:
    """The ``schema`` of a json_schema ``text.format`` (400 when it is missing)."""
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise invalid_param(
            "text.format.schema", "A json_schema format needs 'schema'.", "missing_required_parameter"
        )
    return schema


def split_instructions(
    items: list[dict[str, Any]], instructions: Any
) -> tuple[str | None, list[dict[str, Any]]]:
    """(``instructions`` when it is a string, the input items with list-form instructions in
    front)."""
    if isinstance(instructions, str):
        return instructions, items
    if isinstance(instructions, list):
        return None, [i for i in instructions if isinstance(i, dict)] + items
    return None, items


def system_texts(content: Any, param: str, refusal: str) -> list[str]:
    """The texts of a system/developer message hoisted out of the conversation; any other part
    is a 400 saying ``refusal``."""
    texts: list[str] = []
    for j, part in enumerate(message_parts(content)):
        if part.get("type") not in TEXT_PARTS:
            raise unsupported_parameter(f"{param}.content[{j}]", refusal)
        texts.append(str(part.get("text") or ""))
    return texts


def assistant_texts(content: Any, param: str) -> list[str]:
    """The texts (and refusals) of an assistant message; any other part is a 400."""
    texts: list[str] = []
    for j, part in enumerate(message_parts(content)):
        kind = part.get("type")
        if kind in TEXT_PARTS:
            texts.append(str(part.get("text") or ""))
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        else:
            raise unsupported_parameter(f"{param}.content[{j}]", f"(type '{kind}') in an assistant message.")
    return texts


# -- reasoning envelopes ----------------------------------------------------------------------


def encode_envelope(prefix: str, value: Any) -> str:
    """``prefix`` + base64(JSON ``value``): provider state carried in ``encrypted_content``."""
    return prefix + base64.b64encode(orjson.dumps(value)).decode()


def envelope_value(prefix: str, encrypted: Any) -> Any:
    """The JSON value of a ``prefix`` envelope; None for another provider's reasoning or a
    damaged envelope (callers still check the value's shape)."""
    if not isinstance(encrypted, str) or not encrypted.startswith(prefix):
        return None
    try:
        return orjson.loads(base64.b64decode(encrypted[len(prefix) :], validate=True))
    except (binascii.Error, ValueError):
        return None


# -- errors -----------------------------------------------------------------------------------

MIDSTREAM_ERROR = "The upstream reported an error mid-stream."


def midstream_message(message: Any) -> str:
    """The message of an error event inside a stream (a generic one when it has none)."""
    return message if isinstance(message, str) and message else MIDSTREAM_ERROR


def status_message(status: int, body: bytes) -> str:
    """The message for an upstream error body that carries none of its own."""
    text = body.decode("utf-8", "replace").strip()[:500]
    return f"Upstream answered HTTP {status}: {text}" if text else f"Upstream answered HTTP {status}."


def upstream_error(
    message: str, status: int, etype: str, code: str, headers: dict[str, str], param: str | None = None
) -> UpstreamError:
    """An :class:`UpstreamError`; 429 and 5xx are retryable."""
    retryable = status == 429 or status >= 500
    return UpstreamError(
        message, status=status, type=etype, code=code, param=param, headers=headers, retryable=retryable
    )


# -- stream translators -----------------------------------------------------------------------


class TranslatorBase:
    """The part of a translating dialect's stream translator that does not depend on the
    provider: the :class:`ResponseBuilder`, the StreamTranslator properties, decoding one SSE
    event's JSON object, and completing with the injected clock.

    Subclasses implement ``_setup`` (their own state), ``_event`` (one decoded event) and
    ``_usage_object``, and may override ``feed`` for provider-specific markers (Chat's
    ``[DONE]``). ``_unit`` names an event in the failure messages ("stream event", "stream
    chunk")."""

    _unit = "stream event"

    def __init__(
        self,
        response_id: str,
        call: UpstreamCall,
        created_at: int,
        ids: IdFactory,
        *,
        clock: Clock | None = None,
    ) -> None:
        body = call.body
        self._b = ResponseBuilder(
            response_id, str(body.get("model") or call.model), created_at, body, ids=ids
        )
        self._ids = ids
        self._clock = clock
        self._created_at = created_at
        self.upstream_id: str | None = None  # the provider's id of the response, for logs
        self._setup(call)

    def _setup(self, call: UpstreamCall) -> None:
        """The provider-specific state of a new translator."""

    @property
    def response(self) -> dict[str, Any]:
        return self._b.response

    @property
    def done(self) -> bool:
        return self._b.finished

    @property
    def started_output(self) -> bool:
        return bool(self._b.output)

    def start(self) -> list[Event]:
        return self._b.start()

    def fail(self, code: str, message: str) -> list[Event]:
        return self._b.fail(code, message, self._usage_object())

    def feed(self, message: SSEMessage) -> list[Event]:
        if self._b.finished:
            return []
        data = message.data.strip()
        if not data:
            return []
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.fail("server_error", f"The upstream sent a {self._unit} that is not valid JSON.")
        if not isinstance(event, dict):
            return self.fail("server_error", f"The upstream sent a {self._unit} that is not a JSON object.")
        return self._event(event, message)

    def _event(self, event: dict[str, Any], message: SSEMessage) -> list[Event]:
        raise NotImplementedError

    def _usage_object(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def _complete(self, usage: dict[str, Any] | None) -> list[Event]:
        """``response.completed``; ``completed_at`` from the injected clock, else ``created_at``."""
        completed_at = self._clock() if self._clock is not None else self._created_at
        return self._b.complete(usage, completed_at)
