"""The engine in process: against the local model and the memory store (no sockets), and
against scripted providers for fallback and for upstreams that die."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.service.inprocess import ScriptedProvider, collect, local_settings, runtime_for
from wsproxy.core.events import TERMINAL_TYPES, Event
from wsproxy.core.request import parse_create
from wsproxy.errors import ProxyError, UpstreamError, UpstreamUnavailable
from wsproxy.policy.routing import Router
from wsproxy.service.engine import Engine
from wsproxy.store.memory import MemoryStore


def create(**body: Any) -> Any:
    return parse_create({"model": "local", "input": "hello there", **body}, websocket=False)


async def test_a_response_from_the_local_model_is_stored_before_its_terminal_event(tmp_path: Path) -> None:
    async with runtime_for(local_settings(tmp_path)) as runtime:
        engine = runtime.engine
        run = await engine.prepare(create(), "key_a")
        seen_stored_at_terminal = None
        types = []
        async for event in engine.events(run):
            types.append(event.type)
            if event.terminal:
                # The client may retrieve the response the moment it sees the terminal event.
                seen_stored_at_terminal = await runtime.store.get(run.response_id)
        assert types[0] == "response.created" and types[-1] == "response.completed"
        assert sum(t in TERMINAL_TYPES for t in types) == 1
        assert seen_stored_at_terminal is not None and seen_stored_at_terminal.owner == "key_a"
        assert run.status == "completed" and run.provider_used == "local"


async def test_continuation_reads_the_store_and_is_scoped_to_the_principal(tmp_path: Path) -> None:
    async with runtime_for(local_settings(tmp_path)) as runtime:
        engine = runtime.engine
        first = await engine.prepare(create(), "key_a")
        await collect(engine.events(first))
        second = await engine.prepare(create(previous_response_id=first.response_id, input="more"), "key_a")
        # The earlier input and output come first, then the new input.
        assert (
            len(second.effective_input)
            == len(first.effective_input) + len(first.final.response["output"]) + 1
        )
        with pytest.raises(ProxyError) as exc:
            await engine.prepare(create(previous_response_id=first.response_id), "key_b")
        assert exc.value.code == "previous_response_not_found"
        assert await engine.lookup(first.response_id, "key_b") is None


async def test_store_false_is_not_stored_and_generate_false_runs_no_model(tmp_path: Path) -> None:
    async with runtime_for(local_settings(tmp_path)) as runtime:
        engine = runtime.engine
        run = await engine.prepare(create(store=False), None)
        await collect(engine.events(run))
        assert run.status == "completed" and await runtime.store.get(run.response_id) is None
        warm = await engine.prepare(
            parse_create({"model": "local", "input": "x", "generate": False}, websocket=True), None
        )
        events = await collect(engine.events(warm))
        assert [e["type"] for e in events] == ["response.created", "response.completed"]
        assert not events[-1]["response"]["output"]


def engine_with(*providers: ScriptedProvider) -> tuple[Engine, MemoryStore]:
    store = MemoryStore(ttl_seconds=60, max_records=100)
    chain = tuple(f"{p.name}@m" for p in providers)
    router = Router({p.name: ("m",) for p in providers}, {"chain": chain}, providers[0].name)
    engine = Engine(router=router, providers={p.name: p for p in providers}, store=store, dialect_options={})
    return engine, store


async def test_fallback_to_the_next_provider_only_before_any_output() -> None:
    down = ScriptedProvider("down", fail_before=UpstreamUnavailable("refused"))
    up = ScriptedProvider("up")
    engine, _ = engine_with(down, up)
    run = await engine.prepare(parse_create({"model": "chain", "input": "x"}, websocket=False), None)
    events = await collect(engine.events(run))
    assert down.calls == 1 and up.calls == 1 and run.provider_used == "up"
    assert events[-1]["type"] == "response.completed"


async def test_an_error_that_is_not_retryable_is_not_a_fallback() -> None:
    bad = ScriptedProvider("bad", fail_before=UpstreamError("no", status=400, retryable=False))
    other = ScriptedProvider("other")
    engine, _ = engine_with(bad, other)
    run = await engine.prepare(parse_create({"model": "chain", "input": "x"}, websocket=False), None)
    with pytest.raises(UpstreamError):
        await collect(engine.events(run))
    assert other.calls == 0


@pytest.mark.parametrize("how", ["raises", "ends"])
async def test_an_upstream_that_dies_after_output_ends_with_one_stored_failure(how: str) -> None:
    dying = ScriptedProvider(
        "dying",
        fail_after=UpstreamUnavailable("reset") if how == "raises" else None,
        end_without_terminal=how == "ends",
    )
    spare = ScriptedProvider("spare")
    engine, store = engine_with(dying, spare)
    run = await engine.prepare(parse_create({"model": "chain", "input": "x"}, websocket=False), None)
    events = await collect(engine.events(run))
    terminal = [e for e in events if e["type"] in TERMINAL_TYPES]
    assert len(terminal) == 1 and terminal[0]["type"] == "response.failed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert spare.calls == 0  # output had begun: no fallback
    assert dying.closed == 1
    stored = await store.get(run.response_id)
    assert stored is not None and stored.response["status"] == "failed"


async def test_closing_the_events_closes_the_provider_stream_at_once() -> None:
    slow = ScriptedProvider("slow", tokens=1000, delay=0.01)
    engine, store = engine_with(slow)
    run = await engine.prepare(parse_create({"model": "slow@m", "input": "x"}, websocket=False), None)
    events = engine.events(run)
    first: Event = await anext(events)
    assert first.type == "response.created"
    await events.aclose()  # type: ignore[attr-defined]
    assert slow.closed == 1 and run.final is None and await store.get(run.response_id) is None
