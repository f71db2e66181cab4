"""Soak: hundreds of concurrent sessions for minutes, with random client disconnects and upstream
faults, while the proxy's resident memory and open file descriptors are sampled. Leaks show as a
slope; a proxy that cleans up after every session stays flat.

    python -m bench.soak --minutes 10          # the default run
    python -m bench.soak --minutes 1           # quick
    python -m bench.soak --minutes 2 --concurrency 300 --out bench/soak_results

Three processes, all on 127.0.0.1:

    this process (load: WebSocket, SSE, JSON)  ──▶  wsproxy serve  ──h2c / HTTP/1.1──▶  upstreams
                                                    (measured: /proc/PID)                (own process)

The upstreams are the fault-injection suite's: ``FakeOpenAI`` under hypercorn (stalls, drops,
garbage, 5xx, 429) and ``RawUpstream`` (RST_STREAM, GOAWAY, TCP resets). Each session picks a
transport and a model from a weighted mix; about one in eight clients leaves mid-response (a
WebSocket close, a dropped TCP connection, an SSE body closed early). Every outcome is counted by
kind. After the load stops the proxy is left to go idle and sampled again, then stopped with
SIGTERM (its exit code is part of the result).

Writes ``<out>/soak.json`` (settings, samples, outcomes, summary), ``<out>/soak.png`` and
``<out>/SOAK.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "soak_results"
TERMINAL = ("response.completed", "response.failed", "response.incomplete")
WORDS = " ".join(f"w{i}" for i in range(40))

# (weight, provider@model, what it exercises)
MODELS: list[tuple[int, str]] = [
    (30, "up@fake"),  # h2c, normal
    (15, "up1@fake"),  # HTTP/1.1, normal
    (10, "up@slow-10"),  # a longer stream (~50 events, 10 ms apart)
    (10, "local"),  # the built-in model
    (4, "up@stall-after-6"),  # stalls mid-stream: idle timeout
    (4, "up1@die-after-6"),  # connection dropped mid-stream
    (3, "up@garbage-after-6"),  # malformed SSE
    (3, "raw@rst-mid"),  # RST_STREAM mid-stream
    (2, "raw@goaway-mid"),  # GOAWAY mid-stream
    (2, "raw1@reset-mid"),  # TCP reset mid-stream
    (3, "up@fail-503"),  # 5xx: retried, then passed through
    (2, "up@fail-429"),  # 429 with Retry-After: 0, retried
    (2, "dead@fake"),  # connection refused
    (2, "fallback"),  # alias: dead provider, then up@fake
]
TRANSPORTS: list[tuple[int, str]] = [(50, "ws"), (35, "sse"), (10, "json"), (5, "bad")]
DISCONNECT_P = 0.125


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def weighted(rng: random.Random, table: list[tuple[int, str]]) -> str:
    return rng.choices([v for _, v in table], weights=[w for w, _ in table])[0]


# -- the upstream process -----------------------------------------------------------------------


def serve_upstreams(port: int, raw_port: int) -> None:
    """``python -m bench.soak upstream``: the fault-injection fakes in their own process."""
    sys.path.insert(0, str(REPO))
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from tests.fakes.openai_upstream import FakeOpenAI
    from tests.faults.rawupstream import RawUpstream

    class Forgetful(FakeOpenAI):
        """Keeps no per-request records (a long soak would grow them without end)."""

        def _touch(self, record: dict[str, Any], **changes: Any) -> None:
            record.update(changes)

        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            await super().__call__(scope, receive, send)
            with self.lock:
                self.requests.clear()
                self.known_ids.clear()

    raw = RawUpstream()
    raw.port = raw_port
    raw.start()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "ERROR"
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 60
    stop = asyncio.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await serve(Forgetful(), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    asyncio.run(main())
    raw.stop()


# -- the proxy ----------------------------------------------------------------------------------


def write_config(tmp: Path, port: int, raw_port: int, concurrency: int) -> Path:
    common = (
        'api_key = "sk-up"\nidle_timeout = 2.0\nfirst_byte_timeout = 3.0\nconnect_timeout = 1.0\n'
        "max_retries = 1\nretry_max_wait = 0.5\nmax_connections = 1000\nmax_keepalive_connections = 200\n"
    )
    dead = free_port()
    text = f"""log_level = "warning"
