"""Background responses: the registry of runs detached from any client connection.

A background run keeps its events in a bounded log, so a client can replay them from any
``sequence_number`` and follow the live stream. The log lives in two places:

- in the process running it (the owner): the fast path, followed event by event as it grows;
- in the store (``ResponseStore.run_*``), written by the owner in batches every
  ``FLUSH_INTERVAL`` seconds (and at least every ``HEARTBEAT_INTERVAL``, so a quiet run is seen
  alive), so that every other process on the same store (``--workers N``, replicas) can retrieve
  the run, stream it from any point and cancel it. Such a follower reads the store every
  ``POLL_INTERVAL`` seconds; a cancel request is a flag in the store, which the owner reads at
  least every ``CANCEL_CHECK_INTERVAL`` seconds and acts on by cancelling the run locally.

The log in the store is started before the POST that created the run is answered, and a run is
marked done only after its final Response is stored: a client can go from one process to another
at any moment. A follower that sees no write from the owner for ``STALE_AFTER`` seconds (the
owner's process died) ends its stream with a ``response.failed`` event.

Finished runs stay in the owner's memory for ``RETENTION`` seconds (at most ``MAX_FINISHED`` of
them); in the store, for the store's run TTL.

:func:`start_background` runs a response in a task owned by the runtime (not by the client's
connection) and returns once the response exists; cancelled, it is stored with status
``cancelled``. No transport here: the edge (``wsproxy.asgi.stored``) answers the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from wsproxy.core.events import Event
from wsproxy.core.records import StoredResponse
from wsproxy.errors import ProxyError, StoreError
from wsproxy.service.engine import Engine, ResponseRun
from wsproxy.store.base import ResponseStore, RunEvent, RunLog

log = logging.getLogger("wsproxy.background")

RETENTION = 600.0
MAX_FINISHED = 1000
MAX_EVENTS = 200_000
FLUSH_INTERVAL = 0.05
HEARTBEAT_INTERVAL = 2.0
CANCEL_CHECK_INTERVAL = 0.25
POLL_INTERVAL = 0.1
STALE_AFTER = 30.0
READ_BATCH = 1000
# How long a cancel request waits for the owner (in another process) to end the run.
CANCEL_WAIT = 10.0
_END = 1 << 62  # a sequence number after every event: reads only the state


@dataclass(eq=False)
class BackgroundRun:
    run: ResponseRun
    response_id: str = ""
    snapshot: dict[str, Any] = field(default_factory=dict)
    log: list[Event] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    done: bool = False
    finished_at: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Events not yet written to the store, and the task writing them.
    pending: list[Event] = field(default_factory=list)
    writer: asyncio.Task[None] | None = None

    def append(self, event: Event) -> None:
        # The terminal event is always kept: a follower needs it to end.
        if len(self.log) < MAX_EVENTS - 1 or event.terminal:
            self.log.append(event)
            self.pending.append(event)
        self.changed.set()

    async def follow(self, starting_after: int) -> AsyncIterator[Event]:
        """Events with ``seq > starting_after``, then live ones until the terminal event."""
        index = 0
        while True:
            while index < len(self.log):
                event = self.log[index]
                index += 1
                if event.seq > starting_after:
                    yield event
            if self.done:
                return
            self.changed.clear()
            await self.changed.wait()


class BackgroundRegistry:
    def __init__(self, store: ResponseStore | None = None) -> None:
        self.store = store
        self.runs: dict[str, BackgroundRun] = {}
        self.finished: OrderedDict[str, float] = OrderedDict()

    # -- the owner's side ---------------------------------------------------------------------

    async def register(self, entry: BackgroundRun) -> None:
        """The run exists (its first event is at hand): visible here, then in the store."""
        self.runs[entry.response_id] = entry
        if self.store is None:
            return
        snapshot = orjson.dumps(entry.snapshot)
        await self.store.run_start(entry.response_id, entry.run.principal, snapshot, time.time())
        entry.writer = asyncio.get_running_loop().create_task(
            self._write(entry), name=f"background-log-{entry.response_id}"
        )

    async def finish(self, entry: BackgroundRun) -> None:
        """The run is over (its final Response is stored): followers here end at once; the
        log in the store gets its last events and is marked done."""
        self.mark_finished(entry)
        writer = entry.writer
        if writer is not None:
            try:
                await asyncio.shield(writer)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background run %s: the log in the store was not finished", entry.response_id)

    def mark_finished(self, entry: BackgroundRun) -> None:
        entry.done = True
        entry.finished_at = time.monotonic()
        entry.changed.set()
        self.finished[entry.response_id] = entry.finished_at
        self._expire(entry.finished_at)

    async def _write(self, entry: BackgroundRun) -> None:
        """Flush the entry's events to the store, heartbeat, and watch for a cancel request;
        on the run's end, the last flush and ``run_finish``."""
        store = self.store
        assert store is not None
        rid = entry.response_id
        last_write = last_check = time.monotonic()
        while True:
            if not entry.done:
                await asyncio.sleep(FLUSH_INTERVAL)
            done = entry.done  # read before taking the batch: a run seen done has all its events
            batch, entry.pending = entry.pending, []
            now = time.monotonic()
            try:
                cancel = False
                if batch or done or now - last_write >= HEARTBEAT_INTERVAL:
                    events: list[RunEvent] = [(e.seq, e.type, e.data) for e in batch]
                    cancel = await store.run_append(rid, events, time.time())
                    last_write = last_check = now
                elif now - last_check >= CANCEL_CHECK_INTERVAL:
                    state = await store.run_read(rid, _END, 0)
                    cancel = state is not None and state.cancel_requested
                    last_check = now
                if done:
                    await store.run_finish(rid, time.time())
                    return
            except StoreError as exc:
                # The run goes on (its client here still gets every event); followers in other
                # processes wait for the store to come back.
                log.warning("background run %s: writing its log failed: %s", rid, exc)
                entry.pending[:0] = batch
                if done:
                    return
                continue
            if cancel and entry.task is not None and not entry.task.done():
                log.info("background run %s: cancelled from another process", rid)
                entry.task.cancel()

    # -- any process ----------------------------------------------------------------------------

    def get(self, response_id: str, principal: str | None) -> BackgroundRun | None:
        """A run of this process."""
        self._expire(time.monotonic())
        entry = self.runs.get(response_id)
        if entry is None or entry.run.principal != principal:
            return None
        return entry

    async def remote(self, response_id: str, principal: str | None) -> RunLog | None:
        """The state of a run whose log is in the store (run here or elsewhere)."""
        if self.store is None:
            return None
        state = await self.store.run_read(response_id, _END, 0)
        if state is None or state.owner != principal:
            return None
        return state

    async def follow_remote(self, response_id: str, starting_after: int) -> AsyncIterator[Event]:
        """The events of a run from the store, as they are written, until it is done."""
        assert self.store is not None
        after = starting_after
        while True:
            state = await self.store.run_read(response_id, after, READ_BATCH)
            if state is None:
                return  # expired or deleted
            for seq, kind, data in state.events:
                after = seq
                yield Event(kind, data, seq)
            if len(state.events) == READ_BATCH:
                continue
            if state.done:
                return
            if time.time() - state.updated_at > STALE_AFTER:
                yield _owner_gone(state, after + 1)
                return
            await asyncio.sleep(POLL_INTERVAL)

    async def cancel_remote(self, response_id: str, principal: str | None) -> RunLog | None:
        """Ask the owner of a run in another process to cancel it, and wait (bounded) for it to
        end; the run's state at the end (None: no such run)."""
        state = await self.remote(response_id, principal)
        if state is None or self.store is None:
            return None
        if state.done:
            return state
        await self.store.run_cancel(response_id)
        deadline = time.monotonic() + CANCEL_WAIT
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_INTERVAL)
            now = await self.store.run_read(response_id, _END, 0)
            if now is None or now.done:
                return now or state
        return state

    def _expire(self, now: float) -> None:
        while self.finished:
            rid, at = next(iter(self.finished.items()))
            if now - at < RETENTION and len(self.finished) <= MAX_FINISHED:
                break
            self.finished.popitem(last=False)
            self.runs.pop(rid, None)


