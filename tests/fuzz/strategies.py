"""Hypothesis strategies for create requests and WebSocket frames: mostly-valid requests with
one thing wrong, as well as arbitrary JSON, text and bytes."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import strategies as st

from wsproxy.core.request import BODY_FIELDS, HTTP_ONLY, WS_ONLY

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

FIELDS = sorted(BODY_FIELDS | HTTP_ONLY | WS_ONLY)
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=12))

content_parts = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(["input_text", "output_text", "x"]),
                "text": st.one_of(st.text(max_size=30), json_scalars),
            }
        ),
        json_values,
    ),
    max_size=3,
)
items = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]),
            "content": st.one_of(st.text(max_size=40), content_parts),
        },
        optional={"type": st.sampled_from(["message", "mystery"]), "id": json_scalars},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("function_call_output"),
            "call_id": st.one_of(st.text(max_size=8), json_scalars),
            "output": json_values,
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("function_call"),
            "call_id": st.text(max_size=8),
            "name": st.text(max_size=8),
            "arguments": st.one_of(st.text(max_size=20), json_values),
        }
    ),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    json_scalars,
)
tools = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("function"), "name": st.text(min_size=1, max_size=8)},
            optional={
                "parameters": st.one_of(
                    json_values,
                    st.just(
                        {
                            "type": "object",
                            "properties": {"city": {"type": "string"}, "n": {"type": "integer"}},
                        }
                    ),
                )
            },
        ),
        json_values,
    ),
    max_size=3,
)

field_values: dict[str, Any] = {
    "model": st.one_of(st.just("local"), st.just("local@local"), st.text(max_size=10), json_scalars),
    "input": st.one_of(st.text(max_size=60), st.lists(items, max_size=4), json_values),
    "instructions": st.one_of(st.text(max_size=30), json_values),
    "tools": st.one_of(tools, json_values),
    "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required"]), json_values),
    "temperature": st.one_of(st.floats(min_value=-1, max_value=3, allow_nan=False), json_scalars),
    "top_p": st.one_of(st.floats(min_value=-1, max_value=2, allow_nan=False), json_scalars),
    "max_output_tokens": st.one_of(st.integers(min_value=-2, max_value=50), json_scalars),
    "store": st.one_of(st.booleans(), json_scalars),
    "previous_response_id": st.one_of(st.just("resp_missing"), st.text(max_size=10), json_scalars),
    "stream_id": st.one_of(st.sampled_from(["a", "b", "lane.1"]), st.text(max_size=10), json_scalars),
    "generate": st.one_of(st.booleans(), json_scalars),
    "stream": st.one_of(st.booleans(), json_scalars),
    "background": st.one_of(st.booleans(), json_scalars),
    "metadata": st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3), json_values),
}


@st.composite
def create_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A create body: usually a valid core, plus random fields with random values."""
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["model"] = "local"
        body["input"] = draw(st.text(max_size=40))
    for key in draw(st.lists(keys, max_size=5, unique=True)):
        strategy = field_values.get(key, json_values)
        body[key] = draw(strategy)
    return body


@st.composite
def ws_frames(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.sampled_from(["create", "create", "create", "json", "text", "bytes", "type"]))
    if kind == "create":
        body = draw(create_bodies())
        return orjson.dumps({"type": "response.create", **body}).decode()
    if kind == "json":
        return orjson.dumps(draw(json_values)).decode()
    if kind == "text":
        return draw(st.text(max_size=50))
    if kind == "bytes":
        return draw(st.binary(max_size=50))
    return orjson.dumps({"type": draw(st.one_of(st.text(max_size=20), json_scalars))}).decode()