[store]
backend = "sqlite"
path = "{tmp / "soak.sqlite3"}"
[limits]
slow_client_timeout = 5.0
event_queue_size = 64
shutdown_grace = 5.0
ws_max_queued = 32
[providers.local]
kind = "local"
token_delay = 0.005
models = ["local"]
[providers.up]
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
http2_prior_knowledge = true
{common}[providers.up1]
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
http2 = false
{common}[providers.raw]
kind = "openai"
base_url = "http://127.0.0.1:{raw_port}/v1"
http2_prior_knowledge = true
{common}[providers.raw1]
kind = "openai"
base_url = "http://127.0.0.1:{raw_port}/v1"
http2 = false
{common}[providers.dead]
kind = "openai"
base_url = "http://127.0.0.1:{dead}/v1"
http2 = false
{common}[aliases]
fallback = ["dead@fake", "up@fake"]
"""
    path = tmp / "soak.toml"
    path.write_text(text)
    return path


def proc_status(pid: int) -> dict[str, int]:
    out = {"rss_kib": 0, "threads": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            out["rss_kib"] = int(line.split()[1])
        elif line.startswith("Threads:"):
            out["threads"] = int(line.split()[1])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    out["cpu_ticks"] = int(stat[11]) + int(stat[12])
    return out


# -- the load -----------------------------------------------------------------------------------


@dataclass
class Load:
    proxy_url: str
    rng: random.Random
    deadline: float
    outcomes: Counter[str] = field(default_factory=Counter)
    by_model: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    responses: int = 0
    events: int = 0

    @property
    def ws_url(self) -> str:
        return self.proxy_url.replace("http://", "ws://") + "/v1/responses"

    def count(self, kind: str, model: str | None = None) -> None:
        self.outcomes[kind] += 1
        if model is not None:
            self.by_model[f"{model} -> {kind}"] += 1

    def terminal(self, event: dict[str, Any], model: str) -> None:
        self.responses += 1
        if event["type"] == "response.completed":
            self.count("completed", model)
        else:
            error = (event["response"].get("error") or {}).get("code") or "?"
            self.count(f"{event['type'].split('.')[1]}:{error}", model)

    def check(self, events: list[dict[str, Any]]) -> None:
        """One response's events: sequence numbers from 0, exactly one terminal, last."""
        seqs = [e.get("sequence_number") for e in events if "sequence_number" in e]
        if seqs != list(range(len(seqs))) and not any(e["type"] == "response.failed" for e in events):
            self.violations["sequence_numbers"] += 1
        n_terminal = sum(e["type"] in TERMINAL for e in events)
        if n_terminal != 1 or events[-1]["type"] not in TERMINAL:
            self.violations["terminal_events"] += 1


async def ws_session(load: Load, http: Any) -> None:
    import orjson
    import websockets

    rng = load.rng
    async with websockets.connect(load.ws_url, max_size=None, open_timeout=10, close_timeout=2) as ws:
        for _ in range(rng.randint(1, 4)):
            model = weighted(rng, MODELS)
            await ws.send(
                orjson.dumps(
                    {"type": "response.create", "model": model, "input": WORDS, "store": rng.random() < 0.3}
                ).decode()
            )
            leave_after = rng.randint(1, 12) if rng.random() < DISCONNECT_P else None
            events: list[dict[str, Any]] = []
            while True:
                event = orjson.loads(await ws.recv())
                load.events += 1
                if event["type"] == "error" and "sequence_number" not in event:
                    load.count(f"error:{event['status']}:{event['error']['code']}", model)
                    break
                events.append(event)
                if leave_after is not None and len(events) >= leave_after:
                    if rng.random() < 0.5:
                        await ws.close()
                        load.count("client_left:ws_close", model)
                    else:
                        ws.transport.abort()
                        load.count("client_left:ws_drop", model)
                    return
                if event["type"] in TERMINAL:
                    load.terminal(event, model)
                    load.check(events)
                    break


