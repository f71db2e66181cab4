"""Properties every translated stream must have, whatever the upstream's byte chunking and
whatever order a (valid) upstream sends its pieces in."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.dialects.golden import check_stream, fixture_bytes, fixture_names, make_translator, run, translate

FIXTURES = [(dialect, n) for dialect in ("chat", "anthropic", "gemini") for n in fixture_names(dialect)]


def test_every_fixture_obeys_the_stream_rules() -> None:
    assert len(FIXTURES) >= 20
    for dialect, name in FIXTURES:
        check_stream([e.json() for e in translate(dialect, name)])


@given(data=st.data())
@settings(max_examples=100, deadline=None)
def test_any_chunking_gives_the_same_events(data: st.DataObject) -> None:
    dialect, name = data.draw(st.sampled_from(FIXTURES), label="fixture")
    raw = fixture_bytes(dialect, name)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(raw)), max_size=40), label="cuts")
    points = sorted({0, len(raw), *cuts})
    chunks = [raw[a:b] for a, b in itertools.pairwise(points)]
    whole = translate(dialect, name)
    chunked = translate(dialect, name, chunks)
    assert [e.data for e in chunked] == [e.data for e in whole]
    check_stream([e.json() for e in chunked])


def test_one_byte_at_a_time_gives_the_same_events() -> None:
    for dialect, name in FIXTURES:
        raw = fixture_bytes(dialect, name)
        ones = [raw[i : i + 1] for i in range(len(raw))]
        assert [e.data for e in translate(dialect, name, ones)] == [e.data for e in translate(dialect, name)]


# -- random Chat streams: text, reasoning and parallel tool calls in any valid interleaving --------

_text = st.text(alphabet="abc xyz<>/", min_size=1, max_size=6)


@st.composite
def chat_script(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, str], str]:
    """Chunks of one Chat stream: optional reasoning, optional text, then 0-3 tool calls whose
    argument fragments interleave arbitrarily (each call's arguments are a complete JSON object,
    its first fragment carries id and name). Returns (chunks, call_id -> arguments, finish)."""
    chunks: list[dict[str, Any]] = []
    for piece in draw(st.lists(_text, max_size=3)):
        chunks.append({"reasoning_content": piece})
    for piece in draw(st.lists(_text, max_size=3)):
        chunks.append({"content": piece})
    n_calls = draw(st.integers(min_value=0, max_value=3))
    expected: dict[str, str] = {}
    queues: list[list[dict[str, Any]]] = []
    for index in range(n_calls):
        args = orjson.dumps({"v": draw(st.text(max_size=8))}).decode()
        cuts = sorted(set(draw(st.lists(st.integers(min_value=0, max_value=len(args)), max_size=4))))
        points = [0, *cuts, len(args)]
        pieces = [args[a:b] for a, b in itertools.pairwise(points)]
        call_id = f"call_{index}"
        expected[call_id] = args
        frags = [
            {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": f"f{index}", "arguments": ""},
            }
        ]
        frags += [{"index": index, "function": {"arguments": p}} for p in pieces]
        queues.append(frags)
    # Interleave the calls' fragment queues in a random order, keeping each call's own order.
    while any(queues):
        live = [q for q in queues if q]
        queue = draw(st.sampled_from(live))
        take = draw(st.integers(min_value=1, max_value=len(queue)))
        chunks.append({"tool_calls": queue[:take]})
        del queue[:take]
    finish = draw(st.sampled_from(["stop", "tool_calls", "length"]))
    return chunks, expected, finish


def _sse(chunks: list[dict[str, Any]], finish: str) -> bytes:
    out = [
        b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    ]
    for delta in chunks:
        payload = {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": None}], "usage": None}
        out.append(b"data: " + orjson.dumps(payload) + b"\n\n")
    out.append(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"' + finish.encode() + b'"}]}\n\n')
    out.append(b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n')
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


@given(script=chat_script(), cut=st.integers(min_value=1, max_value=50))
@settings(max_examples=100, deadline=None)
def test_random_chat_streams_keep_every_call_whole_and_in_order(
    script: tuple[list[dict[str, Any]], dict[str, str], str], cut: int
) -> None:
    chunks, expected, finish = script
    raw = _sse(chunks, finish)
    events = [
        e.json() for e in run(make_translator("chat"), [raw[i : i + cut] for i in range(0, len(raw), cut)])
    ]
    check_stream(events)
    response = events[-1]["response"]
    assert response["status"] == ("incomplete" if finish == "length" else "completed")
    calls = {i["call_id"]: i["arguments"] for i in response["output"] if i["type"] == "function_call"}
    assert calls == expected
    texts = [p["text"] for i in response["output"] if i["type"] == "message" for p in i["content"]]
    assert "".join(texts) == "".join(d.get("content", "") for d in chunks)
    reasoning = [
        p["text"] for i in response["output"] if i["type"] == "reasoning" for p in i.get("content", [])
    ]
    assert "".join(reasoning) == "".join(d.get("reasoning_content", "") for d in chunks)
    assert response["usage"]["total_tokens"] == 3
