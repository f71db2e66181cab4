"""Background responses: runs detached from any client connection, and their registry.

:func:`start_background` runs a response in a task owned by the runtime (not by the client's
connection) and returns once the response exists. A background run keeps its events in a
bounded log, so a client can replay them from any ``sequence_number`` and follow the live stream.
Cancelled, it is stored with status ``cancelled``. Finished runs stay for ``RETENTION`` seconds
(at most ``MAX_FINISHED`` of them) so that a client whose stream dropped can resume exactly.
No transport here: the edge (``wsproxy.asgi.stored``) answers the client.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from wsproxy.core.events import Event
from wsproxy.core.records import StoredResponse
from wsproxy.errors import ProxyError
from wsproxy.service.engine import Engine, ResponseRun
from wsproxy.store.base import ResponseStore

RETENTION = 600.0
MAX_FINISHED = 1000
MAX_EVENTS = 200_000


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

    def append(self, event: Event) -> None:
        if len(self.log) < MAX_EVENTS:
            self.log.append(event)
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
    def __init__(self) -> None:
        self.runs: dict[str, BackgroundRun] = {}
        self.finished: OrderedDict[str, float] = OrderedDict()

    def get(self, response_id: str, principal: str | None) -> BackgroundRun | None:
        self._expire(time.monotonic())
        entry = self.runs.get(response_id)
        if entry is None or entry.run.principal != principal:
            return None
        return entry

    def mark_finished(self, entry: BackgroundRun) -> None:
        entry.done = True
        entry.finished_at = time.monotonic()
        entry.changed.set()
        self.finished[entry.response_id] = entry.finished_at
        self._expire(entry.finished_at)

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
    """Run ``run`` in a task of the runtime; return once its first event (the response) exists.
    A ``ProxyError`` before that is raised here."""
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
                    host.background.runs[entry.response_id] = entry
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
            host.background.mark_finished(entry)
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