async def sse_session(load: Load, http: Any) -> None:
    import orjson

    rng = load.rng
    model = weighted(rng, MODELS)
    leave_after = rng.randint(1, 12) if rng.random() < DISCONNECT_P else None
    body = {"model": model, "input": WORDS, "stream": True, "store": rng.random() < 0.3}
    async with http.stream("POST", load.proxy_url + "/v1/responses", json=body) as r:
        if r.status_code != 200:
            error = orjson.loads(await r.aread())["error"]
            load.count(f"error:{r.status_code}:{error.get('code')}", model)
            return
        events: list[dict[str, Any]] = []
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = orjson.loads(line[6:])
            load.events += 1
            events.append(event)
            if leave_after is not None and len(events) >= leave_after:
                load.count("client_left:sse_close", model)
                return  # leaving the block closes the connection mid-stream
            if event["type"] in TERMINAL:
                load.terminal(event, model)
        if not events or events[-1]["type"] not in TERMINAL:
            load.violations["sse_without_terminal"] += 1
        else:
            load.check([e for e in events if e["type"] != "error" or "sequence_number" in e])


async def json_session(load: Load, http: Any) -> None:
    model = weighted(load.rng, MODELS)
    r = await http.post(load.proxy_url + "/v1/responses", json={"model": model, "input": WORDS})
    body = r.json()
    if r.status_code != 200:
        load.count(f"error:{r.status_code}:{body['error'].get('code')}", model)
        return
    load.responses += 1
    load.count("completed" if body["status"] == "completed" else f"{body['status']}:json", model)


async def bad_session(load: Load, http: Any) -> None:
    """Bad input on a WebSocket: the socket must answer each with an error and stay usable."""
    import orjson
    import websockets

    async with websockets.connect(load.ws_url, max_size=None, open_timeout=10, close_timeout=2) as ws:
        for frame in (
            "{not json",
            b"\x00binary",
            '{"type": "response.cancel"}',
            '{"type": "response.create", "model": "local", "temperature": "hot"}',
        ):
            await ws.send(frame)
            event = orjson.loads(await ws.recv())
            load.count(
                f"bad_input:{event['error']['code']}"
                if event["type"] == "error"
                else "bad_input:NOT_AN_ERROR"
            )
        await ws.send('{"type": "response.create", "model": "local", "input": "after bad input"}')
        events = []
        while not events or events[-1]["type"] not in TERMINAL:
            events.append(orjson.loads(await ws.recv()))
        load.terminal(events[-1], "local")
        load.check(events)


SESSIONS = {"ws": ws_session, "sse": sse_session, "json": json_session, "bad": bad_session}


async def worker(load: Load, http: Any) -> None:
    while time.monotonic() < load.deadline:
        kind = weighted(load.rng, TRANSPORTS)
        load.sessions += 1
        try:
            async with asyncio.timeout(60):
                await SESSIONS[kind](load, http)
        except TimeoutError:
            load.count(f"unexpected:{kind}:timeout")
        except Exception as exc:  # an unexpected failure is a result, not a crash of the soak
            load.count(f"unexpected:{kind}:{type(exc).__name__}")


async def sample(pid: int, load: Load, http: Any, start: float, phase: str) -> dict[str, Any]:
    row: dict[str, Any] = {"t": round(time.monotonic() - start, 2), "phase": phase, **proc_status(pid)}
    try:
        text = (await http.get(load.proxy_url + "/metrics", timeout=5)).text
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name in ("wsproxy_active_responses", "wsproxy_ws_sessions"):
                # (the soak's own column keeps the name it has in earlier results)
                column = "ws_connections" if name == "wsproxy_ws_sessions" else "active_responses"
                row[column] = float(value)
    except Exception as exc:
        row["metrics_error"] = type(exc).__name__
    row.update(
        sessions=load.sessions,
        responses=load.responses,
        events=load.events,
        errors=sum(v for k, v in load.outcomes.items() if not k.startswith(("completed", "client_left"))),
    )
    return row


