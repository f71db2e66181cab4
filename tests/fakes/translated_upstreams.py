"""Fake Chat Completions and Anthropic Messages servers, speaking their real SSE wire formats.

Chat Completions (``POST /v1/chat/completions``): ``data:`` chunks of ``chat.completion.chunk``,
tool-call fragments keyed by ``index`` (only the first carries ``id``/``name``), the finish chunk,
then a usage chunk with ``choices: []`` and ``data: [DONE]``.

Anthropic (``POST /v1/messages``): ``event:`` + ``data:`` lines, ``message_start`` ...
``content_block_*`` ... ``message_delta`` ... ``message_stop``, ``ping`` in between; thinking
blocks with a ``signature_delta`` when the request enables thinking.

Both answer a tool call when the last user message names one of the request's tools, and report
the tool result when the last message carries one. Both refuse, with their API's 400, the
histories the real APIs refuse: Anthropic a first message that is not the user's, roles that do
not alternate, and fields a message does not have (``phase``...); Chat Completions a ``tool``
message that does not answer a ``tool_calls`` entry of the assistant message before it. A tool
with no parameters is called with no arguments (Anthropic: one empty ``input_json_delta``).
``model`` ``fail-<status>`` answers with that status in the provider's error format. Requests are
recorded for assertions.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import orjson

from tests.fakes.servers import read_body, serve_lifespan

_ids = itertools.count(1)


async def _read_json(receive: Any) -> Any:
    return orjson.loads(await read_body(receive))


async def _respond(send: Any, status: int, chunks: list[bytes], content_type: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]}
    )
    for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def chat_history_error(messages: list[dict[str, Any]]) -> str | None:
    """What OpenAI's Chat Completions says about a tool message that answers no tool call."""
    open_calls: set[str] = set()
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role == "tool":
            if msg.get("tool_call_id") not in open_calls:
                return (
                    f"Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                    f"message with 'tool_calls' (messages[{i}])."
                )
            open_calls.discard(msg.get("tool_call_id"))
        elif role == "assistant":
            open_calls = {c.get("id") for c in msg.get("tool_calls") or []}
        else:
            open_calls = set()
    return None


def anthropic_history_error(messages: list[dict[str, Any]]) -> str | None:
    """What the Messages API says about a history it refuses."""
    if not messages:
        return "messages: at least one message is required"
    if messages[0].get("role") != "user":
        return "messages: first message must use the \"user\" role"
    for i, msg in enumerate(messages):
        extra = set(msg) - {"role", "content"}
        if extra:
            return f"messages.{i}.{sorted(extra)[0]}: Extra inputs are not permitted"
        if i and msg.get("role") == messages[i - 1].get("role"):
            return "messages: roles must alternate between \"user\" and \"assistant\""
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


