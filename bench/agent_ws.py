"""Agent loop over WebSocket mode across a WAN link: direct, through wsproxy with an upstream
WebSocket, and through wsproxy over HTTP.

    python -m bench.agent_ws [--turns 20] [--reps 3] [--rtt-ms 20] [--rate-mbit 100]
                             [--token-us 20] [--no-netns]

What runs (all children stopped by PID; network only on 127.0.0.1 and a private veth pair):

    harness (openai SDK, responses.connect())
      ├─ direct ─────────────────────────────────────────┐
      └─ ws://wsproxy ─ upstream WebSocket / HTTP (h2c) ─┤
                                                          ▼
                              delay line (relay, this process: RTT/2 each way, counts bytes)
                                                          │  veth pair, tbf <rate> both ways
                                                          ▼
                              fake provider in netns "wsbench" (tests/fakes/openai_ws_upstream:
                              WebSocket mode + HTTP/SSE, charges --token-us per input token it
                              must process: the new input when continuing from its connection
                              cache, the whole input otherwise)

The link: a network namespace and a veth pair made with ``ip netns``/``ip link``, rate-limited
with ``tc qdisc tbf`` on both ends. This kernel has no ``sch_netem``, so the delay is a delay line
in userspace (a TCP relay that holds every chunk for RTT/2 in each direction, in order).
``--no-netns`` keeps everything on loopback (the relay still adds the delay; no rate limit).

The loop: turn 1 sends a developer message and a ~8 KB task; each turn the model calls a tool
and the client answers with a ~2 KB tool output (the context grows by ~2.3 KB a turn); turn
``--turns`` ends with text. ``store: false`` throughout, each turn continuing with
``previous_response_id`` and only the new input. Reported per route: wall time per turn (create
sent -> terminal event received) and bytes sent towards the provider per turn, medians over
``--reps`` loops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

NS = "wsbench"
HOST_IP, NS_IP = "10.77.0.1", "10.77.0.2"
PY = sys.executable


# -- the link ---------------------------------------------------------------------------------


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def netns_up(rate_mbit: int) -> None:
    netns_down()
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", "veth-wsb0", "type", "veth", "peer", "name", "veth-wsb1")
    sh("ip", "link", "set", "veth-wsb1", "netns", NS)
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", "veth-wsb0")
    sh("ip", "link", "set", "veth-wsb0", "up")
    sh("ip", "-n", NS, "addr", "add", f"{NS_IP}/24", "dev", "veth-wsb1")
    sh("ip", "-n", NS, "link", "set", "veth-wsb1", "up")
    sh("ip", "-n", NS, "link", "set", "lo", "up")
    tbf = ["tbf", "rate", f"{rate_mbit}mbit", "burst", "64kb", "latency", "100ms"]
    sh("tc", "qdisc", "add", "dev", "veth-wsb0", "root", *tbf)
    sh("ip", "netns", "exec", NS, "tc", "qdisc", "add", "dev", "veth-wsb1", "root", *tbf)


def netns_down() -> None:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "link", "del", "veth-wsb0"], capture_output=True)


class DelayLine:
    """A TCP relay holding every chunk for ``delay`` seconds each way (order kept), counting the
    bytes that go towards the provider."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target = target
        self.delay = delay
        self.up_bytes = 0
        self.down_bytes = 0
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="delay-line")

    def start(self) -> DelayLine:
        self.thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, uw, True), self._pipe(ur, writer, False))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(256 * 1024)
                if not data:
                    break
                if up:
                    self.up_bytes += len(data)
                else:
                    self.down_bytes += len(data)
                loop.call_later(self.delay, writer.write, data)
        except OSError:
            pass
        finally:
            await asyncio.sleep(self.delay)
            with contextlib.suppress(OSError):
                writer.close()


# -- children ---------------------------------------------------------------------------------


