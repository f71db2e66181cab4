"""replay_events: a stored Response streamed again obeys the same rules as a live stream."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.invariants import check_stream
from tests.core.test_events import OPS, TERMINALS, USAGE, builder, finish, run_ops
from wsproxy.core.events import ResponseBuilder
from wsproxy.core.replay import replay_events


def built(ops: list[tuple[str, str]], terminal: str = "complete") -> ResponseBuilder:
    b = builder()
    run_ops(b, ops, True)
    finish(b, terminal)
    return b


def test_replay_of_text_and_calls() -> None:
    b = built([("text", "Hel"), ("text", "lo"), ("refusal", "no"), ("call", "f"), ("args", '{"a":1}')])
    events = replay_events(b.response)
    summary = check_stream(events)
    assert summary.response == b.response
    assert summary.types[-1] == "response.completed"
    assert summary.deltas["response.output_text.delta"] == ["Hello"]
    assert summary.deltas["response.refusal.delta"] == ["no"]
    assert summary.deltas["response.function_call_arguments.delta"] == ['{"a":1}']
    created = events[0].json()["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    assert created["id"] == b.id


def test_replay_of_incomplete_and_failed() -> None:
    for terminal, kind in [("incomplete", "response.incomplete"), ("fail", "response.failed")]:
        b = built([("text", "partial")], terminal)
        summary = check_stream(replay_events(b.response))
        assert summary.types[-1] == kind
        assert summary.response == b.response
        assert summary.items[0]["status"] == "incomplete"


def test_replay_of_empty_response() -> None:
    b = builder()
    b.complete(USAGE, 1)
    summary = check_stream(replay_events(b.response))
    assert summary.types == ["response.created", "response.in_progress", "response.completed"]


def test_replay_of_reasoning_summary_streams_the_summary() -> None:
    """Spec 4.3: a reasoning item is added with ``summary: []`` and its summary text arrives through
    reasoning_summary_part / reasoning_summary_text events, like any other streamed text."""
    b = built([("summary", "Thinking"), ("text", "Answer")])
    summary = check_stream(replay_events(b.response))
    assert summary.deltas["response.reasoning_summary_text.delta"] == ["Thinking"]
    assert summary.response == b.response


def test_replay_of_raw_reasoning_text_streams_the_content_part() -> None:
    b = built([("reasoning", "hmm"), ("text", "Answer")])
    summary = check_stream(replay_events(b.response))
    assert summary.deltas["response.reasoning_text.delta"] == ["hmm"]
    assert summary.response == b.response


def test_replay_of_empty_reasoning_item() -> None:
    b = built([("open_reasoning", ""), ("text", "x")])
    summary = check_stream(replay_events(b.response))
    assert summary.response == b.response


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(OPS, max_size=20), terminal=TERMINALS)
def test_replay_of_any_built_response_is_valid(ops: list[tuple[str, str]], terminal: str) -> None:
    b = built(ops, terminal)
    summary = check_stream(replay_events(b.response))
    assert summary.response == b.response
    assert summary.response["status"] == b.response["status"]
    assert summary.items == b.response["output"]
