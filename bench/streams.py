"""What the fake upstream says: OpenAI Responses SSE and Chat Completions SSE, as bytes.

Every text delta carries the moment it was written: its text is ``t<monotonic_ns> `` (CLOCK_MONOTONIC
is one clock for every process on the host). The timestamp sits in the delta *text* rather than in
an extra JSON key so that it survives both the passthrough path (bytes forwarded unchanged) and the
translated path (Chat chunks rebuilt into Responses events), and the payload is the same size on
both. :func:`delta_stamp` reads it back on the client side without parsing the JSON.

The model name chooses the pace: ``bench-<tokens>-<delay_ms>-<prefill_ms>`` for text, and
``benchtool-<chunks>-<delay_ms>-<prefill_ms>`` for a function call whose arguments arrive in
``<chunks>`` deltas (the agent-loop scenario). Delays may be fractional (``bench-200-0.5-0``).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import orjson

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Pace:
    tokens: int = 200
    delay: float = 0.005  # seconds between deltas
    prefill: float = 0.0  # seconds before the first delta
    tool: bool = False


def parse_model(model: str) -> Pace:
    """``bench-200-5-0`` -> Pace(200, 0.005, 0.0); anything unparsable -> the default pace."""
    parts = model.rsplit("@", 1)[-1].split("-")
    try:
        if len(parts) == 4 and parts[0] in ("bench", "benchtool"):
            return Pace(
                int(parts[1]), float(parts[2]) / 1000.0, float(parts[3]) / 1000.0, parts[0] == "benchtool"
            )
    except ValueError:
        pass
    return Pace()


def model_name(tokens: int, delay_ms: float, prefill_ms: float = 0.0, tool: bool = False) -> str:
    return f"{'benchtool' if tool else 'bench'}-{tokens}-{delay_ms:g}-{prefill_ms:g}"


def delta_stamp(data: bytes, marker: bytes = b'"delta":"t') -> int:
    """The ``t<ns>`` timestamp inside a delta event (Responses: ``"delta":"t…"``; Chat:
    ``"content":"t…"``); -1 when there is none."""
    i = data.find(marker)
    if i < 0:
        return -1
    i += len(marker)
    j = data.find(b" ", i)
    try:
        return int(data[i:j])
    except ValueError:
        return -1


def _sse(kind: bytes, payload: bytes) -> bytes:
    return b"event: " + kind + b"\ndata: " + payload + b"\n\n"


class ResponsesStream:
    """One streamed Responses answer, built piece by piece (sequence numbers are kept here)."""

    def __init__(self, model: str, pace: Pace, body: dict[str, object]) -> None:
        n = next(_ids)
        self.rid = f"resp_bench{n:010d}"
        self.mid = f"msg_bench{n:010d}"
        self.pace = pace
        self.seq = 0
        self.texts: list[bytes] = []
        now = int(time.time())
        self.base = {
            "id": self.rid, "object": "response", "created_at": now, "status": "in_progress",
            "background": False, "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "max_output_tokens": None, "max_tool_calls": None,
            "model": model, "output": [], "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"), "prompt_cache_key": None,
            "reasoning": {"effort": None, "summary": None}, "safety_identifier": None,
            "service_tier": "default", "store": body.get("store", True), "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": "auto",
            "tools": body.get("tools") or [], "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled",
            "usage": None, "user": None, "metadata": {},
        }  # fmt: skip
        if pace.tool:
            args = orjson.dumps(
                {"path": "src/module.py", "query": "x" * max(0, 4 * pace.tokens - 40)}
            ).decode()
            step = max(1, -(-len(args) // max(1, pace.tokens)))
            self.args = args
            self.arg_chunks = [orjson.dumps(args[i : i + step]) for i in range(0, len(args), step)]
            self.fc_id = f"fc_bench{n:010d}"
            self.call_id = f"call_bench{n:010d}"
        self._delta_head = b'{"type":"response.output_text.delta","sequence_number":'
        self._delta_mid = (
            b',"item_id":"' + self.mid.encode() + b'","output_index":0,"content_index":0,"delta":"t'
        )
        self._delta_tail = b' ","logprobs":[],"obfuscation":"Qx7pL"}'

    def _event(self, payload: dict[str, object]) -> bytes:
        payload["sequence_number"] = self.seq
        self.seq += 1
        kind = str(payload["type"]).encode()
        return _sse(kind, orjson.dumps(payload))

    def head(self) -> bytes:
        """``response.created`` and ``response.in_progress`` (sent at once, before prefill)."""
        return self._event({"type": "response.created", "response": self.base}) + self._event(
            {"type": "response.in_progress", "response": self.base}
        )

    def open(self) -> bytes:
        if self.pace.tool:
            item = {
                "id": self.fc_id,
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": self.call_id,
                "name": "read_file",
            }
            return self._event({"type": "response.output_item.added", "output_index": 0, "item": item})
        msg = {"id": self.mid, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
        common = {"item_id": self.mid, "output_index": 0, "content_index": 0}
        return self._event(
            {"type": "response.output_item.added", "output_index": 0, "item": msg}
        ) + self._event(
            {
                "type": "response.content_part.added",
                **common,
                "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""},
            }
        )

    @property
    def n_deltas(self) -> int:
        return len(self.arg_chunks) if self.pace.tool else self.pace.tokens

    def delta(self, i: int, ts: int) -> bytes:
        seq = self.seq
        self.seq += 1
        if self.pace.tool:
            payload = (
                b'{"type":"response.function_call_arguments.delta","sequence_number":%d,"item_id":"%s",'
                b'"output_index":0,"delta":%s,"obfuscation":"Qx7pL"}'
                % (seq, self.fc_id.encode(), self.arg_chunks[i])
            )
            return b"event: response.function_call_arguments.delta\ndata: " + payload + b"\n\n"
        stamp = b"%d" % ts
        self.texts.append(stamp)
        return (
            b"event: response.output_text.delta\ndata: "
            + self._delta_head
            + b"%d" % seq
            + self._delta_mid
            + stamp
            + self._delta_tail
            + b"\n\n"
        )

    def tail(self) -> bytes:
        usage = {
            "input_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.n_deltas,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 12 + self.n_deltas,
        }
        out = []
        if self.pace.tool:
            item = {
                "id": self.fc_id,
                "type": "function_call",
                "status": "completed",
                "arguments": self.args,
                "call_id": self.call_id,
                "name": "read_file",
            }
            out.append(
                self._event(
                    {
                        "type": "response.function_call_arguments.done",
                        "item_id": self.fc_id,
                        "output_index": 0,
                        "arguments": self.args,
                    }
                )
            )
        else:
            text = "".join(f"t{s.decode()} " for s in self.texts)
            part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
            common = {"item_id": self.mid, "output_index": 0, "content_index": 0}
            out.append(
                self._event({"type": "response.output_text.done", **common, "text": text, "logprobs": []})
            )
            out.append(self._event({"type": "response.content_part.done", **common, "part": part}))
            item = {
                "id": self.mid,
                "type": "message",
                "status": "completed",
                "content": [part],
                "role": "assistant",
            }
        out.append(self._event({"type": "response.output_item.done", "output_index": 0, "item": item}))
        final = {
            **self.base,
            "status": "completed",
            "completed_at": int(time.time()),
            "output": [item],
            "usage": usage,
        }
        out.append(self._event({"type": "response.completed", "response": final}))
        return b"".join(out)


class ChatStream:
    """One streamed Chat Completions answer (``data:`` chunks, usage chunk, ``[DONE]``)."""

    def __init__(self, model: str, pace: Pace, body: dict[str, object]) -> None:
        n = next(_ids)
        self.pace = pace
        self.n_deltas = pace.tokens
        head = {
            "id": f"chatcmpl-bench{n:010d}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_bench",
        }
        self._prefix = orjson.dumps(head)[:-1] + b',"choices":[{"index":0,"delta":{"content":"t'
        self._suffix = b' "},"logprobs":null,"finish_reason":null}]}'
        self._head = head

    def head(self) -> bytes:
        return b""  # Chat servers say nothing before the first token

    def open(self) -> bytes:
        chunk = {
            **self._head,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": "", "refusal": None},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def delta(self, i: int, ts: int) -> bytes:
        return b"data: " + self._prefix + b"%d" % ts + self._suffix + b"\n\n"

    def tail(self) -> bytes:
        fin = {
            **self._head,
            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
        }
        usage = {
            **self._head,
            "choices": [],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": self.n_deltas,
                "total_tokens": 12 + self.n_deltas,
            },
        }
        return b"data: " + orjson.dumps(fin) + b"\n\ndata: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n"