def serve_upstream(host: str, port: int, token_us: float) -> None:
    """(child) The fake provider under hypercorn on host:port."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from tests.fakes.openai_ws_upstream import FakeOpenAIWS

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.loglevel = "WARNING"
    config.accesslog = None
    config.websocket_max_message_size = 64 * 1024 * 1024
    asyncio.run(serve(FakeOpenAIWS(token_cost=token_us / 1e6), config))  # type: ignore[arg-type]


def wait_port(host: str, port: int, netns: bool, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=0.5).close()"
    cmd = ["ip", "netns", "exec", NS, PY, "-c", code] if netns else [PY, "-c", code]
    while time.monotonic() < deadline:
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing on {host}:{port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- the agent loop ---------------------------------------------------------------------------

TASK = "Refactor the module below so that every function has a docstring.\n" + (
    "def f(x):\n    return x\n" * 340
)
END = ("response.completed", "response.failed", "response.incomplete", "error")
TOOL_OUTPUT = "line of tool output " * 100  # ~2 KB
TOOLS = [
    {
        "type": "function",
        "name": "run_shell",
        "description": "Run a shell command",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
    }
]


Loop = tuple[list[tuple[float, int]], float]


async def agent_loop(base_url: str, model: str, turns: int, line: DelayLine) -> Loop:
    """One loop of ``turns`` turns: (seconds, bytes towards the provider) per turn, and the
    session's wall time from before the client connects to its last terminal event (the pauses
    that count trailing bytes left out): what an agent waits for, connecting included."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    out: list[tuple[float, int]] = []
    paused = 0.0
    began = time.perf_counter()
    try:
        async with client.responses.connect() as conn:
            prev: str | None = None
            call_id: str | None = None
            for turn in range(1, turns + 1):
                if prev is None:
                    items: list[dict[str, Any]] = [
                        {"type": "message", "role": "developer", "content": "You are a coding agent."},
                        {"type": "message", "role": "user", "content": TASK},
                    ]
                else:
                    items = [
                        {
                            "type": "function_call_output",
                            "call_id": call_id,
                            "output": f"{turn}: {TOOL_OUTPUT}",
                        }
                    ]
                name = "fake" if turn == turns else "fake-tool"
                up0 = line.up_bytes
                start = time.perf_counter()
                extra = {"previous_response_id": prev} if prev else {}
                await conn.response.create(
                    model=f"{model}{name}", input=items, store=False, tools=TOOLS, **extra
                )
                async for event in conn:
                    if event.type in (
                        "response.completed",
                        "response.failed",
                        "response.incomplete",
                        "error",
                    ):
                        break
                elapsed = time.perf_counter() - start
                if event.type != "response.completed":
                    raise RuntimeError(f"turn {turn}: {event.to_json()}")
                pause = time.perf_counter()
                await asyncio.sleep(2 * line.delay + 0.02)  # trailing bytes counted for this turn
                paused += time.perf_counter() - pause
                out.append((elapsed, line.up_bytes - up0))
                prev = event.response.id
                calls = [o for o in event.response.output if o.type == "function_call"]
                call_id = calls[0].call_id if calls else None
            session = time.perf_counter() - began - paused
    finally:
        await client.close()
    return out, session