async def run_load(args: argparse.Namespace, pid: int, proxy_url: str) -> dict[str, Any]:
    import httpx2

    start = time.monotonic()
    load = Load(proxy_url, random.Random(args.seed), start + args.minutes * 60)
    limits = httpx2.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency)
    samples: list[dict[str, Any]] = []
    async with httpx2.AsyncClient(timeout=30, limits=limits) as http:
        samples.append(await sample(pid, load, http, start, "baseline"))
        workers = [asyncio.create_task(worker(load, http)) for _ in range(args.concurrency)]
        last_print = 0.0
        while any(not w.done() for w in workers):
            await asyncio.sleep(args.sample_interval)
            row = await sample(pid, load, http, start, "load")
            samples.append(row)
            if row["t"] - last_print >= 15:
                last_print = row["t"]
                print(
                    f"  t={row['t']:6.0f}s rss={row['rss_kib'] / 1024:6.1f} MiB fds={row['fds']:4d} "
                    f"active={row.get('active_responses', 0):4.0f} ws={row.get('ws_connections', 0):4.0f} "
                    f"sessions={load.sessions} responses={load.responses}",
                    flush=True,
                )
        await asyncio.gather(*workers, return_exceptions=True)
        # Let the proxy go idle (idle timeouts, closes), then sample what is left.
        idle_start = time.monotonic()
        while time.monotonic() - idle_start < 15:
            row = await sample(pid, load, http, start, "idle")
            samples.append(row)
            if (
                row.get("active_responses", 1) == 0
                and row.get("ws_connections", 1) == 0
                and time.monotonic() - idle_start > 3
            ):
                break
            await asyncio.sleep(1.0)
    return {
        "samples": samples,
        "outcomes": dict(load.outcomes.most_common()),
        "outcomes_by_model": dict(sorted(load.by_model.items())),
        "violations": dict(load.violations),
        "sessions": load.sessions,
        "responses": load.responses,
        "events": load.events,
        "duration_s": round(time.monotonic() - start, 1),
    }


# -- results ------------------------------------------------------------------------------------


