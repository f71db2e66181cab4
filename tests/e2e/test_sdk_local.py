"""The official openai SDK against a real wsproxy on 127.0.0.1, local model."""

from __future__ import annotations

import openai
import pytest

from tests.e2e.sdk import client


def test_create_json(proxy) -> None:
    resp = client(proxy).responses.create(model="local", input="tell me a story")
    assert resp.status == "completed"
    assert resp.output_text.startswith("Hello! This is the wsproxy local model. You said: tell me a story")
    assert resp.usage is not None and resp.usage.output_tokens > 0
    assert resp.id.startswith("resp_")


def test_create_stream_sse(proxy) -> None:
    stream = client(proxy).responses.create(model="local", input="hi", stream=True)
    events = list(stream)
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text


def test_max_output_tokens_incomplete(proxy) -> None:
    words = " ".join(f"w{i}" for i in range(30))
    resp = client(proxy).responses.create(model="local", input=words, max_output_tokens=16)
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output_text == "Hello! This is the wsproxy local model. You said: w0 w1 w2 w3 w4 w5 w6"


def test_instructions_are_honoured(proxy) -> None:
    resp = client(proxy).responses.create(model="local", input="x", instructions="Answer briefly")
    assert resp.output_text.startswith("(Instructions: Answer briefly)")
    assert resp.instructions == "Answer briefly"


def test_function_call_and_tool_loop(proxy) -> None:
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "weather",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        }
    ]
    c = client(proxy)
    first = c.responses.create(model="local", input="what is the get_weather in Paris", tools=tools)
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    second = c.responses.create(
        model="local",
        previous_response_id=first.id,
        tools=tools,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny and 21C"}],
    )
    assert "The tool returned: sunny and 21C" in second.output_text
    assert second.previous_response_id == first.id


def test_unknown_model_provider_is_404(proxy) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(proxy).responses.create(model="nope@x", input="hi")
    assert info.value.body["code"] == "model_not_found"


def test_unknown_field_is_400(proxy) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(proxy).responses.create(model="local", input="hi", extra_body={"bogus": 1})
    assert info.value.body["param"] == "bogus"
    assert info.value.body["code"] == "unknown_parameter"


def test_models_list(proxy) -> None:
    ids = [m.id for m in client(proxy).models.list()]
    assert "local" in ids and "fallback" in ids and "local@local" in ids