def proxy_config(tmp: Path, upstream_url: str) -> Path:
    path = tmp / "wsproxy.toml"
    common = f'base_url = "{upstream_url}"\napi_key = "sk-up"\nhttp2_prior_knowledge = true\n'
    path.write_text(
        '[store]\nbackend = "memory"\n'
        f'[providers.upws]\nkind = "openai"\n{common}websocket = "auto"\n'
        f'[providers.uphttp]\nkind = "openai"\n{common}websocket = "never"\n'
    )
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--rate-mbit", type=int, default=100)
    ap.add_argument("--token-us", type=float, default=20.0, help="provider time per input token (µs)")
    ap.add_argument("--no-netns", action="store_true")
    ap.add_argument("--serve-upstream", nargs=2, metavar=("HOST", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream[0], int(args.serve_upstream[1]), args.token_us)
        return

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    up_port = 9771
    netns = not args.no_netns
    if netns:
        netns_up(args.rate_mbit)
    host = NS_IP if netns else "127.0.0.1"
    up_cmd = [
        PY,
        "-m",
        "bench.agent_ws",
        "--token-us",
        str(args.token_us),
        "--serve-upstream",
        host,
        str(up_port),
    ]
    if netns:
        up_cmd = ["ip", "netns", "exec", NS, *up_cmd]
    children: list[subprocess.Popen[bytes]] = []
    line = DelayLine((host, up_port), args.rtt_ms / 2000).start()
    try:
        children.append(subprocess.Popen(up_cmd, env=env, cwd=root))
        wait_port(host, up_port, netns)
        relay_url = f"http://127.0.0.1:{line.port}/v1"
        with tempfile.TemporaryDirectory() as tmp:
            config = proxy_config(Path(tmp), relay_url)
            proxy_port = 9772
            children.append(
                subprocess.Popen(
                    [PY, "-m", "wsproxy", "serve", "--config", str(config), "--port", str(proxy_port),
                     "--log-level", "warning"],
                    env=env,
                    cwd=root,
                )
            )  # fmt: skip
            wait_port("127.0.0.1", proxy_port, False)
            proxy_url = f"http://127.0.0.1:{proxy_port}/v1"
            routes = {
                "direct": (relay_url, ""),
                "wsproxy-ws": (proxy_url, "upws@"),
                "wsproxy-http": (proxy_url, "uphttp@"),
            }
            results: dict[str, list[Loop]] = {k: [] for k in routes}
            for url, prefix in routes.values():  # warm-up: connections, imports
                asyncio.run(agent_loop(url, prefix, 2, line))
            for _ in range(args.reps):
                for name, (url, prefix) in routes.items():
                    results[name].append(asyncio.run(agent_loop(url, prefix, args.turns, line)))
        report(results, args, netns)
    finally:
        for child in reversed(children):
            stop(child)
        line.stop()
        if netns:
            netns_down()


def report(results: dict[str, list[Loop]], args: argparse.Namespace, netns: bool) -> None:
    link = (
        f"netns + tbf {args.rate_mbit} Mbit/s both ways" if netns else "loopback, no rate limit"
    ) + f", {args.rtt_ms:g} ms RTT (delay line)"
    print(f"\nAgent loop: {args.turns} turns x {args.reps} reps; {link}")
    print(f"provider time per input token it must process: {args.token_us:g} µs")
    print("command: python -m bench.agent_ws " + " ".join(sys.argv[1:]) + "\n")
    names = list(results)
    print("turn | " + " | ".join(f"{n} ms | {n} up KB" for n in names))
    print("---|" + "---|" * (2 * len(names)))
    totals = {n: [sum(t for t, _ in loop) for loop, _ in results[n]] for n in names}
    sessions = {n: [session for _, session in results[n]] for n in names}
    for i in range(args.turns):
        cells = []
        for n in names:
            cells.append(f"{statistics.median(loop[i][0] for loop, _ in results[n]) * 1000:.1f}")
            cells.append(f"{statistics.median(loop[i][1] for loop, _ in results[n]) / 1024:.1f}")
        print(f"{i + 1} | " + " | ".join(cells))
    print()
    base = statistics.median(totals["direct"])
    base_session = statistics.median(sessions["direct"])
    for n in names:
        total = statistics.median(totals[n])
        session = statistics.median(sessions[n])
        up = statistics.median(sum(b for _, b in loop) for loop, _ in results[n]) / 1024
        print(
            f"{n:13s} turns {total * 1000:8.1f} ms (median of {args.reps}; runs "
            f"{', '.join(f'{t * 1000:.0f}' for t in totals[n])})  {total / base - 1:+6.1%} vs direct  "
            f"| session incl. connect {session * 1000:8.1f} ms  "
            f"{session / base_session - 1:+6.1%} vs direct  "
            f"| upstream {up:7.1f} KB"
        )


if __name__ == "__main__":
    main()
