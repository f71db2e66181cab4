"""The middle in process: a real Runtime (engine, memory store, metrics) with the local model and
scripted providers, no sockets. Shared by tests/service and tests/asgi."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from wsproxy.core.events import Event, ResponseBuilder, usage_object
from wsproxy.dialects.base import UpstreamCall
from wsproxy.errors import ProxyError
from wsproxy.service.wiring import Runtime, open_runtime
from wsproxy.settings import Settings, load_settings

# The in-process client's base URL: a loopback Host, as the host guard (wsproxy.asgi.guards)
# accepts when the settings bind a loopback address. (Starlette's TestClient opens WebSockets on
# ws://testserver whatever the base URL: the settings below allow that name too.)
BASE = "http://127.0.0.1"


def local_settings(
    tmp_path: Path, *, token_delay: float = 0.0, extra: str = "", **overrides: Any
) -> Settings:
    """The local model (``model: "local"``) and the memory store; ``extra``: more TOML."""
    path = tmp_path / "wsproxy.toml"
    path.write_text(
        'allowed_hosts = ["127.0.0.1", "testserver"]\n[store]\nbackend = "memory"\n'
        f'[providers.local]\nkind = "local"\ntoken_delay = {token_delay}\nmodels = ["local"]\n' + extra
    )
    return load_settings(str(path), environ={}, **overrides)


@asynccontextmanager
async def runtime_for(settings: Settings) -> AsyncIterator[Runtime]:
    runtime = await open_runtime(settings, environ={})
    try:
        yield runtime
    finally:
        await runtime.aclose()


class ScriptedProvider:
    """A provider whose stream is a script: events built with ResponseBuilder, then optionally
    an exception (before or after output), and a record of whether it was closed."""

    kind = "scripted"

    def __init__(
        self,
        name: str,
        *,
        tokens: int = 3,
        fail_before: ProxyError | None = None,
        fail_after: ProxyError | None = None,
        end_without_terminal: bool = False,
        delay: float = 0.0,
    ) -> None:
        self.name = name
        self.tokens = tokens
        self.fail_before = fail_before
        self.fail_after = fail_after
        self.end_without_terminal = end_without_terminal
        self.delay = delay
        self.calls = 0
        self.closed = 0

    async def aclose(self) -> None:
        return None

    async def stream(
        self, call: UpstreamCall, response_id: str, created_at: int
    ) -> AsyncGenerator[Event, None]:
        self.calls += 1
        try:
            if self.fail_before is not None:
                raise self.fail_before
            builder = ResponseBuilder(response_id, call.model, created_at, call.body)
            for event in builder.start():
                yield event
            for index in range(self.tokens):
                for event in builder.text_delta(f"t{index} "):
                    yield event
                if self.delay:
                    await asyncio.sleep(self.delay)
            if self.fail_after is not None:
                raise self.fail_after
            if self.end_without_terminal:
                return
            for event in builder.complete(usage_object(1, self.tokens), created_at):
                yield event
        finally:
            self.closed += 1


async def collect(events: AsyncIterator[Event]) -> list[dict[str, Any]]:
    return [event.json() async for event in events]


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` every 5 ms, at most ``timeout`` seconds."""
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"not true within {timeout}s")
