"""A fake Gemini API (generativelanguage ``v1beta``) speaking the real wire format.

``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` answers ``data: <GenerateContentResponse>``
events with CRLF line endings, no event names and no ``[DONE]`` (the stream ends at EOF). The key
must come in ``x-goog-api-key`` (a wrong or missing key is Google's 400 ``API_KEY_INVALID``);
errors use Google's ``{"error":{"code","message","status","details"}}`` shape.

What it answers, by the request:

- the last user Content holds ``functionResponse`` parts -> ``Tool result was: <outputs>``;
- its text names a declared function -> one ``functionCall`` per city named (Paris, London, Oslo)
  in one chunk (parallel calls);
- ``responseMimeType: application/json`` -> a JSON object built from ``responseJsonSchema``;
- otherwise ``Gemini echo: <text>``, a word per chunk.

Models whose name contains ``gemini-3`` behave like Gemini 3: calls carry an ``id`` and the first
call of each step a ``thoughtSignature``; a turn without calls ends with an empty signed text
part; and a request whose current-turn call steps lack a signature this server issued (or the
documented dummy) is refused with the 400 Google sends. Other models behave like 2.5: no ids, a
signature on the first part. ``includeThoughts`` adds a thought-summary part.

Models ``fail-<status>`` answer that error; ``retry-once-<n>`` answers 429 with a RetryInfo
``retryDelay`` of ``<n>s`` the first time, then normally; ``blocked`` is a prompt blocked by
``promptFeedback``; ``unsafe`` stops with ``SAFETY``. Requests are recorded for assertions.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any
from urllib.parse import parse_qs

import orjson

from tests.fakes.servers import read_body, serve_lifespan

DUMMY = "skip_thought_signature_validator"
CITIES = ("Paris", "London", "Oslo")
_STATUS = {
    400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}  # fmt: skip


def google_error(code: int, message: str, *details: dict[str, Any]) -> bytes:
    status = _STATUS.get(code, "UNKNOWN")
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = list(details)
    return orjson.dumps({"error": err})


class FakeGemini:
    def __init__(self, key: str = "gk-test") -> None:
        self.key = key
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.signatures: set[str] = set()
        self.retried: set[str] = set()
        self.lock = threading.Lock()
        self._ids = itertools.count(1)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        raw = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode())
        with self.lock:
            self.paths.append(path + "?" + scope.get("query_string", b"").decode())
            self.headers.append(headers)
        if headers.get("x-goog-api-key") != self.key:
            info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
            error = google_error(400, "API key not valid. Please pass a valid API key.", info)
            await self._send(send, 400, [error], b"application/json")
            return
        prefix, _, method = path.rpartition(":")
        if (
            scope["method"] != "POST"
            or not prefix.startswith("/v1beta/models/")
            or method != "streamGenerateContent"
            or query.get("alt") != ["sse"]
        ):
            await self._send(send, 404, [google_error(404, f"Not found: {path}")], b"application/json")
            return
        model = prefix.removeprefix("/v1beta/models/")
        body = orjson.loads(raw)
        with self.lock:
            self.requests.append(body)
        error = self._refusal(model, body)
        if error is not None:
            status, payload = error
            await self._send(send, status, [payload], b"application/json")
            return
        chunks = [b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in self._answer(model, body)]
        await self._send(send, 200, chunks, b"text/event-stream")

    async def _send(self, send: Any, status: int, chunks: list[bytes], content_type: bytes) -> None:
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]}
        )
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- what Google would refuse -----------------------------------------------------------------

    def _refusal(self, model: str, body: dict[str, Any]) -> tuple[int, bytes] | None:
        if model.startswith("fail-"):
            status = int(model.split("-")[1])
            message = (
                f"models/{model} is not found for API version v1beta" if status == 404 else "gemini failure"
            )
            return status, google_error(status, message)
        if model.startswith("retry-once-"):
            with self.lock:
                first = model not in self.retried
                self.retried.add(model)
            if first:
                delay = model.removeprefix("retry-once-")
                return 429, google_error(
                    429,
                    "You exceeded your current quota, please check your plan and billing details.",
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [{"quotaId": "PerMinute"}],
                    },
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay}s"},
                )
        contents = body.get("contents") or []
        for content in contents:
            if content.get("role") not in ("user", "model") or not content.get("parts"):
                return 400, google_error(400, "Please use a valid role: user, model.")
        if contents and contents[0].get("role") != "user":
            # What the real API answers to a history that opens with the model.
            return 400, google_error(
                400, "Please ensure that multiturn requests alternate between user and model."
            )
        for prev, content in itertools.pairwise(contents):
            calls = [p for p in prev["parts"] if "functionCall" in p]
            responses = [p for p in content["parts"] if "functionResponse" in p]
            if calls and content["role"] == "user" and len(responses) != len(calls):
                return 400, google_error(
                    400,
                    "Please ensure that the number of function response parts is equal to the number of "
                    "function call parts of the function call turn.",
                )
            for call, response in zip(calls, responses, strict=False):
                if response["functionResponse"].get("id") != call["functionCall"].get("id"):
                    return 400, google_error(400, "functionResponse.id does not match the functionCall.id.")
        if "gemini-3" in model:
            start = max(
                (n for n, c in enumerate(contents)
                 if c["role"] == "user" and any("functionResponse" not in p for p in c["parts"])),
                default=0,
            )  # fmt: skip
            for n, content in enumerate(contents[start:], start):
                calls = [p for p in content["parts"] if "functionCall" in p]
                if calls and calls[0].get("thoughtSignature") not in self.signatures | {DUMMY}:
                    return 400, google_error(
                        400,
                        "Function call is missing a thought_signature in functionCall parts. This is "
                        f"required for tools to work correctly ({n}. content block).",
                    )
        return None

    # -- answers ----------------------------------------------------------------------------------

    def _sig(self) -> str:
        sig = f"c2ln{next(self._ids):04d}=="
        with self.lock:
            self.signatures.add(sig)
        return sig

    def _answer(self, model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        gemini3 = "gemini-3" in model
        gen = body.get("generationConfig") or {}
        thoughts = bool((gen.get("thinkingConfig") or {}).get("includeThoughts"))
        meta = {"modelVersion": model, "responseId": f"gr{next(self._ids)}"}
        usage = {
            "promptTokenCount": 20,
            "cachedContentTokenCount": 8,
            "thoughtsTokenCount": 5 if thoughts else 0,
        }

        def chunk(parts: list[dict[str, Any]], n: int, finish: str | None = None) -> dict[str, Any]:
            cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
            if finish:
                cand["finishReason"] = finish
            u = {**usage, "candidatesTokenCount": n}
            u["totalTokenCount"] = u["promptTokenCount"] + n + u["thoughtsTokenCount"]
            return {"candidates": [cand], "usageMetadata": u, **meta}

        if model == "blocked":
            return [
                {
                    "promptFeedback": {"blockReason": "SAFETY"},
                    "usageMetadata": {"promptTokenCount": 20},
                    **meta,
                }
            ]
        out: list[dict[str, Any]] = []
        if thoughts:
            out.append(chunk([{"text": "**Considering the request**", "thought": True}], 0))
        if model == "unsafe":
            out.append(chunk([{"text": "Here is how"}], 3))
            out.append(
                {
                    "candidates": [{"finishReason": "SAFETY", "index": 0}],
                    "usageMetadata": {**usage, "candidatesTokenCount": 3},
                    **meta,
                }
            )
            return out
        contents = body.get("contents") or []
        last = contents[-1]["parts"] if contents else []
        results = [p["functionResponse"] for p in last if "functionResponse" in p]
        said = " ".join(p.get("text", "") for p in last if "text" in p)
        tools = [d["name"] for t in body.get("tools") or [] for d in t.get("functionDeclarations", [])]
        named = [t for t in tools if t in said] if not results else []
        first_sig_pending = not gemini3  # 2.5: a signature on the first part, whatever it is
        if named:
            parts: list[dict[str, Any]] = []
            for name in named:
                for city in [c for c in CITIES if c in said] or ["Paris"]:
                    call: dict[str, Any] = {"name": name, "args": {"city": city}}
                    if gemini3:
                        call["id"] = f"fc{next(self._ids)}"
                    part: dict[str, Any] = {"functionCall": call}
                    if not parts:
                        part["thoughtSignature"] = self._sig()
                    parts.append(part)
            out.append(chunk(parts, 10 * len(parts)))
            out.append(chunk([], 10 * len(parts), "STOP"))
            return out
        if results:
            text = "Tool result was: " + ", ".join(
                str((r.get("response") or {}).get("output")) for r in results
            )
        elif gen.get("responseMimeType") == "application/json":
            schema = gen.get("responseJsonSchema") or {}
            text = orjson.dumps(_example(schema)).decode() if schema else '{"answer": "yes"}'
        else:
            text = f"Gemini echo: {said}"
        words = text.split(" ")
        for i, word in enumerate(words):
            part = {"text": word + (" " if i + 1 < len(words) else "")}
            if first_sig_pending:
                part["thoughtSignature"] = self._sig()
                first_sig_pending = False
            out.append(chunk([part], i + 1))
        final: list[dict[str, Any]] = [{"text": "", "thoughtSignature": self._sig()}] if gemini3 else []
        out.append(chunk(final, len(words), "STOP"))
        return out


def _example(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "object":
        return {k: _example(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_example(schema.get("items") or {})]
    if kind == "integer":
        return 21
    if kind == "number":
        return 21.5
    if kind == "boolean":
        return True
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    return "Paris"
