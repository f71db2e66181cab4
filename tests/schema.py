"""Validation of what wsproxy sends against the Open Responses OpenAPI document.

``tests/fixtures/openresponses/openapi.json`` is a verbatim copy of the Open Responses spec
(``openresponses/openresponses`` ``public/openapi/openapi.json``, commit 1e33c10f, sha256
1f469fc0...; provenance in the project's protocol digest). A validator is built from its
``components.schemas`` (OpenAPI 3.1 schemas are JSON Schema 2020-12).

- :func:`validate_event`: a streaming event, by its ``type``, against the matching
  ``*StreamingEvent`` schema;
- :func:`validate_response`: a Response object (``ResponseResource``);
- :func:`validate_compaction`: the answer of ``POST /v1/responses/compact`` (``CompactResource``);
- :func:`validate_error_body`: an HTTP error body (OpenAI's envelope).

Where OpenAI and Open Responses disagree, OpenAI wins (the openai SDK is the reference client;
``responses-streaming.md`` sections 3 and 4.3) and the difference is checked explicitly:

- raw reasoning text events are ``response.reasoning_text.delta``/``.done`` (OpenAI); they are
  validated against Open Responses' ``response.reasoning.delta``/``.done`` schemas;
- the SSE ``error`` event has OpenAI's flat shape (``code``, ``message``, ``param``); over
  WebSocket the nested shape with ``status`` (``WebSocketErrorEvent``);
- events of OpenAI's hosted tools (not in the core subset) need only ``type`` and
  ``sequence_number``;
- a ``namespace`` tool (Codex; OpenAI echoes it in ``Response.tools``) is checked as its member
  function tools, each against ``FunctionTool``.

:class:`SchemaChecked` wraps an ASGI app and validates every Responses object and event it sends
(JSON, SSE and WebSocket). Violations are collected in :data:`VIOLATIONS`; an autouse fixture in
``tests/conftest.py`` fails the test that produced one.
"""

from __future__ import annotations

import functools
import re
import threading
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parent / "fixtures" / "openresponses" / "openapi.json"
_URI = "urn:openresponses"

# OpenAI's names for events Open Responses names differently.
EVENT_ALIASES = {
    "response.reasoning_text.delta": "response.reasoning.delta",
    "response.reasoning_text.done": "response.reasoning.done",
}

# The flat SSE error event of OpenAI (openai-python ``ResponseErrorEvent``).
_FLAT_ERROR = {
    "type": "object",
    "required": ["type", "sequence_number", "message", "code", "param"],
    "properties": {
        "type": {"enum": ["error"]},
        "sequence_number": {"type": "integer"},
        "message": {"type": "string"},
        "code": {"type": ["string", "null"]},
        "param": {"type": ["string", "null"]},
    },
}
# OpenAI's HTTP error envelope (every non-2xx JSON body).
_ERROR_BODY = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_MINIMAL_EVENT = {
    "type": "object",
    "required": ["type", "sequence_number"],
    "properties": {"type": {"type": "string"}, "sequence_number": {"type": "integer"}},
}


@functools.cache
def _spec() -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(SPEC_PATH.read_bytes())
    schemas = value["components"]["schemas"]
    # Two defects of the generated document, where OpenAI's API is the reference:
    # - JsonSchemaResponseFormat.schema is typed null (the TypeSpec 'unknown'); it is the JSON
    #   schema object the request gave;
    # - ReasoningEffortEnum lacks 'minimal' (its own x-enumDescriptions lists it) and 'max',
    #   both accepted by OpenAI (openai-python ReasoningEffort).
    schemas["JsonSchemaResponseFormat"]["properties"]["schema"] = {"type": ["object", "null"]}
    schemas["ReasoningEffortEnum"]["enum"] = ["none", "minimal", "low", "medium", "high", "xhigh", "max"]
    return value


@functools.cache
def _registry() -> Registry:  # type: ignore[type-arg]
    return Registry().with_resource(_URI, Resource.from_contents(_spec(), default_specification=DRAFT202012))


@functools.cache
def validator(name: str) -> Draft202012Validator:
    """A validator for ``#/components/schemas/<name>`` of the spec."""
    if name not in _spec()["components"]["schemas"]:
        raise KeyError(f"no schema {name!r} in the Open Responses spec")
    return Draft202012Validator({"$ref": f"{_URI}#/components/schemas/{name}"}, registry=_registry())


@functools.cache
def _local(key: str) -> Draft202012Validator:
    schema = {"flat_error": _FLAT_ERROR, "error_body": _ERROR_BODY, "minimal": _MINIMAL_EVENT}[key]
    return Draft202012Validator(schema)


@functools.cache
def event_schemas() -> dict[str, str]:
    """Event type -> schema name, read from the spec's ``*StreamingEvent`` schemas."""
    out: dict[str, str] = {}
    for name, schema in _spec()["components"]["schemas"].items():
        if name.endswith("StreamingEvent"):
            for kind in schema["properties"]["type"]["enum"]:
                out[kind] = name
    return out


class SchemaViolation(AssertionError):
    pass


