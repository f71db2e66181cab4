"""Golden transcripts for the translating dialects, and the event-stream rules every translation
must obey.

A fixture is raw upstream SSE bytes in the provider's wire format
(``tests/fixtures/<dialect>/<name>.sse``); its expected Responses events are
``<name>.expected.jsonl``, one event's wire JSON per line, made with deterministic ids
(``counter_ids``) and a fixed ``created_at``.

Regenerate after a deliberate change with ``WSPROXY_REGEN_GOLDEN=1 python -m pytest tests/dialects``
and read every changed file against the spec before keeping it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from tests.schema import validate_event
from wsproxy.core.events import TERMINAL_TYPES, Event
from wsproxy.core.ids import counter_ids
from wsproxy.core.sse import SSEDecoder
from wsproxy.dialects.anthropic_messages import AnthropicMessagesDialect
from wsproxy.dialects.base import Dialect, DialectOptions, StreamTranslator, UpstreamCall
from wsproxy.dialects.chat_completions import ChatCompletionsDialect
from wsproxy.dialects.gemini_stream import GeminiDialect

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CREATED_AT = 1_700_000_000
RESPONSE_ID = "resp_golden"
REGEN = os.environ.get("WSPROXY_REGEN_GOLDEN") == "1"

DIALECTS: dict[str, Dialect] = {
    "chat": ChatCompletionsDialect(),
    "anthropic": AnthropicMessagesDialect(),
    "gemini": GeminiDialect(),
}

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
GMAIL_NAMESPACE = {
    "type": "namespace",
    "name": "mcp__codex_apps__gmail",
    "description": "Find and reference emails from your inbox.",
    "tools": [
        {
            "type": "function",
            "name": "_search_emails",
            "description": "Search Gmail.",
            "strict": False,
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        }
    ],
}

# Request bodies that differ from the default for a fixture.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("chat", "namespace_tool_call"): {"tools": [GMAIL_NAMESPACE]},
    ("gemini", "namespace_call"): {"tools": [GMAIL_NAMESPACE]},
}


def fixture_names(dialect: str) -> list[str]:
    return sorted(p.name[: -len(".sse")] for p in (FIXTURES / dialect).glob("*.sse"))


def fixture_bytes(dialect: str, name: str) -> bytes:
    return (FIXTURES / dialect / f"{name}.sse").read_bytes()


def make_call(dialect: str = "chat", name: str = "", **options: Any) -> UpstreamCall:
    body: dict[str, Any] = {"model": "client-model", "input": "hi", "tools": [WEATHER_TOOL]}
    body.update(BODIES.get((dialect, name), {}))
    return UpstreamCall(
        body=body,
        input=[{"type": "message", "role": "user", "content": "hi"}],
        model="upstream-model",
        options=DialectOptions(**options),
    )


def make_translator(dialect: str, name: str = "") -> StreamTranslator:
    call = make_call(dialect, name)
    return DIALECTS[dialect].translator(RESPONSE_ID, call, CREATED_AT, counter_ids())


def run(translator: StreamTranslator, chunks: Iterable[bytes]) -> list[Event]:
    """Feed byte chunks through the SSE decoder and the translator, as the upstream layer does."""
    decoder = SSEDecoder()
    events = translator.start()
    for chunk in chunks:
        for message in decoder.feed(chunk):
            events += translator.feed(message)
    for message in decoder.flush():
        events += translator.feed(message)
    events += translator.finish()
    for event in events:
        validate_event(event.json())  # every translated event matches the Open Responses schema
    return events


def translate(dialect: str, name: str, chunks: Iterable[bytes] | None = None) -> list[Event]:
    data = fixture_bytes(dialect, name)
    return run(make_translator(dialect, name), [data] if chunks is None else chunks)


def check_golden(dialect: str, name: str) -> list[dict[str, Any]]:
    """Compare a fixture's translation with its expected file (or rewrite it under REGEN)."""
    events = translate(dialect, name)
    lines = [e.data.decode() for e in events]
    path = FIXTURES / dialect / f"{name}.expected.jsonl"
    if REGEN:
        path.write_text("".join(line + "\n" for line in lines))
    expected = path.read_text().splitlines()
    assert lines == expected, f"{path.name}: translation differs from the golden file"
    return [e.json() for e in events]


