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
    fail-<status>-ra<s>  like ``fail-<status>`` with ``retry-after: <s>``
    think-<ms>        created + in_progress, then <ms> of silence ("thinking"), then the answer
    hang-headers      no response headers at all until the client goes away
    flood-<n>-<size>  n text deltas of <size> bytes each (a long answer, for backpressure)
    order-delta-first a text delta before response.created (an impossible order)
    order-double-created  created, in_progress, then response.created again
    badutf8-after-<n> n events, then a delta whose data is not valid UTF-8
    brokenjson-after-<n> n events, then a delta whose JSON is cut short, then the rest as usual
    script-<tag>      each request plays the next model of ``fake.scripts[tag]`` (the last repeats)

Every request is recorded (body, headers, HTTP version, events sent, whether the client went
away, arrival time) and every client disconnect seen mid-stream is counted, so tests can assert
what the upstream saw.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from tests.fakes.servers import read_body, serve_lifespan

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
        self.lock = threading.RLock()
        # Notified whenever a request record changes (see ``wait``).
        self.changed = threading.Condition(self.lock)
        self.known_ids: set[str] = set()
        self.completed = threading.Event()
        # script-<tag>: the models to play, one per request, in order.
        self.scripts: dict[str, list[str]] = {}

    def script(self, tag: str, models: list[str]) -> str:
        """Arrange the behaviour of the next requests for ``script-<tag>``; returns that model."""
        with self.lock:
            self.scripts[tag] = list(models)
        return f"script-{tag}"

    def wait(self, predicate: Any, timeout: float = 5.0) -> bool:
        """Block until ``predicate()`` is true (checked on every record change), bounded."""
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def _touch(self, record: dict[str, Any], **changes: Any) -> None:
        with self.changed:
            record.update(changes)
            self.changed.notify_all()

    def find(self, marker: str) -> list[dict[str, Any]]:
        """The records of the requests whose input mentions ``marker``, in arrival order."""
        with self.lock:
            return [r for r in self.requests if marker in orjson.dumps(r["body"].get("input")).decode()]

    # -- the stream ---------------------------------------------------------------------------

    def events(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        rid = f"resp_up{next(_ids):06d}"
        model = body.get("model", "fake")
        base = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "model": model,
            "output": [],
            "usage": None,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "previous_response_id": body.get("previous_response_id"),
            # OpenAI echoes function tools with every key (strict defaults to true).
            "tools": [
                {"description": None, "parameters": None, **t, "strict": t.get("strict", True)}
                if t.get("type") == "function"
                else t
                for t in body.get("tools", [])
            ],
            "tool_choice": body.get("tool_choice", "auto"),
            "store": body.get("store", True),
            "parallel_tool_calls": True,
            "metadata": body.get("metadata") or {},
            "temperature": 1.0,
            "top_p": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "truncation": "disabled",
            # Every other key OpenAI's Response carries (Open Responses marks them required).
            "completed_at": None,
            "background": False,
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "top_logprobs": 0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "safety_identifier": None,
            "prompt_cache_key": body.get("prompt_cache_key"),
            "user": None,
        }
        out: list[dict[str, Any]] = [
            {"type": "response.created", "response": dict(base)},
            {"type": "response.in_progress", "response": dict(base)},
        ]
        if model == "fake-tool":
            tool = (body.get("tools") or [{"name": "get_weather"}])[0]
            item = {
                "id": f"fc_{rid}",
                "type": "function_call",
                "status": "in_progress",
                "call_id": f"call_{rid}",
                "name": tool.get("name"),
                "arguments": "",
            }
            args = '{"city": "Paris"}'
            out.append({"type": "response.output_item.added", "output_index": 0, "item": dict(item)})
            out.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": item["id"],
                    "output_index": 0,
                    "delta": args[:8],
                }
            )
            out.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": item["id"],
                    "output_index": 0,
                    "delta": args[8:],
                }
            )
            out.append(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item["id"],
                    "output_index": 0,
                    "arguments": args,
                    "name": item["name"],
                }
            )
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
            out.append(
                {
                    "type": "response.content_part.added",
                    **common,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                }
            )
            for d in deltas:
                out.append(
                    {
                        "type": "response.output_text.delta",
                        **common,
                        "delta": d,
                        "logprobs": [],
                        "obfuscation": "xyz",
                    }
                )
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            out.append({"type": "response.output_text.done", **common, "text": text, "logprobs": []})
            out.append({"type": "response.content_part.done", **common, "part": part})
            done = {**msg, "status": "completed", "content": [part]}
            out.append({"type": "response.output_item.done", "output_index": 0, "item": done})
            output = [done]
            n_out = len(deltas)
        final = {
            **base,
            "status": "completed",
            "output": output,
            "completed_at": int(time.time()),
            "usage": {
                "input_tokens": 7,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": n_out,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 7 + n_out,
            },
        }
        out.append({"type": "response.completed", "response": final})
        for i, event in enumerate(out):
            event["sequence_number"] = i
        self.known_ids.add(rid)
        return out

    # -- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if scope["path"] != "/v1/responses" or scope["method"] != "POST":
            await self._json(
                send,
                404,
                {
                    "error": {
                        "message": "not found",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
            return
        data = orjson.loads(body)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        record: dict[str, Any] = {
            "body": data,
            "headers": headers,
            "http_version": scope["http_version"],
            "client": tuple(scope.get("client") or ()),
            "sent": 0,
            "disconnected": False,
            "finished": False,
            "time": time.monotonic(),
        }
        model = str(data.get("model", "fake"))
        with self.changed:
            self.requests.append(record)
            self.changed.notify_all()
            if model.startswith("script-"):
                queue = self.scripts.get(model[len("script-") :]) or ["fake"]
                model = queue.pop(0) if len(queue) > 1 else queue[0]
            record["played"] = model
        prev = data.get("previous_response_id")
        if prev and prev not in self.known_ids:
            await self._json(
                send,
                400,
                {
                    "error": {
                        "message": f"Previous response with id '{prev}' not found.",
                        "type": "invalid_request_error",
                        "param": "previous_response_id",
                        "code": "previous_response_not_found",
                    }
                },
            )
            return
        if model.startswith("fail-"):
            parts = model.split("-")
            status = int(parts[1])
            extra = [(b"retry-after", b"0")] if status == 429 else []
            if len(parts) > 2 and parts[2].startswith("ra"):
                extra = [(b"retry-after", parts[2][2:].encode())]
            await self._json(
                send,
                status,
                {
                    "error": {
                        "message": f"fake failure {status}",
                        "type": "server_error" if status >= 500 else "invalid_request_error",
                        "param": None,
                        "code": "rate_limit_exceeded" if status == 429 else None,
                    }
                },
                extra,
            )
            return
        await self._stream(send, receive, model, data, record)

    def _shaped(self, model: str, data: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The events of the answer, reshaped for the flood/order behaviours (made lazily: a
        flood is generated as it is sent)."""
        events = self.events(data)
        stream: Iterable[dict[str, Any]] = events
        if model.startswith("flood-"):
            _, n, size = model.split("-")
            at = next(i for i, e in enumerate(events) if e["type"] == "response.output_text.delta")
            delta = events[at]
            # Random text: compression (permessage-deflate) must not hide the volume.
            pad = os.urandom(int(size) // 2 + 1).hex()[: int(size)]
            flood = ({**delta, "delta": pad[i % 7 :] + pad[: i % 7]} for i in range(int(n)))
            stream = itertools.chain(events[:at], flood, events[at + 1 :])
        elif model == "order-delta-first":
            delta = next(e for e in events if e["type"] == "response.output_text.delta")
            events.insert(0, dict(delta))
        elif model == "order-double-created":
            events.insert(2, dict(events[0]))
        for i, event in enumerate(stream):
            event["sequence_number"] = i
            yield event

    async def _stream(
        self, send: Any, receive: Any, model: str, data: dict[str, Any], record: dict[str, Any]
    ) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    # Recorded at once: the app may still be blocked in a send (backpressure).
                    if not record["finished"]:
                        with self.lock:
                            self.disconnects += 1
                        self._touch(record, disconnected=True)
                    return

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            if model == "hang-headers":
                await gone.wait()
                return
            await self._play(send, model, data, record, gone)
        finally:
            watcher.cancel()

    async def _play(
        self, send: Any, model: str, data: dict[str, Any], record: dict[str, Any], gone: asyncio.Event
    ) -> None:
        events = self._shaped(model, data)
        delay = 0.0
        think = 0.0
        cut: int | None = None
        mode = "ok"
        if model.startswith("slow-"):
            delay = int(model.split("-")[1]) / 1000
        if model.startswith("think-"):
            think = int(model.split("-")[1]) / 1000
        for prefix in ("die-after-", "stall-after-", "garbage-after-", "badutf8-after-", "brokenjson-after-"):
            if model.startswith(prefix):
                mode = prefix.split("-")[0]
                cut = int(model[len(prefix) :])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i, event in enumerate(events):
            if cut is not None and i == cut:
                if mode == "die":
                    raise ConnectionResetError("fake upstream dies")
                if mode == "brokenjson":
                    broken = (
                        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                        b'"sequence_number":' + str(i).encode() + b',"item_id":"x","delta":"cut\n\n'
                    )
                    await send({"type": "http.response.body", "body": broken, "more_body": True})
                    cut = None  # and the rest of the stream as if nothing happened
                    await send({"type": "http.response.body", "body": _sse(event), "more_body": True})
                    continue
                if mode == "garbage":
                    await send(
                        {"type": "http.response.body", "body": b"data: {not json\n\n", "more_body": True}
                    )
                elif mode == "badutf8":
                    bad = (
                        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                        b'"sequence_number":' + str(i).encode() + b',"item_id":"x","output_index":0,'
                        b'"content_index":0,"delta":"\xff\xfe","logprobs":[]}\n\n'
                    )
                    await send({"type": "http.response.body", "body": bad, "more_body": True})
                await gone.wait()  # stall until the proxy hangs up
                return
            await send({"type": "http.response.body", "body": _sse(event), "more_body": True})
            self._touch(record, sent=record["sent"] + 1)
            if think and event["type"] == "response.in_progress":
                await asyncio.sleep(think)
            if delay and event["type"].endswith(".delta"):
                await asyncio.sleep(delay)
            if gone.is_set():
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._touch(record, finished=True)
        self.completed.set()

    async def _json(self, send: Any, status: int, payload: Any, extra: list[Any] | None = None) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), *(extra or [])],
            }
        )
        await send({"type": "http.response.body", "body": orjson.dumps(payload)})