def _check(v: Draft202012Validator, value: Any, what: str) -> None:
    errors = sorted(v.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        # oneOf failures nest the useful message in their context: show the deepest ones.
        lines = []
        for err in errors[:3]:
            leaves = [e for e in err.context or []] or [err]
            best = min(leaves, key=lambda e: len(list(e.absolute_path)) * -1)
            path = "/".join(str(p) for p in best.absolute_path) or "(root)"
            lines.append(f"{path}: {best.message[:300]}")
        raise SchemaViolation(f"{what} does not match the Open Responses schema:\n  " + "\n  ".join(lines))


def _core_subset(response: Any) -> Any:
    """A Response with each namespace tool replaced by its members (see the module docstring)."""
    if not isinstance(response, dict) or not isinstance(response.get("tools"), list):
        return response
    tools: list[Any] = []
    for tool in response["tools"]:
        if isinstance(tool, dict) and tool.get("type") == "namespace" and isinstance(tool.get("tools"), list):
            tools.extend(tool["tools"])
        else:
            tools.append(tool)
    return {**response, "tools": tools}


def validate_event(payload: Any, *, websocket: bool = False) -> None:
    """One streaming event against its schema (chosen by ``type``)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        raise SchemaViolation(f"an event must be an object with a string type: {str(payload)[:200]}")
    kind = payload["type"]
    what = f"event {kind} (#{payload.get('sequence_number')})"
    if kind == "error":
        if "status" in payload:
            _check(validator("WebSocketErrorEvent"), payload, what)
        elif isinstance(payload.get("error"), dict):
            _check(validator("ErrorStreamingEvent"), payload, what)
        else:
            if websocket:
                raise SchemaViolation(f"{what}: an error over WebSocket needs the nested shape with status")
            _check(_local("flat_error"), payload, what)
        return
    if isinstance(payload.get("response"), dict):
        payload = {**payload, "response": _core_subset(payload["response"])}
    alias = EVENT_ALIASES.get(kind)
    if alias is not None:
        payload = {**payload, "type": alias}
        kind = alias
    name = event_schemas().get(kind)
    if name is None:
        if not kind.startswith("response."):
            raise SchemaViolation(f"{what}: unknown event type")
        _check(_local("minimal"), payload, what)
        return
    _check(validator(name), payload, what)


def validate_response(obj: Any) -> None:
    rid = obj.get("id") if isinstance(obj, dict) else None
    _check(validator("ResponseResource"), _core_subset(obj), f"Response {rid}")


def validate_compaction(obj: Any) -> None:
    _check(validator("CompactResource"), obj, "the compacted window")


def validate_error_body(obj: Any) -> None:
    _check(_local("error_body"), obj, "the error body")


def validate_sse(body: bytes) -> int:
    """Every event of an SSE body; returns how many were checked."""
    count = 0
    for block in body.split(b"\n\n"):
        data = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
        if not data or data == [b"[DONE]"]:
            continue
        validate_event(orjson.loads(b"\n".join(data)))
        count += 1
    return count


# -- the ASGI hook ---------------------------------------------------------------------------

VIOLATIONS: list[str] = []
_LOCK = threading.Lock()
_RESPONSE_PATH = re.compile(r"^/v1/responses/(?!compact$)[^/]+$")


def _record(message: str) -> None:
    with _LOCK:
        VIOLATIONS.append(message)


def take_violations() -> list[str]:
    with _LOCK:
        out = list(VIOLATIONS)
        VIOLATIONS.clear()
    return out


class _HttpCheck:
    def __init__(self, method: str, path: str) -> None:
        self.method, self.path = method, path
        self.status = 0
        self.sse = False
        self.buffer = bytearray()

    def start(self, message: dict[str, Any]) -> None:
        self.status = message["status"]
        headers = {k.lower(): v for k, v in message.get("headers") or []}
        self.sse = headers.get(b"content-type", b"").startswith(b"text/event-stream")

    def body(self, message: dict[str, Any]) -> None:
        self.buffer += message.get("body", b"")
        if self.sse:
            # Complete events only: the rest waits for the next write.
            end = self.buffer.rfind(b"\n\n")
            if end != -1:
                chunk, self.buffer = bytes(self.buffer[: end + 2]), self.buffer[end + 2 :]
                self._guard(validate_sse, chunk)
            return
        if not message.get("more_body"):
            self._json(bytes(self.buffer))

    def _json(self, body: bytes) -> None:
        if not body or self.method not in ("GET", "POST"):
            return
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            if self.status >= 400:
                _record(f"{self.method} {self.path}: a non-JSON error body: {body[:200]!r}")
            return
        if self.status >= 400:
            self._guard(validate_error_body, value)
        elif self.path == "/v1/responses/compact":
            self._guard(validate_compaction, value)
        elif self.path == "/v1/responses" or (self.method == "GET" and _RESPONSE_PATH.match(self.path)):
            self._guard(validate_response, value)

    def _guard(self, check: Any, value: Any) -> None:
        try:
            check(value)
        except (SchemaViolation, orjson.JSONDecodeError) as exc:
            _record(f"{self.method} {self.path} (HTTP {self.status}): {exc}")


class SchemaChecked:
    """ASGI middleware: validates what the wrapped app sends on ``/v1/responses*``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)  # app.state and the like stay reachable

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or not path.startswith("/v1/responses"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":

            async def ws_send(message: dict[str, Any]) -> None:
                if message["type"] == "websocket.send" and message.get("text") is not None:
                    try:
                        validate_event(orjson.loads(message["text"]), websocket=True)
                    except (SchemaViolation, orjson.JSONDecodeError) as exc:
                        _record(f"WebSocket {path}: {exc}")
                await send(message)

            await self.app(scope, receive, ws_send)
            return
        check = _HttpCheck(scope.get("method", "GET"), path)

        async def http_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                check.start(message)
            elif message["type"] == "http.response.body":
                check.body(message)
            await send(message)

        await self.app(scope, receive, http_send)
