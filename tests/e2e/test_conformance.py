"""Every parameter answered, every provider: the official SDK over real sockets against wsproxy
serving the local model, a fake OpenAI Responses upstream (passthrough), a fake Chat Completions
and a fake Anthropic upstream (translation). Every event and object sent here is also checked
against the Open Responses schemas (tests.schema, autouse)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.e2e.sdk import client
from tests.e2e.test_sdk_websocket import until_terminal
from tests.fakes.servers import UvicornThread
from wsproxy.asgi.app import create_app
from wsproxy.settings import load_settings

MODELS = ["local", "up@fake", "cc@m", "claude@claude-x"]
TRANSLATED = ["cc@m", "claude@claude-x"]
PING = {"type": "function", "name": "ping", "description": "Ping.", "parameters": {"type": "object"}}


@pytest.fixture
def proxy(tmp_path: Path, translated_upstreams: dict[str, Any], fake_openai: Any) -> Iterator[UvicornThread]:
    chat_url, anth_url = translated_upstreams["chat_url"], translated_upstreams["anth_url"]
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        '[store]\nbackend = "memory"\n'
        '[providers.local]\nkind = "local"\ntoken_delay = 0.0\n'
        f'[providers.up]\nkind = "openai"\nbase_url = "{fake_openai[1]}"\napi_key = "k"\nmax_retries = 0\n'
        f'[providers.cc]\nkind = "chat_completions"\nbase_url = "{chat_url}/v1"\napi_key = "k"\n'
        "max_retries = 0\n"
        f'[providers.claude]\nkind = "anthropic"\nbase_url = "{anth_url}/v1"\napi_key = "ak"\n'
        "max_retries = 0\n"
    )
    server = UvicornThread(create_app(load_settings(str(cfg), environ={}), environ={})).start()
    try:
        yield server
    finally:
        server.stop()


def bad_request(call: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    return info.value


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict)
    return body  # the SDK gives the inner error object


def ws_error(proxy: Any, frame: dict[str, Any]) -> dict[str, Any]:
    """Send one response.create over WebSocket; the error event it gets (the socket survives)."""
    with client(proxy).responses.connect() as conn:
        conn.send({"type": "response.create", **frame})
        events = until_terminal(conn)
        assert events[-1].type == "error", events[-1]
        # The session survives: the next request is answered.
        conn.send({"type": "response.create", "model": "local", "input": "still there?"})
        assert until_terminal(conn)[-1].type == "response.completed"
    error = events[-1].error
    return {"status": events[-1].status, "code": error.code, "param": error.param, "message": error.message}


# -- histories real clients send -------------------------------------------------------------

HISTORIES = {
    "starts_with_assistant_phases": [
        {"role": "assistant", "content": "Looking at the repository.", "phase": "commentary"},
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_old",
            "status": "completed",
            "phase": "final_answer",
            "content": [{"type": "output_text", "text": "It builds.", "annotations": []}],
        },
        {"role": "user", "content": "great, what next?"},
    ],
    "consecutive_user_turns": [
        {"role": "user", "content": "first"},
        {"role": "user", "content": "second"},
    ],
    "consecutive_assistant_turns": [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "thinking aloud", "phase": "commentary"},
        {"role": "assistant", "content": "answer", "phase": "final_answer"},
        {"role": "user", "content": "and then?"},
    ],
}


@pytest.mark.parametrize("history", sorted(HISTORIES))
@pytest.mark.parametrize("model", TRANSLATED)
def test_real_client_histories_translate(proxy, translated_upstreams, model: str, history: str) -> None:
    items = HISTORIES[history]
    c = client(proxy)
    assert c.responses.create(model=model, input=items).status == "completed"
    events = list(c.responses.create(model=model, input=items, stream=True))
    assert events[-1].type == "response.completed"
    with c.responses.connect() as conn:
        conn.response.create(model=model, input=items)
        assert until_terminal(conn)[-1].type == "response.completed"
    if model.startswith("claude"):
        sent = translated_upstreams["anthropic"].requests[-1]["messages"]
        assert sent[0]["role"] == "user"
        assert all(a["role"] != b["role"] for a, b in itertools.pairwise(sent))
        assert "phase" not in str(sent)


# -- tool outputs must answer a call -------------------------------------------------------------

ORPHAN = [
    {"role": "user", "content": "hi"},
    {"type": "function_call_output", "call_id": "call_nowhere", "output": "42"},
]


@pytest.mark.parametrize("model", MODELS)
def test_an_output_that_answers_no_call_is_refused_everywhere(proxy, model: str) -> None:
    c = client(proxy)
    for stream in (False, True):
        err = bad_request(lambda s=stream: c.responses.create(model=model, input=ORPHAN, stream=s))
        assert err.status_code == 400 and err.param == "input"
        assert "call_nowhere" in err.message
    got = ws_error(proxy, {"model": model, "input": ORPHAN})
    assert got["status"] == 400 and got["param"] == "input" and "call_nowhere" in got["message"]


@pytest.mark.parametrize("model", ["local", "cc@m", "claude@claude-x"])
def test_an_output_is_checked_against_the_history_of_previous_response_id(proxy, model: str) -> None:
    c = client(proxy)
    first = c.responses.create(model=model, input="call get_weather", tools=[PING])
    err = bad_request(
        lambda: c.responses.create(
            model=model,
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": "call_other", "output": "x"}],
        )
    )
    assert err.param == "input" and "call_other" in err.message


def test_an_output_answering_a_call_of_the_previous_response_is_accepted(proxy) -> None:
    c = client(proxy)
    first = c.responses.create(model="claude@claude-x", input="use ping", tools=[PING])
    call = next(o for o in first.output if o.type == "function_call")
    second = c.responses.create(
        model="claude@claude-x",
        previous_response_id=first.id,
        tools=[PING],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "pong"}],
    )
    assert second.status == "completed" and "pong" in second.output_text


# -- a call without arguments ----------------------------------------------------------------------


def test_anthropic_call_without_arguments_streams_deltas_that_add_up(proxy) -> None:
    c = client(proxy)
    events = list(c.responses.create(model="claude@claude-x", input="use ping", tools=[PING], stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == "{}" and deltas == "{}"
    with c.responses.connect() as conn:
        conn.response.create(model="claude@claude-x", input="use ping", tools=[PING])
        ws_events = until_terminal(conn)
    ws_deltas = "".join(e.delta for e in ws_events if e.type == "response.function_call_arguments.delta")
    assert ws_deltas == "{}"


# -- documented ranges and enums ---------------------------------------------------------------

BAD_VALUES = [
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_output_tokens": 15}, "max_output_tokens"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"truncation": "sometimes"}, "truncation"),
    ({"service_tier": "gold"}, "service_tier"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"reasoning": {"summary": "long"}}, "reasoning.summary"),
    ({"text": {"verbosity": "chatty"}}, "text.verbosity"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata.k"),
    ({"tools": [{"type": "function", "description": "no name"}]}, "tools[0].name"),
]


@pytest.mark.parametrize(("extra", "param"), BAD_VALUES)
@pytest.mark.parametrize("model", ["local", "up@fake", "claude@claude-x"])
def test_out_of_range_values_are_refused_for_every_provider(proxy, model: str, extra: dict, param: str):
    err = bad_request(lambda: client(proxy).responses.create(model=model, input="hi", extra_body=extra))
    assert err.param == param, err.message


@pytest.mark.parametrize(("extra", "param"), BAD_VALUES[:3] + BAD_VALUES[10:11])
def test_out_of_range_values_are_refused_over_websocket(proxy, extra: dict, param: str) -> None:
    got = ws_error(proxy, {"model": "cc@m", "input": "hi", **extra})
    assert (got["status"], got["param"]) == (400, param)


def test_values_at_the_limits_are_accepted(proxy) -> None:
    resp = client(proxy).responses.create(
        model="local",
        input="hi",
        temperature=2,
        top_p=0,
        max_output_tokens=16,
        metadata={f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)},
        truncation="auto",
        service_tier="flex",
        text={"verbosity": "low"},
    )
    assert resp.status in ("completed", "incomplete") and len(resp.metadata) == 16


# -- Chat Completions names -----------------------------------------------------------------------


def test_chat_style_messages_response_format_and_max_tokens_are_accepted(proxy, translated_upstreams) -> None:
    c = client(proxy)
    resp = c.responses.create(
        model="cc@m",
        extra_body={
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello chat"}]},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
            },
            "max_tokens": 100,
            "n": 1,
        },
    )
    assert resp.status == "completed" and "hello chat" in resp.output_text
    assert resp.max_output_tokens == 100
    assert resp.text.format.type == "json_schema"
    sent = translated_upstreams["chat"].requests[-1]
    assert sent["response_format"]["json_schema"]["name"] == "out"
    assert sent["max_tokens"] == 100
    assert sent["messages"][-1] == {"role": "user", "content": "hello chat"}
    local = c.responses.create(model="local", extra_body={"messages": [{"role": "user", "content": "yo"}]})
    assert "You said: yo" in local.output_text


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"messages": [{"role": "user", "content": "a"}], "input": "b"}, "messages"),
        ({"max_tokens": 20, "max_output_tokens": 20}, "max_tokens"),
        ({"response_format": {"type": "json_object"}, "text": {"format": {"type": "text"}}}, "response_format"),  # noqa: E501
        ({"n": 2}, "n"),
    ],
)
def test_chat_names_given_with_their_responses_form_or_n_above_one_are_refused(proxy, extra, param) -> None:
    body = {"model": "local", **extra}
    err = bad_request(lambda: client(proxy).post("/responses", cast_to=object, body=body))
    assert err.param == param, err.message


# -- parameters only some providers have -----------------------------------------------------------


def test_stop_is_mapped_where_the_provider_has_it(proxy, translated_upstreams) -> None:
    c = client(proxy)
    local = c.responses.create(model="local", input="alpha beta gamma", extra_body={"stop": ["beta"]})
    assert local.output_text.endswith("alpha ") and "beta" not in local.output_text
    extra = {"stop": ["END"], "seed": 7, "logit_bias": {"50": -100}}
    c.responses.create(model="cc@m", input="hi", extra_body=extra)
    sent = translated_upstreams["chat"].requests[-1]
    assert (sent["stop"], sent["seed"], sent["logit_bias"]) == (["END"], 7, {"50": -100})
    c.responses.create(model="claude@claude-x", input="hi", extra_body={"stop": "END"})
    assert translated_upstreams["anthropic"].requests[-1]["stop_sequences"] == ["END"]


@pytest.mark.parametrize(
    ("model", "extra", "param"),
    [
        ("up@fake", {"stop": ["x"]}, "stop"),
        ("up@fake", {"seed": 1}, "seed"),
        ("claude@claude-x", {"seed": 1}, "seed"),
        ("claude@claude-x", {"logit_bias": {"1": 1}}, "logit_bias"),
        ("local", {"logit_bias": {"1": 1}}, "logit_bias"),
        ("cc@m", {"top_logprobs": 5}, "top_logprobs"),
    ],
)
def test_a_parameter_the_provider_lacks_is_refused_naming_both(proxy, model, extra, param) -> None:
    err = bad_request(lambda: client(proxy).responses.create(model=model, input="hi", extra_body=extra))
    assert err.param == param and err.code == "unsupported_parameter"
    assert model.split("@")[0] in err.message
    got = ws_error(proxy, {"model": model, "input": "hi", **extra})
    assert (got["status"], got["param"], got["code"]) == (400, param, "unsupported_parameter")


def test_top_logprobs_passes_through_to_openai(proxy, fake_openai) -> None:
    resp = client(proxy).responses.create(model="up@fake", input="hi", top_logprobs=3)
    assert resp.status == "completed"
    assert fake_openai[0].requests[-1]["body"]["top_logprobs"] == 3


# -- models no provider serves ------------------------------------------------------------------


def test_only_local_configured_an_unknown_model_is_404_with_a_hint(make_cli_proxy) -> None:
    proxy = make_cli_proxy()
    c = client(proxy)
    with pytest.raises(openai.NotFoundError) as info:
        c.responses.create(model="gpt-5-typo", input="hi")
    err = info.value
    assert err.code == "model_not_found" and err.param == "model"
    assert "gpt-5-typo" in err.message and "OPENAI_API_KEY" in err.message
    with pytest.raises(openai.NotFoundError):
        list(c.responses.create(model="gpt-5-typo", input="hi", stream=True))
    assert c.responses.create(model="local", input="hi").status == "completed"
    with c.responses.connect() as conn:
        conn.response.create(model="gpt-5-typo", input="hi")
        event = until_terminal(conn)[-1]
    assert event.type == "error" and event.status == 404 and event.error.code == "model_not_found"


def test_default_provider_still_routes_bare_names(tmp_path: Path) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text('default_provider = "local"\n[store]\nbackend = "memory"\n')
    server = UvicornThread(create_app(load_settings(str(cfg), environ={}), environ={})).start()
    try:
        assert client(server).responses.create(model="any-name", input="hi").status == "completed"
    finally:
        server.stop()


def test_the_schema_check_sees_what_the_proxy_sends(proxy) -> None:
    """The autouse check is live: what the proxy sends is validated, and a payload that breaks
    the schema is reported."""
    from tests.schema import SchemaViolation, take_violations, validate_event, validate_response

    raw = client(proxy).responses.with_raw_response.create(model="local", input="hi")
    validate_response(orjson.loads(raw.http_response.content))
    with pytest.raises(SchemaViolation):
        validate_event({"type": "response.output_text.delta", "sequence_number": 1, "delta": "x"})
    with pytest.raises(SchemaViolation):
        validate_response({**orjson.loads(raw.http_response.content), "tools": [{"type": "function"}]})
    assert take_violations() == []