def slope_per_min(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 60


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    samples = result["samples"]
    load = [s for s in samples if s["phase"] == "load"]
    baseline, idle = samples[0], samples[-1]
    warm = load[len(load) // 5] if load else baseline  # after the first fifth: pools and caches warm
    second_half = load[len(load) // 2 :]
    xs = [s["t"] for s in second_half]
    return {
        "rss_mib": {
            "baseline": baseline["rss_kib"] / 1024,
            "warm": warm["rss_kib"] / 1024,
            "max": max(s["rss_kib"] for s in samples) / 1024,
            "end_of_load": (load[-1] if load else idle)["rss_kib"] / 1024,
            "idle_after": idle["rss_kib"] / 1024,
            "slope_mib_per_min_second_half": slope_per_min(xs, [s["rss_kib"] / 1024 for s in second_half]),
        },
        "fds": {
            "baseline": baseline["fds"],
            "max": max(s["fds"] for s in samples),
            "idle_after": idle["fds"],
            "slope_per_min_second_half": slope_per_min(xs, [float(s["fds"]) for s in second_half]),
        },
        "threads": {
            "baseline": baseline["threads"],
            "max": max(s["threads"] for s in samples),
            "idle_after": idle["threads"],
        },
        "idle_after": {
            "active_responses": idle.get("active_responses"),
            "ws_connections": idle.get("ws_connections"),
        },
        "responses_per_s": result["responses"] / max(1.0, result["duration_s"]),
        "proxy_cpu_s": (idle["cpu_ticks"] - baseline["cpu_ticks"]) / os.sysconf("SC_CLK_TCK"),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    axes[0].plot(t, [s["rss_kib"] / 1024 for s in samples], color="tab:blue")
    axes[0].set_ylabel("proxy RSS (MiB)")
    axes[0].set_ylim(bottom=0)
    axes[1].plot(t, [s["fds"] for s in samples], color="tab:orange", label="open fds")
    axes[1].plot(t, [s["threads"] for s in samples], color="tab:gray", label="threads")
    axes[1].set_ylabel("count")
    axes[1].set_ylim(bottom=0)
    axes[1].legend(loc="upper left")
    axes[2].plot(t, [s.get("active_responses", 0) for s in samples], label="active responses")
    axes[2].plot(t, [s.get("ws_connections", 0) for s in samples], label="WebSocket sessions")
    axes[2].set_ylabel("in flight")
    axes[2].legend(loc="upper left")
    axes[3].plot(t, [s["responses"] for s in samples], label="responses (terminal events)")
    axes[3].plot(t, [s["errors"] for s in samples], label="errors + failed (injected faults, bad input)")
    axes[3].set_ylabel("cumulative")
    axes[3].set_xlabel("minutes")
    axes[3].legend(loc="upper left")
    for ax in axes:
        ax.grid(alpha=0.3)
        end = max((s["t"] / 60 for s in samples if s["phase"] == "load"), default=0)
        ax.axvline(end, color="black", lw=0.8, ls="--")
    fig.suptitle(
        f"wsproxy soak: {result['settings']['concurrency']} concurrent clients, "
        f"{result['settings']['minutes']:g} min, random disconnects and upstream faults"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(result: dict[str, Any], path: Path) -> None:
    s = result["summary"]
    lines = [
        "# Soak results",
        "",
        f"Command: `{result['settings']['command']}`  ",
        f"Machine: {result['machine']}  ",
        f"Date: {result['date']}",
        "",
        f"{result['settings']['concurrency']} concurrent clients for {result['settings']['minutes']:g} min "
        f"({result['duration_s']:.0f} s with the idle phase): {result['sessions']} sessions, "
        f"{result['responses']} responses ({s['responses_per_s']:.0f}/s), {result['events']} events; "
        f"proxy CPU {s['proxy_cpu_s']:.0f} s. Proxy exit code after SIGTERM: {result['proxy_exit_code']}.",
        "",
        "| | baseline | after warm-up | max | end of load | idle after | slope, 2nd half |",
        "|---|---|---|---|---|---|---|",
        f"| RSS (MiB) | {s['rss_mib']['baseline']:.1f} | {s['rss_mib']['warm']:.1f} | "
        f"{s['rss_mib']['max']:.1f} | "
        f"{s['rss_mib']['end_of_load']:.1f} | {s['rss_mib']['idle_after']:.1f} | "
        f"{s['rss_mib']['slope_mib_per_min_second_half']:+.2f} MiB/min |",
        f"| open fds | {s['fds']['baseline']} | | {s['fds']['max']} | | {s['fds']['idle_after']} | "
        f"{s['fds']['slope_per_min_second_half']:+.2f} /min |",
        f"| threads | {s['threads']['baseline']} | | {s['threads']['max']} | | "
        f"{s['threads']['idle_after']} | |",
        "",
        f"After the load: {s['idle_after']['active_responses']:.0f} active responses, "
        f"{s['idle_after']['ws_connections']:.0f} WebSocket sessions.",
        "",
        "Invariant violations seen by the clients (sequence numbers, exactly one terminal event last): "
        + (", ".join(f"{k}: {v}" for k, v in result["violations"].items()) or "none")
        + ".",
        "",
        "Reading it: RSS rises during the first minute or two (pools, the SQLite page cache, "
        "allocator arenas sized for ~200 concurrent responses) and then stays flat; a leak would "
        "keep the slope positive. What creeps slowly and then stops is bounded by design: h2 keeps "
        "the ids of up to 65,536 closed streams per HTTP/2 connection. Open fds follow the number "
        "of connections and return to the baseline (plus the store's files) once the load stops.",
        "",
        "## Outcomes by kind",
        "",
        "| kind | count |",
        "|---|---|",
        *[f"| `{k}` | {v} |" for k, v in result["outcomes"].items()],
        "",
        "Kinds: `completed`; `failed:<code>` a response that ended with `response.failed` (an injected "
        "upstream fault after output began); `error:<status>:<code>` a request refused before any "
        "output (faults before output, after retries and failover); `client_left:*` a client that "
        "left mid-response on purpose; `bad_input:<code>` the error each bad frame got; "
        "`unexpected:*` anything the client did not expect (timeouts, protocol errors).",
        "",
        "## Outcomes by model",
        "",
        "| model -> outcome | count |",
        "|---|---|",
        *[f"| `{k}` | {v} |" for k, v in result["outcomes_by_model"].items()],
        "",
        "![soak](soak.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    up = sub.add_parser("upstream", help="(internal) serve the fake upstreams")
    up.add_argument("--port", type=int, required=True)
    up.add_argument("--raw-port", type=int, required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--sample-interval", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.command == "upstream":
        serve_upstreams(args.port, args.raw_port)
        return 0

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="wsproxy-soak-"))
    port, raw_port, proxy_port = free_port(), free_port(), free_port()
    config = write_config(tmp, port, raw_port, args.concurrency)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    upstream_log = open(tmp / "upstream.log", "wb")  # closed in finally
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.soak", "upstream", "--port", str(port), "--raw-port", str(raw_port)],
        cwd=REPO,
        env=env,
        stdout=upstream_log,
        stderr=subprocess.STDOUT,
    )
    proxy_log = open(tmp / "wsproxy.log", "wb")  # closed in finally
    proxy = subprocess.Popen(
        [sys.executable, "-m", "wsproxy", "serve", "--config", str(config), "--port", str(proxy_port)],
        cwd=REPO,
        env=env,
        stdout=proxy_log,
        stderr=subprocess.STDOUT,
    )
    exit_code: int | None = None
    try:
        wait_port(port)
        wait_port(raw_port)
        wait_port(proxy_port)
        print(
            f"soak: {args.concurrency} clients for {args.minutes:g} min; proxy pid {proxy.pid}, "
            f"log {tmp / 'wsproxy.log'}",
            flush=True,
        )
        result = asyncio.run(run_load(args, proxy.pid, f"http://127.0.0.1:{proxy_port}"))
        proxy.send_signal(signal.SIGTERM)
        exit_code = proxy.wait(30)
    finally:
        for p in (proxy, upstream):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        proxy_log.close()
        upstream_log.close()
    log_text = (tmp / "wsproxy.log").read_text(errors="replace")
    result["settings"] = {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "seed": args.seed,
        "sample_interval": args.sample_interval,
        "disconnect_probability": DISCONNECT_P,
        "models": MODELS,
        "transports": TRANSPORTS,
        "command": " ".join(["python -m bench.soak", *(argv if argv is not None else sys.argv[1:])]),
    }
    result["machine"] = f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    result["proxy_exit_code"] = exit_code
    result["proxy_log"] = {
        "errors": log_text.count(" ERROR "),
        "tracebacks": log_text.count("Traceback"),
        "lines": log_text.count("\n"),
    }
    result["summary"] = summarize(result)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / "soak.png")
    write_markdown(result, args.out / "SOAK.md")
    print(json.dumps(result["summary"], indent=1))
    print(f"outcomes: {result['outcomes']}")
    print(f"violations: {result['violations']}; proxy log: {result['proxy_log']}; exit code {exit_code}")
    print(f"wrote {args.out / 'soak.json'}, {args.out / 'soak.png'}, {args.out / 'SOAK.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
