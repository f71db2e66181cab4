"""The response sink in process, with a recording formatter and a real Runtime (engine, memory
store, metrics): the push path (feed/drain), the pull path (serve) and every way a response
ends -- completed, refused, client gone, slow client, shutdown, a bug."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from tests.service.inprocess import ScriptedProvider, local_settings, runtime_for, wait_for
from wsproxy.asgi.sink import SHUTDOWN_CODE, ResponseSink, SlowClient
from wsproxy.core.events import TERMINAL_TYPES, Event
from wsproxy.core.records import StoredResponse
from wsproxy.core.request import parse_create
from wsproxy.errors import ProxyError
from wsproxy.service.wiring import Runtime


class Recorder:
    """A formatter that records what reaches the "client". ``take``: how many events a
    synchronous write accepts (None: all); ``block``: write() waits on it; ``slow``: write()
    raises SlowClient."""

    transport = "http"
    writes_nowait = True

    def __init__(self, take: int | None = None) -> None:
        self.take = take
        self.block: asyncio.Event | None = None
        self.slow = False
        self.writes: list[tuple[str, list[Event]]] = []
        self.refused: ProxyError | None = None
        self.closed_with: list[StoredResponse | None] = []
        self.gone_reason: str | None = None
        self.slowed = False

    @property
    def committed(self) -> bool:
        return bool(self.writes)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e.json() for _, batch in self.writes for e in batch]

    def write_nowait(self, events: Sequence[Event]) -> int:
        n = len(events) if self.take is None else min(self.take, len(events))
        if n:
            self.writes.append(("now", list(events[:n])))
        return n

    async def write(self, events: Sequence[Event]) -> None:
        if self.slow:
            raise SlowClient
        if self.block is not None:
            await self.block.wait()
        self.writes.append(("wait", list(events)))

    async def refuse(self, error: ProxyError) -> None:
        self.refused = error

    async def close(self, final: StoredResponse | None) -> None:
        self.closed_with.append(final)

    def gone(self) -> str | None:
        return self.gone_reason

    def on_slow(self) -> None:
        self.slowed = True


def ev(seq: int, more: bool = False) -> Event:
    event = Event(
        "response.output_text.delta", b'{"type":"response.output_text.delta","sequence_number":%d}' % seq, seq
    )
    event.more = more
    return event


async def test_feed_writes_what_the_connection_takes_and_drain_writes_the_rest_in_order(
    tmp_path: Path,
) -> None:
    async with runtime_for(local_settings(tmp_path)) as runtime:
        rec = Recorder(take=1)
        sink = ResponseSink(runtime, rec)
        a, b, c, d = ev(0), ev(1), ev(2), ev(3)
        assert sink.feed([a, b, c]) is False  # the producer must pause
        assert rec.writes == [("now", [a])]
        assert sink.feed([d]) is False  # behind held events: held too, never reordered
        assert rec.writes == [("now", [a])]
        await sink.drain()
        assert rec.writes == [("now", [a]), ("wait", [b, c, d])]
        rec.take = None
        assert sink.feed([ev(4), ev(5)]) is True  # one write for both
        assert [kind for kind, _ in rec.writes] == ["now", "wait", "now"] and len(rec.writes[-1][1]) == 2
        assert sink.tracker.sent == 6 and sink.tracker.deltas == 6


async def test_serve_runs_a_local_response_to_its_one_terminal_event(tmp_path: Path) -> None:
    async with runtime_for(local_settings(tmp_path)) as runtime:
        run = await runtime.engine.prepare(
            parse_create({"model": "local", "input": "hi"}, websocket=False), None
        )
        rec = Recorder()
        await ResponseSink(runtime, rec, run).serve()
        types = [e["type"] for e in rec.events]
        assert types[0] == "response.created" and types[-1] == "response.completed"
        assert sum(t in TERMINAL_TYPES for t in types) == 1
        assert rec.closed_with == [run.final] and run.final is not None
        assert runtime.active_responses == 0 and not runtime.streaming


async def test_events_that_arrived_together_reach_the_formatter_together(tmp_path: Path) -> None:
    async with runtime_for(local_settings(tmp_path)) as runtime:

        async def events() -> AsyncIterator[Event]:
            for event in (ev(0), ev(1, more=True), ev(2, more=True), ev(3), ev(4)):
                yield event

        rec = Recorder()
        await ResponseSink(runtime, rec).serve(events())
        assert [[e.seq for e in batch] for _, batch in rec.writes] == [[0], [1, 2, 3], [4]]


async def test_an_error_before_the_first_event_is_refused_in_the_transports_shape(tmp_path: Path) -> None:
    async with runtime_for(local_settings(tmp_path)) as runtime:
        rec = Recorder()
        request = parse_create(
            {"model": "local", "input": "x", "previous_response_id": "resp_nope"}, websocket=False
        )
        sink = ResponseSink(runtime, rec)
        await sink.serve(prepare=lambda: runtime.engine.prepare(request, None))
        assert rec.refused is not None and rec.refused.code == "previous_response_not_found"
        assert rec.writes == [] and runtime.active_responses == 0


async def slow_response(runtime: Runtime, rec: Recorder) -> tuple[asyncio.Task[None], Any, ScriptedProvider]:
    """A response whose provider is slow (and records being closed), served in a task, once the
    client has seen it start and stream."""
    provider = ScriptedProvider("slowp", tokens=1000, delay=0.01)
    runtime.providers["slowp"] = provider
    runtime.engine.providers["slowp"] = provider  # type: ignore[index]
    runtime.engine.router.providers = {**runtime.engine.router.providers, "slowp": ("m",)}
    run = await runtime.engine.prepare(
        parse_create({"model": "slowp@m", "input": "x"}, websocket=False), None
    )
    task = asyncio.get_running_loop().create_task(ResponseSink(runtime, rec, run).serve())
    await wait_for(lambda: len(rec.events) >= 4)
    return task, run, provider


async def test_shutdown_grace_over_ends_the_response_with_a_stored_failure(tmp_path: Path) -> None:
    async with runtime_for(local_settings(tmp_path)) as runtime:
        rec = Recorder()
        task, run, provider = await slow_response(runtime, rec)
        assert task in runtime.streaming
        runtime.grace_over = True
        task.cancel()  # what Runtime.drain does to the tasks in runtime.streaming
        await asyncio.wait_for(task, 5)
        events = rec.events
        assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
        assert events[-1]["response"]["error"]["code"] == SHUTDOWN_CODE
        assert sum(e["type"] in TERMINAL_TYPES for e in events) == 1
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        stored = await runtime.store.get(run.response_id)
        assert stored is not None and stored.response["status"] == "failed"
        assert provider.closed == 1 and runtime.active_responses == 0


async def test_a_client_that_left_gets_nothing_more_its_upstream_closed_and_usage_counted(
    tmp_path: Path,
) -> None:
    async with runtime_for(local_settings(tmp_path)) as runtime:
        rec = Recorder()
        task, run, provider = await slow_response(runtime, rec)
        written = len(rec.events)
        rec.gone_reason = "client_gone"
        task.cancel()  # what the transport does when it sees the client leave
        await asyncio.wait_for(task, 5)  # handled: not re-raised
        assert not task.cancelled()
        assert len(rec.events) <= written + 1 and not any(e["type"] in TERMINAL_TYPES for e in rec.events)
        assert provider.closed == 1 and run.final is None
        text = runtime.metrics.render().decode()
        assert 'wsproxy_cancelled_responses_total{reason="client_gone",transport="http"} 1' in text
        assert runtime.active_responses == 0


async def test_a_slow_client_is_dropped_and_its_upstream_closed(tmp_path: Path) -> None:
    async with runtime_for(local_settings(tmp_path)) as runtime:
        rec = Recorder(take=0)
        rec.slow = True  # every write must wait, and waiting is too long
        run = await runtime.engine.prepare(
            parse_create({"model": "local", "input": "hi"}, websocket=False), None
        )
        await ResponseSink(runtime, rec, run).serve()
        assert rec.slowed and rec.writes == [] and run.final is None
        assert 'reason="slow_client"' in runtime.metrics.render().decode()


async def test_a_bug_mid_stream_ends_the_response_with_server_error(tmp_path: Path) -> None:
    async with runtime_for(local_settings(tmp_path)) as runtime:
        run = await runtime.engine.prepare(
            parse_create({"model": "local", "input": "hi"}, websocket=False), None
        )
        engine_events = runtime.engine.events(run)

        async def buggy() -> AsyncIterator[Event]:
            yield await anext(engine_events)
            raise RuntimeError("a bug")

        rec = Recorder()
        await ResponseSink(runtime, rec, run).serve(buggy())
        await engine_events.aclose()  # type: ignore[attr-defined]
        types = [e["type"] for e in rec.events]
        assert types == ["response.created", "error", "response.failed"]
        assert rec.events[-1]["response"]["error"]["code"] == "server_error"
        assert run.final is not None and run.final.response["status"] == "failed"


class GoneSession:
    """A WebSocket session (``formats.FrameOutput``) whose client is gone: the first send finds
    the socket closed, as ``WSSession._write_now`` does, before the session itself has ended."""

    def __init__(self) -> None:
        self.closed = False
        self.close_code = 1000
        self.request_id: str | None = None
        self.peer_gone = False
        self.sends = 0

    def write_nowait(self, frames: Sequence[tuple[bytes, bool]]) -> int:
        return 0

    async def send(self, data: str | bytes, more: bool = False) -> None:
        self.sends += 1
        if self.sends > 2:
            self.peer_gone = True
            raise asyncio.CancelledError

    def slow(self) -> None:
        pass


async def test_a_websocket_client_found_gone_by_a_send_is_counted_as_gone(tmp_path: Path) -> None:
    """The send that finds the client gone comes before the session has ended: the response is
    still abandoned as ``client_gone`` (partial usage counted), not dropped as a bare cancel."""
    from wsproxy.asgi.formats import WSFormat

    async with runtime_for(local_settings(tmp_path, token_delay=0.01)) as runtime:
        session = GoneSession()
        run = await runtime.engine.prepare(
            parse_create({"model": "local", "input": "say a lot " * 10}, websocket=True), None
        )
        task = asyncio.ensure_future(ResponseSink(runtime, WSFormat(session, None), run).serve())
        await asyncio.wait_for(task, 5)
        assert not task.cancelled() and run.final is None
        text = runtime.metrics.render().decode()
        assert 'wsproxy_cancelled_responses_total{reason="client_gone",transport="ws"} 1' in text
        assert runtime.active_responses == 0