class RunHost(Protocol):
    """What a background run needs of the runtime (``wsproxy.service.wiring.Runtime``)."""

    engine: Engine
    store: ResponseStore
    background: BackgroundRegistry

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...

    def response_started(self) -> None: ...

    def response_ended(self) -> None: ...


async def start_background(host: RunHost, run: ResponseRun) -> BackgroundRun:
    """Run ``run`` in a task of the runtime; return once its first event (the response) exists,
    registered here and in the store. A ``ProxyError`` before that is raised here."""
    entry = BackgroundRun(run)
    run.request.body["background"] = True
    first_seen = asyncio.get_running_loop().create_future()

    async def drive() -> None:
        host.response_started()
        try:
            async for event in host.engine.events(run):
                if not first_seen.done():
                    entry.snapshot = event.json().get("response") or {}
                    entry.response_id = str(entry.snapshot.get("id") or run.response_id)
                    await host.background.register(entry)  # here, and in the store
                    first_seen.set_result(None)
                entry.append(event)
        except ProxyError as exc:
            if not first_seen.done():
                first_seen.set_exception(exc)
        except asyncio.CancelledError:
            await _store_cancelled(host, entry)
            raise
        finally:
            if not first_seen.done():
                first_seen.set_exception(ProxyError("The response ended before it started."))
            await host.background.finish(entry)
            host.response_ended()

    entry.task = host.spawn(drive(), f"background-{run.response_id}")
    await first_seen
    return entry


async def _store_cancelled(host: RunHost, entry: BackgroundRun) -> None:
    run = entry.run
    response = dict(run.final.response if run.final else entry.snapshot)
    response["status"] = "cancelled"
    record = StoredResponse(
        id=entry.response_id or run.response_id,
        response=response,
        input_items=run.effective_input,
        owner=run.principal,
        created_at=time.time(),
        extra={"provider": run.provider_used},
    )
    run.final = record
    await asyncio.shield(host.store.put(record))


def _owner_gone(state: RunLog, seq: int) -> Event:
    response = {
        **orjson.loads(state.snapshot),
        "status": "failed",
        "error": {"code": "server_error", "message": "The server running this background response stopped."},
    }
    return Event.build({"type": "response.failed", "sequence_number": seq, "response": response})
