"""Fixtures of the fault-injection suite: a real wsproxy (uvicorn on 127.0.0.1) in front of
upstreams that can be told to misbehave, with small timeouts so every fault shows in about a second.

Upstreams (each the test suite's own, so their counters are not shared with other suites):

- ``fault_upstream``: :class:`tests.fakes.openai_upstream.FakeOpenAI` under hypercorn; the model
  name picks the behaviour (``stall-after-3``, ``flood-5000-1024``, ``fail-429-ra1``...);
- ``raw_upstream``: :class:`tests.faults.rawupstream.RawUpstream`, raw HTTP/2 and HTTP/1.1 for
  GOAWAY, RST_STREAM, protocol garbage and TCP resets.

Providers of the proxy (``fault_proxy(**limits)`` starts one; limits override ``[limits]``):

    up    OpenAI kind, h2c to fault_upstream      up1   the same over HTTP/1.1
    raw   OpenAI kind, h2c to raw_upstream        raw1  the same over HTTP/1.1
    dead  a port where nothing listens            tls   https:// to a plain-HTTP port
    local the built-in model

Each with ``idle_timeout`` and ``first_byte_timeout`` of ``IDLE`` seconds and one retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.servers import HypercornThread, UvicornThread, free_port
from tests.faults.rawupstream import RawUpstream
from wsproxy.asgi.app import create_app
from wsproxy.settings import load_settings

IDLE = 0.5
TERMINAL = ("response.completed", "response.failed", "response.incomplete")


@pytest.fixture(scope="session")
def fault_upstream() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    server = HypercornThread(fake).start()
    try:
        yield fake, server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def raw_upstream() -> Iterator[RawUpstream]:
    raw = RawUpstream().start()
    try:
        yield raw
    finally:
        raw.stop()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def fault_toml(
    tmp_path: Path,
    fake_url: str,
    raw_url: str,
    limits: dict[str, Any] | None = None,
    providers: dict[str, dict[str, Any]] | None = None,
    top: dict[str, Any] | None = None,
) -> Path:
    """Write the suite's TOML; ``providers`` overrides per-provider fields."""
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    tls = fake_url.replace("http://", "https://") + "/v1"
    common = {
        "api_key": "sk-up",
        "idle_timeout": IDLE,
        "first_byte_timeout": IDLE,
        "connect_timeout": 1.0,
        "max_retries": 1,
        "retry_max_wait": 2.0,
    }
    table: dict[str, dict[str, Any]] = {
        "up": {"kind": "openai", "base_url": fake_url + "/v1", "http2_prior_knowledge": True, **common},
        "up1": {"kind": "openai", "base_url": fake_url + "/v1", "http2": False, **common},
        "raw": {"kind": "openai", "base_url": raw_url + "/v1", "http2_prior_knowledge": True, **common},
        "raw1": {"kind": "openai", "base_url": raw_url + "/v1", "http2": False, **common},
        "dead": {"kind": "openai", "base_url": dead, "http2": False, **common},
        "tls": {"kind": "openai", "base_url": tls, "verify": "false", **common},
        "local": {"kind": "local", "token_delay": 0.001, "models": ["local"]},
    }
    for name, fields in (providers or {}).items():
        table.setdefault(name, {}).update(fields)
    lines = [f"{k} = {_toml_value(v)}" for k, v in (top or {}).items()]
    lines += ["[store]", 'backend = "sqlite"', f"path = {_toml_value(str(tmp_path / 'store.sqlite3'))}"]
    lines.append("[limits]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in (limits or {}).items()]
    for name, fields in table.items():
        lines.append(f"[providers.{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in fields.items()]
    lines += [
        "[aliases]",
        'dead-then-up = ["dead@fake", "up@fake"]',
        'tls-then-up = ["tls@fake", "up@fake"]',
        'hang-then-up = ["up@hang-headers", "up1@fake"]',
        'stall0-then-up = ["up@stall-after-0", "up1@fake"]',
        'order-then-up = ["up@order-delta-first", "up1@fake"]',
        'midfail-then-up = ["up@die-after-5", "up1@fake"]',
    ]
    path = tmp_path / "wsproxy.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fault_proxy(
    tmp_path: Path, fault_upstream: tuple[FakeOpenAI, str], raw_upstream: RawUpstream
) -> Iterator[Any]:
    servers: list[UvicornThread] = []

    def start(providers: dict[str, dict[str, Any]] | None = None, **limits: Any) -> UvicornThread:
        path = fault_toml(tmp_path, fault_upstream[1], raw_upstream.url, limits, providers)
        settings = load_settings(str(path), environ={})
        server = UvicornThread(
            create_app(settings, environ={}),
            ws_max_size=settings.limits.max_ws_message_bytes,
            ws_ping_interval=settings.limits.ws_ping_interval,
            ws_ping_timeout=settings.limits.ws_ping_timeout,
        ).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def proxy_process(
    tmp_path: Path, fault_upstream: tuple[FakeOpenAI, str], raw_upstream: RawUpstream
) -> Iterator[Any]:
    """``proxy_process(**limits)``: wsproxy as a real process (signals, its own RSS and fds)."""
    from tests.faults.proc import ProxyProcess

    procs: list[ProxyProcess] = []

    def start(providers: dict[str, dict[str, Any]] | None = None, **limits: Any) -> ProxyProcess:
        path = fault_toml(tmp_path, fault_upstream[1], raw_upstream.url, limits, providers)
        proc = ProxyProcess(path, tmp_path / f"wsproxy-{len(procs)}.log").start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


# -- client helpers ---------------------------------------------------------------------------


def ws_url(proxy: UvicornThread) -> str:
    return f"ws://127.0.0.1:{proxy.port}/v1/responses"


@contextlib.asynccontextmanager
async def ws_connect(proxy: UvicornThread, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    kwargs.setdefault("max_size", None)
    kwargs.setdefault("open_timeout", 5)
    kwargs.setdefault("close_timeout", 2)
    async with websockets.connect(ws_url(proxy), **kwargs) as ws:
        yield ws


def create(model: str, text: str = "hello", **fields: Any) -> str:
    return json.dumps({"type": "response.create", "model": model, "input": text, **fields})


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        frame = await ws.recv()
    assert isinstance(frame, str), f"expected a text frame, got {frame!r}"
    value: dict[str, Any] = json.loads(frame)
    return value


def is_outcome(event: dict[str, Any]) -> bool:
    """A terminal event, or a request-level error (an ``error`` without ``sequence_number``)."""
    return event.get("type") in TERMINAL or (event.get("type") == "error" and "sequence_number" not in event)


async def until_outcome(
    ws: ClientConnection, timeout: float = 8.0, limit: int = 100_000
) -> list[dict[str, Any]]:
    """Events up to and including the next terminal event or request-level error."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    for _ in range(limit):
        events.append(await recv_json(ws, max(0.01, deadline - time.monotonic())))
        if is_outcome(events[-1]):
            return events
    raise AssertionError(f"no outcome in {limit} events")


def terminals(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") in TERMINAL]


def sse_events(body: bytes) -> list[dict[str, Any]]:
    out = []
    for block in body.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                out.append(json.loads(line[6:]))
    return out


async def post_sse(
    proxy: UvicornThread, model: str, text: str = "hello", timeout: float = 10.0, **fields: Any
) -> tuple[int, list[dict[str, Any]], bytes]:
    async with httpx2.AsyncClient(timeout=timeout) as client:
        r = await client.post(
            proxy.url + "/v1/responses", json={"model": model, "input": text, "stream": True, **fields}
        )
    return r.status_code, sse_events(r.content) if r.status_code == 200 else [], r.content


async def metrics(proxy: UvicornThread) -> dict[str, float]:
    async with httpx2.AsyncClient(timeout=5) as client:
        r = await client.get(proxy.url + "/metrics")
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric(values: dict[str, float], prefix: str) -> float:
    """Sum of the series whose name (with labels) starts with ``prefix``."""
    return sum(v for k, v in values.items() if k.startswith(prefix))


async def wait_upstream(upstream: Any, predicate: Any, timeout: float = 5.0) -> bool:
    """Wait (off the event loop) until the upstream's records satisfy ``predicate``."""
    ok: bool = await asyncio.to_thread(upstream.wait, predicate, timeout)
    return ok
