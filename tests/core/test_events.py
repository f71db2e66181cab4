"""ResponseBuilder: the event sequences of responses-streaming.md section 4."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.invariants import REQUIRED_RESPONSE_KEYS, check_stream
from wsproxy.core.events import (
    TERMINAL_TYPES,
    Event,
    ResponseBuilder,
    usage_object,
)
from wsproxy.core.ids import counter_ids

CREATED_AT = 1_700_000_000
USAGE = usage_object(10, 5, cached_tokens=2, reasoning_tokens=1)


def builder(request: dict[str, Any] | None = None) -> ResponseBuilder:
    return ResponseBuilder("resp_1", "gpt-test", CREATED_AT, request, ids=counter_ids())


def message_text(output: list[dict[str, Any]]) -> str:
    return "".join(
        part["text"]
        for item in output
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


def types(events: list[Event]) -> list[str]:
    return [e.type for e in events]


def payloads(events: list[Event]) -> list[dict[str, Any]]:
    return [e.json() for e in events]


def test_plain_text_matches_spec_4_1() -> None:
    b = builder()
    events = b.start() + b.text_delta("Hel") + b.text_delta("lo") + b.complete(USAGE, CREATED_AT + 1)
    assert types(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    p = payloads(events)
    assert [x["sequence_number"] for x in p] == list(range(len(p)))
    assert p[0]["response"]["status"] == "in_progress" and p[0]["response"]["output"] == []
    assert p[2]["output_index"] == 0
    assert p[2]["item"] == {
        "id": "msg_0001",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    assert p[3]["part"] == {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    assert (p[3]["item_id"], p[3]["output_index"], p[3]["content_index"]) == ("msg_0001", 0, 0)
    assert [x["delta"] for x in p[4:6]] == ["Hel", "lo"]
    assert all(x["logprobs"] == [] and x["content_index"] == 0 for x in p[4:7])
    assert p[6]["text"] == "Hello"
    assert p[7]["part"]["text"] == "Hello"
    done_item = p[8]["item"]
    assert done_item["status"] == "completed"
    assert done_item["content"][0]["type"] == "output_text"
    assert done_item["content"][0]["text"] == "Hello"
    assert done_item["content"][0]["annotations"] == []
    final = p[9]["response"]
    assert final["status"] == "completed"
    assert final["output"] == [done_item]
    assert final["usage"] == USAGE
    assert final["completed_at"] == CREATED_AT + 1
    check_stream(events)


def test_function_calls_after_text_match_spec_4_2() -> None:
    b = builder()
    events = b.start() + b.text_delta("Let me check.")
    events += b.function_call("call_A", "get_weather")
    events += b.arguments_delta('{"ci') + b.arguments_delta('ty":"Paris"}')
    events += b.function_call("call_B", "get_time")
    events += b.arguments_delta("{}")
    events += b.complete(USAGE, CREATED_AT + 1)
    t = types(events)
    # The message is fully closed before the first call is added.
    assert t[2:9] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
    ]
    assert t[9:] == [
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    p = payloads(events)
    added = p[8]
    assert added["output_index"] == 1
    assert added["item"] == {
        "id": "fc_0002",
        "type": "function_call",
        "status": "in_progress",
        "call_id": "call_A",
        "name": "get_weather",
        "arguments": "",
    }
    args_done = p[11]
    assert args_done["arguments"] == '{"city":"Paris"}'
    assert args_done["name"] == "get_weather"
    assert args_done["item_id"] == "fc_0002" and args_done["output_index"] == 1
    assert p[12]["item"]["status"] == "completed"
    assert p[12]["item"]["arguments"] == '{"city":"Paris"}'
    assert p[13]["output_index"] == 2 and p[13]["item"]["call_id"] == "call_B"
    final = p[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call", "function_call"]
    summary = check_stream(events)
    assert summary.items == final["output"]


def test_function_call_without_arguments_gets_empty_object() -> None:
    b = builder()
    events = b.start() + b.function_call("call_1", "ping") + b.complete(None, CREATED_AT)
    p = payloads(events)
    done = next(x for x in p if x["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == "{}"
    assert done["name"] == "ping"
    # The deltas add up to the arguments of the done event: "{}" is streamed too.
    deltas = [x["delta"] for x in p if x["type"] == "response.function_call_arguments.delta"]
    assert deltas == ["{}"]
    assert p[-1]["response"]["output"][0]["arguments"] == "{}"
    check_stream(events)


def test_reasoning_summary_then_answer_matches_spec_4_3() -> None:
    b = builder()
    events = b.start() + b.reasoning_summary_delta("Think") + b.reasoning_summary_delta("ing")
    events += b.text_delta("Answer") + b.complete(USAGE, CREATED_AT)
    assert types(events)[2:10] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
    ]
    p = payloads(events)
    assert p[2]["item"] == {"id": "rs_0001", "type": "reasoning", "summary": []}
    assert p[3]["summary_index"] == 0 and p[3]["part"] == {"type": "summary_text", "text": ""}
    assert p[6]["text"] == "Thinking"
    assert p[7]["part"] == {"type": "summary_text", "text": "Thinking"}
    assert p[8]["item"]["summary"] == [{"type": "summary_text", "text": "Thinking"}]
    assert p[9]["output_index"] == 1 and p[9]["item"]["type"] == "message"
    check_stream(events)


def test_raw_reasoning_text_goes_in_content_parts() -> None:
    b = builder()
    events = b.start() + b.reasoning_delta("hmm ") + b.reasoning_delta("ok") + b.complete(None, CREATED_AT)
    assert types(events)[2:9] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    p = payloads(events)
    assert p[3]["part"] == {"type": "reasoning_text", "text": ""}
    assert p[6]["text"] == "hmm ok"
    item = p[8]["item"]
    assert item["summary"] == []
    assert item["content"] == [{"type": "reasoning_text", "text": "hmm ok"}]
    assert "status" not in item  # OpenAI streams reasoning items without a status
    check_stream(events)


def test_empty_reasoning_item_is_added_then_done() -> None:
    b = builder()
    events = b.start() + b.open_reasoning()
    b.set_reasoning_encrypted("sig")
    events += b.complete(None, CREATED_AT)
    p = payloads(events)
    assert types(events)[2:4] == ["response.output_item.added", "response.output_item.done"]
    assert p[3]["item"]["summary"] == [] and p[3]["item"]["encrypted_content"] == "sig"
    check_stream(events)


def test_refusal() -> None:
    b = builder()
    events = b.start() + b.refusal_delta("I can't ") + b.refusal_delta("help.") + b.complete(None, CREATED_AT)
    assert types(events)[3:8] == [
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
    ]
    p = payloads(events)
    assert p[3]["part"] == {"type": "refusal", "refusal": ""}
    assert p[6]["refusal"] == "I can't help."
    assert p[8]["item"]["content"] == [{"type": "refusal", "refusal": "I can't help."}]
    check_stream(events)


def test_switching_item_kind_closes_the_previous_item() -> None:
    b = builder()
    events = b.start() + b.text_delta("a")
    switch = b.reasoning_delta("r")
    assert types(switch)[:4] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
    ]
    events += switch
    switch = b.text_delta("b")
    assert types(switch)[:4] == [
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
    ]
    events += switch + b.complete(None, CREATED_AT)
    final = check_stream(events).response
    assert [i["type"] for i in final["output"]] == ["message", "reasoning", "message"]
    assert [i["id"] for i in final["output"]] == ["msg_0001", "rs_0002", "msg_0003"]


def test_text_and_refusal_parts_share_one_message() -> None:
    b = builder()
    events = b.start() + b.text_delta("a") + b.refusal_delta("no") + b.text_delta("b")
    events += b.complete(None, CREATED_AT)
    final = check_stream(events).response
    assert len(final["output"]) == 1
    assert [part["type"] for part in final["output"][0]["content"]] == [
        "output_text",
        "refusal",
        "output_text",
    ]


def test_end_text_part_keeps_the_message_open() -> None:
    b = builder()
    events = b.start() + b.text_delta("one") + b.end_text_part()
    assert types(events)[-2:] == ["response.output_text.done", "response.content_part.done"]
    assert b.open_item_type == "message"
    events += b.end_text_part()  # nothing open: no events
    events += b.text_delta("two") + b.complete(None, CREATED_AT)
    p = payloads(events)
    assert [x["content_index"] for x in p if x["type"] == "response.content_part.added"] == [0, 1]
    final = check_stream(events).response
    assert [c["text"] for c in final["output"][0]["content"]] == ["one", "two"]
    assert message_text(final["output"]) == "onetwo"


def test_close_item_then_text_opens_a_new_message() -> None:
    b = builder()
    events = b.start() + b.text_delta("a") + b.close_item() + b.close_item() + b.text_delta("b")
    events += b.complete(None, CREATED_AT)
    assert [i["id"] for i in check_stream(events).response["output"]] == ["msg_0001", "msg_0002"]


def test_arguments_delta_outside_a_function_call_is_ignored() -> None:
    b = builder()
    assert b.start() and b.arguments_delta("{}") == []
    assert b.text_delta("x") and b.arguments_delta("{}") == []


def test_empty_deltas_emit_nothing() -> None:
    b = builder()
    b.start()
    for call in (b.text_delta, b.refusal_delta, b.reasoning_delta, b.reasoning_summary_delta):
        assert call("") == []
    assert b.open_item_type is None


def test_incomplete_matches_spec_4_4() -> None:
    b = builder()
    events = b.start() + b.text_delta("partial") + b.incomplete("max_output_tokens", USAGE)
    assert types(events)[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    p = payloads(events)
    assert p[-2]["item"]["status"] == "incomplete"
    assert p[-2]["item"]["content"][0]["text"] == "partial"
    final = p[-1]["response"]
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["usage"] == USAGE
    assert final["error"] is None
    check_stream(events)


def test_incomplete_with_no_open_item() -> None:
    b = builder()
    events = b.start() + b.text_delta("x") + b.close_item() + b.incomplete("content_filter", None)
    final = check_stream(events).response
    assert final["output"][0]["status"] == "completed"
    assert final["incomplete_details"] == {"reason": "content_filter"}
    assert final["usage"] == usage_object()


def test_fail_emits_error_then_failed_and_closes_open_items() -> None:
    b = builder()
    events = b.start() + b.function_call("call_1", "f") + b.arguments_delta('{"a"')
    tail = b.fail("server_error", "upstream died")
    t = types(tail)
    assert t[0] == "error" and t[-1] == "response.failed"
    assert "response.output_item.done" in t
    p = payloads(tail)
    assert p[0] == {
        "type": "error",
        "sequence_number": p[0]["sequence_number"],
        "code": "server_error",
        "message": "upstream died",
        "param": None,
    }
    item_done = next(x for x in p if x["type"] == "response.output_item.done")
    assert item_done["item"]["status"] == "incomplete"
    assert item_done["item"]["arguments"] == '{"a"'
    final = p[-1]["response"]
    assert final["status"] == "failed"
    assert final["error"] == {"code": "server_error", "message": "upstream died"}
    assert final["output"] == [item_done["item"]]
    check_stream(events + tail)


def test_fail_before_start_and_without_error_event() -> None:
    b = builder()
    events = b.fail("server_error", "boom")
    assert types(events) == ["response.created", "response.in_progress", "error", "response.failed"]
    check_stream(events)
    b = builder()
    events = b.start() + b.fail("rate_limit_exceeded", "slow down", error_event=False)
    assert types(events)[-1] == "response.failed" and "error" not in types(events)
    check_stream(events)


def test_exactly_one_terminal_and_every_call_after_it_is_a_no_op() -> None:
    b = builder()
    events = b.start() + b.text_delta("x") + b.complete(None, CREATED_AT)
    seq = b.seq
    after = [
        b.start(),
        b.text_delta("y"),
        b.refusal_delta("y"),
        b.reasoning_delta("y"),
        b.reasoning_summary_delta("y"),
        b.function_call("c", "f"),
        b.arguments_delta("{}"),
        b.open_reasoning(),
        b.close_item(),
        b.end_text_part(),
        b.complete(None, CREATED_AT),
        b.incomplete("max_output_tokens", None),
        b.fail("server_error", "late"),
    ]
    assert after == [[]] * len(after)
    assert b.seq == seq
    assert sum(e.terminal for e in events) == 1 and events[-1].terminal
    assert b.response["status"] == "completed"


def test_start_without_in_progress_and_start_is_idempotent() -> None:
    b = builder()
    first = b.start(in_progress=False)
    assert types(first) == ["response.created"]
    assert b.start() == []
    events = first + b.text_delta("x") + b.complete(None, CREATED_AT)
    assert "response.in_progress" not in types(events)
    check_stream(events)


def test_queued_comes_first_for_background() -> None:
    b = builder()
    events = b.queued() + b.start() + b.complete(None, CREATED_AT)
    assert types(events) == [
        "response.queued",
        "response.created",
        "response.in_progress",
        "response.completed",
    ]
    p = payloads(events)
    assert p[0]["sequence_number"] == 0 and p[0]["response"]["status"] == "queued"
    assert p[0]["response"]["background"] is True
    check_stream(events)


def test_complete_without_start_still_starts() -> None:
    events = builder().complete(None, CREATED_AT)
    assert types(events) == ["response.created", "response.in_progress", "response.completed"]
    check_stream(events)


def test_every_snapshot_carries_every_required_response_key() -> None:
    b = builder()
    events = b.start() + b.text_delta("x") + b.complete(USAGE, CREATED_AT)
    for e in events:
        if e.type.startswith("response.") and "response" in e.json():
            resp = e.json()["response"]
            assert REQUIRED_RESPONSE_KEYS <= resp.keys(), sorted(REQUIRED_RESPONSE_KEYS - resp.keys())
            assert resp["object"] == "response"
            assert resp["id"] == "resp_1" and resp["model"] == "gpt-test"
            assert resp["created_at"] == CREATED_AT


def test_request_settings_are_echoed_and_defaults_filled() -> None:
    request = {
        "instructions": "be brief",
        "temperature": 0.5,
        "top_p": 0.9,
        "store": False,
        "metadata": {"k": "v"},
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
        "tool_choice": "required",
        "previous_response_id": "resp_prev",
        "max_output_tokens": 100,
        "parallel_tool_calls": False,
        "text": {"verbosity": "low"},
    }
    resp = builder(request).start()[0].json()["response"]
    for key in ("instructions", "temperature", "top_p", "store", "metadata", "tool_choice"):
        assert resp[key] == request[key]
    # Function tools are echoed with every key OpenAI's have (strict defaults to true).
    assert resp["tools"] == [
        {"type": "function", "name": "f", "parameters": {}, "description": None, "strict": True}
    ]
    assert resp["previous_response_id"] == "resp_prev"
    assert resp["max_output_tokens"] == 100
    assert resp["parallel_tool_calls"] is False
    assert resp["text"] == {"verbosity": "low", "format": {"type": "text"}}
    defaults = builder().start()[0].json()["response"]
    assert defaults["instructions"] is None and defaults["previous_response_id"] is None
    assert defaults["tools"] == [] and defaults["metadata"] == {}
    assert defaults["temperature"] == 1.0 and defaults["top_p"] == 1.0
    assert defaults["store"] is True and defaults["tool_choice"] == "auto"
    assert defaults["text"]["format"] == {"type": "text"}
    assert defaults["truncation"] == "disabled"
    assert defaults["error"] is None and defaults["incomplete_details"] is None


def test_event_build_and_wire_json() -> None:
    e = Event.build({"type": "response.completed", "sequence_number": 3, "response": {}})
    assert (e.type, e.seq, e.terminal) == ("response.completed", 3, True)
    assert orjson.loads(e.data) == {"type": "response.completed", "sequence_number": 3, "response": {}}
    assert TERMINAL_TYPES == {"response.completed", "response.incomplete", "response.failed"}


# -- property: any sequence of calls gives a stream obeying the invariants ----------------------------

small_text = st.text(max_size=4)
OPS = st.one_of(
    st.tuples(st.just("text"), small_text),
    st.tuples(st.just("refusal"), small_text),
    st.tuples(st.just("reasoning"), small_text),
    st.tuples(st.just("summary"), small_text),
    st.tuples(st.just("call"), st.text("abcdef_", min_size=1, max_size=4)),
    st.tuples(st.just("args"), small_text),
    st.tuples(st.just("close"), st.just("")),
    st.tuples(st.just("end_part"), st.just("")),
    st.tuples(st.just("open_reasoning"), st.just("")),
)
TERMINALS = st.sampled_from(["complete", "incomplete", "fail", "fail_silent"])
PROPERTY = settings(max_examples=200, deadline=None)


def run_ops(b: ResponseBuilder, ops: list[tuple[str, str]], start: bool) -> list[Event]:
    events: list[Event] = b.start() if start else []
    for op, arg in ops:
        if op == "text":
            events += b.text_delta(arg)
        elif op == "refusal":
            events += b.refusal_delta(arg)
        elif op == "reasoning":
            events += b.reasoning_delta(arg)
        elif op == "summary":
            events += b.reasoning_summary_delta(arg)
        elif op == "call":
            events += b.function_call(f"call_{len(events)}", arg)
        elif op == "args":
            events += b.arguments_delta(arg)
        elif op == "close":
            events += b.close_item()
        elif op == "end_part":
            events += b.end_text_part()
        else:
            events += b.open_reasoning()
    return events


def finish(b: ResponseBuilder, terminal: str) -> list[Event]:
    if terminal == "complete":
        return b.complete(USAGE, CREATED_AT + 1)
    if terminal == "incomplete":
        return b.incomplete("max_output_tokens", USAGE)
    return b.fail("server_error", "boom", error_event=terminal == "fail")


def expected_items(ops: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A model of the builder: (item type, function name or '') for each item it must open."""
    items: list[tuple[str, str]] = []
    open_kind: str | None = None
    for op, arg in ops:
        if op in ("text", "refusal") and arg:
            if open_kind != "message":
                items.append(("message", ""))
                open_kind = "message"
        elif op in ("reasoning", "summary") and arg:
            if open_kind != "reasoning":
                items.append(("reasoning", ""))
                open_kind = "reasoning"
        elif op == "open_reasoning":
            items.append(("reasoning", ""))
            open_kind = "reasoning"
        elif op == "call":
            items.append(("function_call", arg))
            open_kind = "function_call"
        elif op == "close":
            open_kind = None
    return items


