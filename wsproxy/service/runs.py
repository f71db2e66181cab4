"""Background responses: the registry of runs detached from any client connection.

A background run keeps its events in a bounded log, so a client can replay them from any
``sequence_number`` and follow the live stream. Finished runs stay for ``RETENTION`` seconds
(at most ``MAX_FINISHED`` of them) so that a client whose stream dropped can resume exactly.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from wsproxy.core.events import Event
from wsproxy.service.engine import ResponseRun

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