class FakeChat:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        body = await _read_json(receive)
        with self.lock:
            self.requests.append(body)
        model = str(body.get("model"))
        if model.startswith("fail-"):
            status = int(model.split("-")[1])
            err = {
                "error": {
                    "message": f"chat failure {status}",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
            await _respond(send, status, [orjson.dumps(err)], b"application/json")
            return
        problem = chat_history_error(body.get("messages") or [])
        if problem is not None:
            err = {
                "error": {
                    "message": problem,
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": None,
                }
            }
            await _respond(send, 400, [orjson.dumps(err)], b"application/json")
            return
        cid = f"chatcmpl-{next(_ids)}"
        base = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "system_fingerprint": None,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            payload = {
                **base,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                "usage": None,
            }
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        tools = [t["function"]["name"] for t in body.get("tools") or []]
        chunks = [chunk({"role": "assistant", "content": ""})]
        if last.get("role") == "tool":
            for word in f"Tool result was: {last.get('content')}".split(" "):
                chunks.append(chunk({"content": word + " "}))
            finish = "stop"
        else:
            said = _text(last.get("content"))
            named = [t for t in tools if t in said]
            if named:
                for i, name in enumerate(named):
                    chunks.append(
                        chunk(
                            {
                                "tool_calls": [
                                    {
                                        "index": i,
                                        "id": f"call_{cid}_{i}",
                                        "type": "function",
                                        "function": {"name": name, "arguments": ""},
                                    }
                                ]
                            }
                        )
                    )
                    for piece in ('{"city":', ' "Paris"}'):
                        chunks.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
                finish = "tool_calls"
            else:
                for word in f"Chat echo: {said}".split(" "):
                    chunks.append(chunk({"content": word + " "}))
                finish = "stop"
        chunks.append(chunk({}, finish))
        usage = {
            "prompt_tokens": 11,
            "completion_tokens": len(chunks) - 2,
            "total_tokens": 11 + len(chunks) - 2,
            "prompt_tokens_details": {"cached_tokens": 3},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        chunks.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        chunks.append(b"data: [DONE]\n\n")
        await _respond(send, 200, chunks, b"text/event-stream")


class FakeAnthropic:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        body = await _read_json(receive)
        with self.lock:
            self.requests.append(body)
            self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        model = str(body.get("model"))
        if model.startswith("fail-"):
            status = int(model.split("-")[1])
            kind = {529: "overloaded_error", 429: "rate_limit_error"}.get(status, "api_error")
            err = {
                "type": "error",
                "error": {"type": kind, "message": f"anthropic failure {status}"},
                "request_id": "req_1",
            }
            await _respond(send, status, [orjson.dumps(err)], b"application/json")
            return

        problem = anthropic_history_error(body.get("messages") or [])
        if problem is not None:
            err = {"type": "error", "error": {"type": "invalid_request_error", "message": problem}}
            await _respond(send, 400, [orjson.dumps(err)], b"application/json")
            return

        def ev(payload: dict[str, Any]) -> bytes:
            return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

        mid = f"msg_{next(_ids):04d}"
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        blocks = last.get("content") if isinstance(last.get("content"), list) else []
        results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
        tools = [t["name"] for t in body.get("tools") or []]
        no_args = {t["name"] for t in body.get("tools") or [] if not t["input_schema"].get("properties")}
        out = [
            ev(
                {
                    "type": "message_start",
                    "message": {
                        "id": mid,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": 20,
                            "cache_read_input_tokens": 5,
                            "cache_creation_input_tokens": 2,
                            "output_tokens": 1,
                        },
                    },
                }
            ),
            ev({"type": "ping"}),
        ]
        index = 0
        if body.get("thinking", {}).get("type") in ("enabled", "adaptive"):
            out.append(
                ev(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                    }
                )
            )
            out.append(
                ev(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "thinking_delta", "thinking": "Let me think."},
                    }
                )
            )
            out.append(
                ev(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "signature_delta", "signature": f"sig-{mid}"},
                    }
                )
            )
            out.append(ev({"type": "content_block_stop", "index": index}))
            index += 1
        said = _text(last.get("content")) if not results else ""
        named = [t for t in tools if t in said]
        if results:
            text = f"Tool result was: {_text(results[0].get('content'))}"
            stop = "end_turn"
        elif named:
            text = ""
            stop = "tool_use"
        else:
            text = f"Claude echo: {said}"
            stop = "end_turn"
        if text:
            out.append(
                ev(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    }
                )
            )
            for word in text.split(" "):
                out.append(
                    ev(
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": word + " "},
                        }
                    )
                )
            out.append(ev({"type": "content_block_stop", "index": index}))
            index += 1
        for name in named:
            out.append(
                ev(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": f"toolu_{mid}_{index}",
                            "name": name,
                            "input": {},
                        },
                    }
                )
            )
            for piece in ("",) if name in no_args else ("", '{"city": ', '"Paris"}'):
                out.append(
                    ev(
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        }
                    )
                )
            out.append(ev({"type": "content_block_stop", "index": index}))
            index += 1
        out.append(
            ev(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": 9},
                }
            )
        )
        out.append(ev({"type": "message_stop"}))
        await _respond(send, 200, out, b"text/event-stream")
