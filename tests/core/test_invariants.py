"""The invariant checker itself must reject broken streams, or the property tests prove nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.core.invariants import StreamViolation, check_stream
from tests.core.test_events import USAGE, builder


def good_stream() -> list[dict[str, Any]]:
    b = builder()
    events = b.start() + b.reasoning_summary_delta("s") + b.text_delta("a") + b.text_delta("b")
    events += b.function_call("call_1", "f") + b.arguments_delta("{}") + b.complete(USAGE, 1)
    return [e.json() for e in events]


def renumber(ps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**p, "sequence_number": i} for i, p in enumerate(ps)]


def index_of(ps: list[dict[str, Any]], kind: str) -> int:
    return next(i for i, p in enumerate(ps) if p["type"] == kind)


def drop(kind: str) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    def mutate(ps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        i = index_of(ps, kind)
        return renumber(ps[:i] + ps[i + 1 :])

    return mutate


def edit(kind: str, **fields: Any) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    def mutate(ps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        i = index_of(ps, kind)
        return [*ps[:i], {**ps[i], **fields}, *ps[i + 1 :]]

    return mutate


def swap_seq(ps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [*ps[:3], {**ps[3], "sequence_number": 4}, {**ps[4], "sequence_number": 3}, *ps[5:]]


def two_terminals(ps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return renumber([*ps, ps[-1]])


def terminal_without_output(ps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [*ps[:-1], {**ps[-1], "response": {**ps[-1]["response"], "output": []}}]


def terminal_missing_key(ps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    resp = dict(ps[-1]["response"])
    del resp["tools"]
    return [*ps[:-1], {**ps[-1], "response": resp}]


def interleaved(ps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Move the message's output_item.done after the function call's output_item.added.
    i = index_of(ps, "response.output_item.done")
    i = next(k for k, p in enumerate(ps) if p["type"] == "response.output_item.done" and k > i)
    j = next(k for k, p in enumerate(ps) if p["type"] == "response.output_item.added" and k > i)
    moved = [*ps[:i], *ps[i + 1 : j + 1], ps[i], *ps[j + 1 :]]
    return renumber(moved)


MUTATIONS = {
    "drop created": drop("response.created"),
    "drop content_part.added": drop("response.content_part.added"),
    "drop output_text.done": drop("response.output_text.done"),
    "drop summary part done": drop("response.reasoning_summary_part.done"),
    "drop arguments.done": drop("response.function_call_arguments.done"),
    "drop terminal": drop("response.completed"),
    "wrong done text": edit("response.output_text.done", text="ab!"),
    "wrong summary text": edit("response.reasoning_summary_text.done", text="x"),
    "wrong output_index": edit("response.output_text.delta", output_index=5),
    "wrong item_id": edit("response.output_text.delta", item_id="msg_other"),
    "no logprobs": edit("response.output_text.delta", logprobs=None),
    "wrong content_index": edit("response.content_part.added", content_index=1),
    "no name on arguments.done": edit("response.function_call_arguments.done", name=None),
    "non-empty added snapshot": edit(
        "response.output_item.added", item={"id": "rs_0001", "type": "reasoning", "summary": [{}]}
    ),
    "swapped seq": swap_seq,
    "two terminals": two_terminals,
    "terminal output empty": terminal_without_output,
    "terminal missing key": terminal_missing_key,
    "interleaved items": interleaved,
}


def test_the_good_stream_passes() -> None:
    check_stream(good_stream())


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_each_mutation_is_caught(name: str) -> None:
    with pytest.raises(StreamViolation):
        check_stream(MUTATIONS[name](good_stream()))
