"""The load generator: sessions over persistent connections, each sending its next request as soon
as the previous response ended (closed loop), for a bounded time.

- :func:`run_load` measures one target at one concurrency: per-delta latency (receive time minus
  the upstream's stamp), time to first delta (request written -> first text delta), deltas/s and
  responses/s inside a measurement window after a warm-up, errors, and the CPU seconds the server
  under test and the harness (this process + the fake upstream) spent inside that window.
- :func:`agent_loop` runs a tool-calling agent loop for N turns (WebSocket mode with
  ``previous_response_id``, or HTTP with a stored chain or the full context resent).
- :func:`open_idle` opens idle WebSocket sessions (handshake only) for the memory scenario.

Sessions start at random offsets within ``stagger`` seconds, so paced streams are not in lockstep.
Every wait is bounded; connections are closed in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from bench.clients import Exchange, Recorder, SSEConnection, WSConnection, terminal_json
from bench.common import machine_cpu_seconds, percentiles
from bench.targets import Endpoint

Conn = SSEConnection | WSConnection
RESPONSE_TIMEOUT = 20.0


@dataclass
class Progress:
    """What the progress display shows; the runner updates it, a task prints it."""

    stage: str = ""
    recorder: Recorder | None = None
    started: float = field(default_factory=time.monotonic)
    done_steps: int = 0
    total_steps: int = 0


async def connect(ep: Endpoint, host: str = "127.0.0.1") -> Conn:
    if ep.transport == "ws":
        return await WSConnection.open(host, ep.port, ep.path, ep.deflate)
    return await SSEConnection.open(host, ep.port)


def send(conn: Conn, ep: Endpoint, body: bytes, ex: Exchange) -> asyncio.Future[bytes | None]:
    if isinstance(conn, WSConnection):
        return conn.send_create(body, ex)
    return conn.post(ep.path, body, ex)


async def open_many(ep: Endpoint, n: int, parallel: int = 64) -> list[Conn]:
    sem = asyncio.Semaphore(parallel)

    async def one() -> Conn:
        async with sem:
            async with asyncio.timeout(30):
                return await connect(ep)

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    conns = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for c in conns:
            c.close()
        raise RuntimeError(f"{len(errors)} of {n} connections failed: {errors[0]!r}")
    return conns


async def probe(ep: Endpoint, limit_s: float = 10.0) -> str | None:
    """One short request through ``ep``; None when it completed, else what went wrong."""
    rec = Recorder()
    rec.t_start, rec.t_end = 0, 1 << 62
    conn: Conn | None = None
    try:
        async with asyncio.timeout(limit_s):
            conn = await connect(ep)
            ex = Exchange(rec, chat=ep.chat)
            await send(conn, ep, ep.body(), ex)
    except (OSError, ConnectionError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if conn is not None:
            conn.close()
    if rec.errors or rec.responses != 1:
        return f"no completed response ({rec.error_kinds or 'no terminal event'})"
    return None


def _cpu_self() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class LoadResult:
    deltas: int
    responses: int
    errors: int
    error_kinds: dict[str, int]
    duration: float
    lat: np.ndarray
    ttfd: np.ndarray
    server_cpu: float | None
    harness_cpu: float
    machine_busy: float = 0.0  # every process on the machine, in the window
    steal: float = 0.0

    def summary(self) -> dict[str, Any]:
        p = percentiles(self.lat)
        t = percentiles(self.ttfd, (50, 99))
        out: dict[str, Any] = {
            "deltas_per_s": self.deltas / self.duration,
            "responses_per_s": self.responses / self.duration,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "lat_p50_us": p[0] / 1e3,
            "lat_p99_us": p[1] / 1e3,
            "lat_p999_us": p[2] / 1e3,
            "ttfd_p50_us": t[0] / 1e3,
            "ttfd_p99_us": t[1] / 1e3,
            "harness_cpu_util": self.harness_cpu / self.duration,
            "harness_cpu_us_per_delta": self.harness_cpu / max(1, self.deltas) * 1e6,
            # CPU used by processes that are not ours (other jobs on a shared machine), and VM steal
            "foreign_cpu_util": max(0.0, self.machine_busy - self.harness_cpu - (self.server_cpu or 0.0))
            / self.duration,
            "steal_util": self.steal / self.duration,
        }
        if self.server_cpu is not None:
            out["cpu_util"] = self.server_cpu / self.duration
            out["cpu_us_per_delta"] = self.server_cpu / max(1, self.deltas) * 1e6
            out["cpu_us_per_response"] = self.server_cpu / max(1, self.responses) * 1e6
        return out


async def run_load(
    ep: Endpoint,
    concurrency: int,
    warmup: float,
    duration: float,
    stagger: float,
    server_cpu: Callable[[], float] | None,
    upstream_cpu: Callable[[], float],
    progress: Progress | None = None,
) -> LoadResult:
    """Closed-loop sessions for ``warmup + duration`` seconds; measured over the last ``duration``."""
    rec = Recorder()
    if progress is not None:
        progress.recorder = rec
    conns = await open_many(ep, concurrency)
    body = ep.body()
    now = time.monotonic_ns()
    rec.t_start = now + int(warmup * 1e9)
    rec.t_end = rec.t_start + int(duration * 1e9)

    async def session(index: int, delay: float) -> None:
        await asyncio.sleep(delay)
        conn = conns[index]
        while time.monotonic_ns() < rec.t_end:
            if conn.closed:
                try:
                    conn = conns[index] = await connect(ep)
                except (OSError, ConnectionError, TimeoutError):
                    rec.error("reconnect_failed")
                    return
            ex = Exchange(rec, chat=ep.chat)
            try:
                async with asyncio.timeout(RESPONSE_TIMEOUT):
                    await send(conn, ep, body, ex)
            except TimeoutError:
                ex.fail("timeout")
                conn.close()
                return

    tasks = [asyncio.create_task(session(i, random.uniform(0, stagger))) for i in range(concurrency)]
    try:
        await asyncio.sleep(max(0.0, (rec.t_start - time.monotonic_ns()) / 1e9))
        s0 = server_cpu() if server_cpu else None
        h0 = _cpu_self() + upstream_cpu()
        m0 = machine_cpu_seconds()
        await asyncio.sleep(max(0.0, (rec.t_end - time.monotonic_ns()) / 1e9))
        s1 = server_cpu() if server_cpu else None
        h1 = _cpu_self() + upstream_cpu()
        m1 = machine_cpu_seconds()
        _, pending = await asyncio.wait(tasks, timeout=RESPONSE_TIMEOUT)
        for task in pending:
            task.cancel()
            rec.error("session_stuck")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in conns:
            conn.close()
    return LoadResult(
        deltas=rec.deltas,
        responses=rec.responses,
        errors=rec.errors,
        error_kinds=dict(rec.error_kinds),
        duration=duration,
        lat=np.frombuffer(rec.lat, dtype=np.int64).copy(),
        ttfd=np.frombuffer(rec.ttfd, dtype=np.int64).copy(),
        server_cpu=None if s0 is None or s1 is None else s1 - s0,
        harness_cpu=h1 - h0,
        machine_busy=m1[0] - m0[0],
        steal=m1[1] - m0[1],
    )


# -- the agent loop -----------------------------------------------------------------------------

TOOLS = [{
    "type": "function", "name": "read_file", "description": "Read a file of the repository.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "query": {"type": "string"}},
                   "required": ["path"]},
}]  # fmt: skip
INSTRUCTIONS = "You are a coding agent. Use the tools to inspect the repository, then fix the bug. " * 8


async def agent_loop(ep: Endpoint, mode: str, turns: int, tool_output_bytes: int) -> dict[str, Any]:
    """``turns`` tool-calling turns on one connection; returns per-turn latencies (us) and the total.

    mode: ``ws`` (WebSocket mode, store=false, previous_response_id + only the new tool output),
    ``http_chain`` (SSE, store=true, previous_response_id), ``http_full`` (SSE, store=false, the
    whole conversation resent every turn, as stateless HTTP clients do).
    """
    rec = Recorder()
    rec.t_start, rec.t_end = 0, 1 << 62
    conn = await connect(ep)
    history: list[dict[str, Any]] = [{"role": "user", "content": "The tests fail in src/module.py; fix it."}]
    new_input: list[dict[str, Any]] = list(history)
    prev: str | None = None
    per_turn: list[float] = []
    t_begin = time.monotonic_ns()
    try:
        for turn in range(turns):
            body: dict[str, Any] = {"model": ep.model, "instructions": INSTRUCTIONS, "tools": TOOLS}
            if mode == "ws":
                body.update({"type": "response.create", "store": False, "input": new_input})
                if prev:
                    body["previous_response_id"] = prev
            elif mode == "http_chain":
                body.update({"stream": True, "store": True, "input": new_input})
                if prev:
                    body["previous_response_id"] = prev
            else:
                body.update({"stream": True, "store": False, "input": history})
            ex = Exchange(rec, keep_terminal=True)
            t0 = time.monotonic_ns()
            async with asyncio.timeout(RESPONSE_TIMEOUT):
                terminal = await send(conn, ep, orjson.dumps(body), ex)
            per_turn.append((time.monotonic_ns() - t0) / 1e3)
            final = terminal_json(terminal)
            response = final.get("response") or {}
            if final.get("type") != "response.completed":
                raise RuntimeError(f"turn {turn}: {final.get('type')}: {str(final)[:300]}")
            prev = response.get("id")
            call = next(o for o in response.get("output", []) if o.get("type") == "function_call")
            output = {
                "type": "function_call_output",
                "call_id": call["call_id"],
                "output": f"turn {turn}: " + "y" * tool_output_bytes,
            }
            history += [call, output]
            new_input = [output]
    finally:
        conn.close()
    total = (time.monotonic_ns() - t_begin) / 1e3
    return {"per_turn_us": per_turn, "total_us": total, "errors": rec.errors}


# -- idle sessions ------------------------------------------------------------------------------


async def open_idle(
    ep: Endpoint, n: int, parallel: int = 200, progress: Progress | None = None, time_limit: float = 120.0
) -> tuple[list[WSConnection], dict[str, int]]:
    """Open up to ``n`` idle WebSocket sessions; stops early (and says why) on repeated failures."""
    conns: list[WSConnection] = []
    failures: dict[str, int] = {}
    sem = asyncio.Semaphore(parallel)
    deadline = time.monotonic() + time_limit
    stop = False

    async def one() -> None:
        nonlocal stop
        async with sem:
            if stop or time.monotonic() > deadline:
                return
            try:
                async with asyncio.timeout(30):
                    conns.append(await WSConnection.open("127.0.0.1", ep.port, ep.path, ep.deflate))
            except (OSError, ConnectionError, TimeoutError) as exc:
                kind = type(exc).__name__ + (
                    f"[{exc.errno}]" if isinstance(exc, OSError) and exc.errno else ""
                )
                failures[kind] = failures.get(kind, 0) + 1
                if sum(failures.values()) > max(50, n // 100):
                    stop = True
            if progress is not None:
                progress.stage = f"idle sessions: {len(conns)}/{n} open"

    await asyncio.gather(*(one() for _ in range(n)))
    return conns, failures


async def close_all(conns: list[Any], settle: float = 1.0) -> None:
    for c in conns:
        with contextlib.suppress(Exception):
            c.close()
    await asyncio.sleep(settle)
