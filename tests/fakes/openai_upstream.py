"""A fake OpenAI Responses server: ``POST /v1/responses`` answering SSE in OpenAI's wire format
(``event:`` + ``data:`` lines, no ``[DONE]``), as recorded from the real API.

The behaviour is chosen by the request's ``model``:

    fake              text answer "Echo: <last user text>" in word deltas
    fake-tool         a function_call to the first tool with {"city": "Paris"}
    fail-<status>     HTTP <status> with OpenAI's error envelope (429 adds retry-after: 0)
    die-after-<n>     n events, then the connection is dropped without a terminal event
    stall-after-<n>   n events, then silence until the client goes away
    garbage-after-<n> n events, then a data line that is not JSON
    slow-<ms>         like ``fake`` with <ms> milliseconds between deltas

Every request is recorded (body, headers, HTTP version) and every client disconnect seen
mid-stream is counted, so tests can assert what the upstream saw.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import orjson

_ids = itertools.count(1)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def last_user_text(items: Any) -> str:
    if isinstance(items, str):
        return items
    for item in reversed(items or []):
        if item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if item.get("type") == "function_call_output":
            return f"tool said {item.get('output')}"
    return ""


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.disconnects = 0
        self.lock = threading.Lock()
        self.known_ids: set[str] = set()
        self.completed = threading.Event()

    # -- the stream ---------------------------------------------------------------------------

    def events(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        rid = f"resp_up{next(_ids):06d}"
        model = body.get("model", "fake")
        base = {
            "id": rid, "object": "response", "created_at": int(time.time()), "status": "in_progress",
            "model": model, "output": [], "usage": None, "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "previous_response_id": body.get("previous_response_id"),
            "tools": body.get("tools", []), "tool_choice": body.get("tool_choice", "auto"),
            "store": body.get("store", True), "parallel_tool_calls": True, "metadata": {},
            "temperature": 1.0, "top_p": 1.0, "text": {"format": {"type": "text"}}, "truncation": "disabled",
        }
        out: list[dict[str, Any]] = [
            {"type": "response.created", "response": dict(base)},
            {"type": "response.in_progress", "response": dict(base)},
        ]
        if model == "fake-tool":
            tool = (body.get("tools") or [{"name": "get_weather"}])[0]
            item = {"id": f"fc_{rid}", "type": "function_call", "status": "in_progress",
                    "call_id": f"call_{rid}", "name": tool.get("name"), "arguments": ""}
            args = '{"city": "Paris"}'
            out.append({"type": "response.output_item.added", "output_index": 0, "item": dict(item)})
            out.append({"type": "response.function_call_arguments.delta", "item_id": item["id"],
                        "output_index": 0, "delta": args[:8]})
            out.append({"type": "response.function_call_arguments.delta", "item_id": item["id"],
                        "output_index": 0, "delta": args[8:]})
            out.append({"type": "response.function_call_arguments.done", "item_id": item["id"],
                        "output_index": 0, "arguments": args, "name": item["name"]})
            done = {**item, "status": "completed", "arguments": args}
            out.append({"type": "response.output_item.done", "output_index": 0, "item": done})
            output = [done]
            n_out = 5
        else:
            text = "Echo: " + last_user_text(body.get("input"))
            words = text.split(" ")
            deltas = [w if i == 0 else " " + w for i, w in enumerate(words)]
            mid = f"msg_{rid}"
            msg = {"id": mid, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            common = {"item_id": mid, "output_index": 0, "content_index": 0}
            out.append({"type": "response.output_item.added", "output_index": 0, "item": dict(msg)})
            out.append({"type": "response.content_part.added", **common,
                        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})
            for d in deltas:
                out.append({"type": "response.output_text.delta", **common, "delta": d, "logprobs": [],
                            "obfuscation": "xyz"})
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            out.append({"type": "response.output_text.done", **common, "text": text, "logprobs": []})
            out.append({"type": "response.content_part.done", **common, "part": part})
            done = {**msg, "status": "completed", "content": [part]}
            out.append({"type": "response.output_item.done", "output_index": 0, "item": done})
            output = [done]
            n_out = len(deltas)
        final = {**base, "status": "completed", "output": output, "completed_at": int(time.time()),
                 "usage": {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0},
                           "output_tokens": n_out, "output_tokens_details": {"reasoning_tokens": 0},
                           "total_tokens": 7 + n_out}}
        out.append({"type": "response.completed", "response": final})
        for i, event in enumerate(out):
            event["sequence_number"] = i
        self.known_ids.add(rid)
        return out

    # -- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] != "/v1/responses" or scope["method"] != "POST":
            await self._json(send, 404, {"error": {"message": "not found", "type": "invalid_request_error",
                                                   "param": None, "code": None}})
            return
        data = orjson.loads(body)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        with self.lock:
            self.requests.append({"body": data, "headers": headers, "http_version": scope["http_version"]})
        model = str(data.get("model", "fake"))
        prev = data.get("previous_response_id")
        if prev and prev not in self.known_ids:
            await self._json(send, 400, {"error": {"message": f"Previous response with id '{prev}' not found.",
                                                   "type": "invalid_request_error",
                                                   "param": "previous_response_id",
                                                   "code": "previous_response_not_found"}})
            return
        if model.startswith("fail-"):
            status = int(model.split("-")[1])
            extra = [(b"retry-after", b"0")] if status == 429 else []
            await self._json(send, status, {"error": {"message": f"fake failure {status}",
                                                      "type": "server_error" if status >= 500 else
                                                      "invalid_request_error", "param": None,
                                                      "code": "rate_limit_exceeded" if status == 429 else None}},
                             extra)
            return
        await self._stream(send, receive, model, data)

    async def _stream(self, send: Any, receive: Any, model: str, data: dict[str, Any]) -> None:
        events = self.events(data)
        delay = 0.0
        cut: int | None = None
        mode = "ok"
        if model.startswith("slow-"):
            delay = int(model.split("-")[1]) / 1000
        for prefix in ("die-after-", "stall-after-", "garbage-after-"):
            if model.startswith(prefix):
                mode = prefix.split("-")[0]
                cut = int(model[len(prefix):])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            for i, event in enumerate(events):
                if cut is not None and i == cut:
                    if mode == "die":
                        raise ConnectionResetError("fake upstream dies")
                    if mode == "garbage":
                        await send({"type": "http.response.body", "body": b"data: {not json\n\n", "more_body": True})
                        await gone.wait()
                        return
                    await gone.wait()  # stall until the proxy hangs up
                    return
                await send({"type": "http.response.body", "body": _sse(event), "more_body": True})
                if delay and event["type"].endswith(".delta"):
                    await asyncio.sleep(delay)
                if gone.is_set():
                    return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.completed.set()
        finally:
            if gone.is_set():
                with self.lock:
                    self.disconnects += 1
            watcher.cancel()

    async def _json(self, send: Any, status: int, payload: Any, extra: list[Any] | None = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *(extra or [])]})
        await send({"type": "http.response.body", "body": orjson.dumps(payload)})