@PROPERTY
@given(ops=st.lists(OPS, max_size=25), terminal=TERMINALS, start=st.booleans())
def test_any_call_sequence_gives_a_valid_stream(
    ops: list[tuple[str, str]], terminal: str, start: bool
) -> None:
    b = builder()
    events = run_ops(b, ops, start) + finish(b, terminal)
    summary = check_stream(events)
    final = summary.response
    assert final == b.response
    expected_status = {"complete": "completed", "incomplete": "incomplete"}.get(terminal, "failed")
    assert final["status"] == expected_status
    assert [(i["type"], i.get("name", "")) for i in final["output"]] == expected_items(ops)
    # Nothing given to the builder is lost or reordered.
    assert message_text(final["output"]) == "".join(a for op, a in ops if op == "text")
    refusals = [
        p["refusal"]
        for i in final["output"]
        if i["type"] == "message"
        for p in i["content"]
        if p["type"] == "refusal"
    ]
    assert "".join(refusals) == "".join(a for op, a in ops if op == "refusal")
    reasoning = [p["text"] for i in final["output"] if i["type"] == "reasoning" for p in i.get("content", [])]
    assert "".join(reasoning) == "".join(a for op, a in ops if op == "reasoning")
    summaries = [p["text"] for i in final["output"] if i["type"] == "reasoning" for p in i["summary"]]
    assert "".join(summaries) == "".join(a for op, a in ops if op == "summary")
    # Terminal: exactly one, last; afterwards the builder is inert.
    assert [e.type in TERMINAL_TYPES for e in events].count(True) == 1
    assert finish(b, "complete") == [] and run_ops(b, ops, True) == []