# -- the rules of a Responses event stream (responses-streaming.md sections 2, 4, 5) ----------

_DELTA_DONE = {
    "response.output_text.delta": ("response.output_text.done", "text"),
    "response.refusal.delta": ("response.refusal.done", "refusal"),
    "response.reasoning_text.delta": ("response.reasoning_text.done", "text"),
    "response.reasoning_summary_text.delta": ("response.reasoning_summary_text.done", "text"),
}


def check_stream(events: list[dict[str, Any]]) -> None:
    """Assert the ordering and consistency rules of one response's event stream."""
    assert [e["sequence_number"] for e in events] == list(range(len(events))), "sequence numbers"
    assert events[0]["type"] == "response.created"
    terminals = [i for i, e in enumerate(events) if e["type"] in TERMINAL_TYPES]
    assert terminals == [len(events) - 1], "exactly one terminal event, and it is last"
    added: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    open_index: int | None = None
    deltas: dict[tuple[int, str, int], list[str]] = {}
    args: dict[int, list[str]] = {}
    for e in events:
        kind = e["type"]
        index: Any = e.get("output_index")
        if kind == "response.output_item.added":
            assert index == len(added), "output_index contiguous from 0, in the order items are added"
            assert open_index is None, "items stream one after another"
            assert e["item"].get("status", "in_progress") == "in_progress"
            added[index] = e["item"]
            open_index = index
            continue
        if index is not None:
            assert index == open_index, f"{kind} for item {index} outside its added..done window"
            item_id = added[index]["id"]
            if "item_id" in e:
                assert e["item_id"] == item_id, "item_id equals the added item's id"
        if kind in _DELTA_DONE:
            slot: Any = e.get("content_index", e.get("summary_index"))
            deltas.setdefault((index, kind, slot), []).append(e["delta"])
        elif kind == "response.function_call_arguments.delta":
            args.setdefault(index, []).append(e["delta"])
        elif kind in {done_type for done_type, _ in _DELTA_DONE.values()}:
            delta_kind = next(k for k, (d, _) in _DELTA_DONE.items() if d == kind)
            slot = e.get("content_index", e.get("summary_index"))
            field = _DELTA_DONE[delta_kind][1]
            assert e[field] == "".join(deltas.get((index, delta_kind, slot), [])), f"{kind} equals its deltas"
        elif kind == "response.function_call_arguments.done":
            assert e["arguments"] == "".join(args.get(index, [])), "arguments.done equals its deltas"
            assert e["name"] == added[index]["name"]
        elif kind == "response.output_item.done":
            item = e["item"]
            assert item["id"] == added[index]["id"] and item["type"] == added[index]["type"]
            _check_item_text(item, index, deltas, args)
            done[index] = item
            open_index = None
    assert open_index is None, "every added item is done before the terminal event"
    assert sorted(done) == sorted(added)
    final = events[-1]["response"]
    assert final["output"] == [done[i] for i in range(len(done))], "terminal output equals the done items"
    assert final["status"] == events[-1]["type"].removeprefix("response.")
    assert final["usage"] is not None


def _check_item_text(
    item: dict[str, Any],
    index: int,
    deltas: dict[tuple[int, str, int], list[str]],
    args: dict[int, list[str]],
) -> None:
    if item["type"] == "function_call":
        assert item["arguments"] == "".join(args.get(index, []))
        return
    for c, part in enumerate(item.get("content") or []):
        if part["type"] == "output_text":
            assert part["text"] == "".join(deltas.get((index, "response.output_text.delta", c), []))
        elif part["type"] == "refusal":
            assert part["refusal"] == "".join(deltas.get((index, "response.refusal.delta", c), []))
        elif part["type"] == "reasoning_text":
            assert part["text"] == "".join(deltas.get((index, "response.reasoning_text.delta", c), []))


def dump(events: list[Event]) -> str:
    """Readable transcript for assertion messages."""
    return "\n".join(orjson.dumps(e.json()).decode() for e in events)
