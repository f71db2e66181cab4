"""``python -m bench.workers [--quick]``: ``wsproxy serve --workers 2`` against ``--workers 1`` at
saturation, on the machine's cores.

Nothing is pinned (the point is to let the workers use more than one core), so the fake upstream
and this load generator compete with the proxy for the same cores: on a 2-core machine the figures
say how much of the harness's share a second worker takes over, not what two dedicated cores
would give. Every run: closed-loop sessions over persistent connections (the bench harness), a
warm-up, then a measured window; throughput in deltas and responses per second, delta latency
percentiles, the proxy's CPU (parent and workers) and what other processes used meanwhile.
The store is SQLite (``--workers 2`` refuses the memory store); the responses are not stored
(``store: false``), as in every bench scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import REPO_DIR, Child, QuietGate, free_port, machine_info, raise_nofile, wait_for_port
from bench.loadgen import run_load
from bench.run import _loop_factory
from bench.streams import model_name
from bench.targets import Endpoint, _proxy_config

SESSIONS = 64
TOKENS = 200


def start_proxy(tmp: Path, upstream_port: int, workers: int) -> tuple[Child, int]:
    port = free_port()
    cfg = tmp / f"wsproxy-{workers}.toml"
    config = _proxy_config(upstream_port).replace(
        '[store]\nbackend = "memory"', f'[store]\nbackend = "sqlite"\npath = "{tmp}/store-{workers}.sqlite3"'
    )
    cfg.write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSPROXY_", "OPENAI_", "ANTHROPIC_"))}
    env["PYTHONPATH"] = str(REPO_DIR)
    argv = [sys.executable, "-m", "wsproxy", "serve", "--config", str(cfg), "--port", str(port)]
    child = Child(
        f"wsproxy-{workers}",
        [*argv, "--workers", str(workers)],
        tmp / f"wsproxy-{workers}.log",
        cwd=REPO_DIR,
        env=env,
    ).start()
    wait_for_port(port, child)
    # Every worker up: new connections until each has answered (bounded).
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(seen) < workers:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            seen.add(r.headers.get("x-wsproxy-worker") or "single")
        time.sleep(0.02)
    return child, port


async def measure(
    port: int, proxy: Child, upstream: Child, transport: str, warmup: float, duration: float, gate: QuietGate
) -> dict[str, Any]:
    await gate.wait([upstream.pid, proxy.pid])
    ep = Endpoint(port, transport, "/v1/responses", f"oa1@{model_name(TOKENS, 0)}", chat=False)
    result = await run_load(
        ep,
        SESSIONS,
        warmup,
        duration,
        0.05,
        lambda: proxy.cpu_seconds(tree=True),
        upstream.cpu_seconds,
    )
    return result.summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, shorter windows")
    args = parser.parse_args(argv)
    raise_nofile(65536)
    reps, warmup, duration = (1, 1.0, 3.0) if args.quick else (3, 1.5, 6.0)
    rows: list[tuple[str, int, dict[str, Any]]] = []
    gate = QuietGate()
    with tempfile.TemporaryDirectory(prefix="wsproxy-bench-workers-") as tmp_dir:
        tmp = Path(tmp_dir)
        upstream_port = free_port()
        upstream = Child(
            "upstream",
            [sys.executable, "-m", "bench.upstream", "--port", str(upstream_port)],
            tmp / "upstream.log",
            cwd=REPO_DIR,
        ).start()
        try:
            wait_for_port(upstream_port, upstream)
            for _ in range(reps):
                for workers in (1, 2):
                    proxy, port = start_proxy(tmp, upstream_port, workers)
                    try:
                        for transport in ("sse", "ws"):
                            run = measure(port, proxy, upstream, transport, warmup, duration, gate)
                            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                                summary = runner.run(run)
                            rows.append((transport, workers, summary))
                            print(
                                f"{transport} workers={workers}: {summary['deltas_per_s']:.0f} deltas/s",
                                file=sys.stderr,
                            )
                    finally:
                        proxy.stop()
        finally:
            upstream.stop()
    print(report(rows, args, machine_info()))
    return 0


def report(
    rows: list[tuple[str, int, dict[str, Any]]], args: argparse.Namespace, machine: dict[str, str]
) -> str:
    def med(transport: str, workers: int, key: str) -> float:
        values = sorted(s[key] for t, w, s in rows if t == transport and w == workers)
        return values[len(values) // 2] if values else float("nan")

    lines = [
        f"`python -m bench.workers{' --quick' if args.quick else ''}`: {SESSIONS} sessions, "
        f"{TOKENS} tokens at 0 ms, medians of the repetitions; cores: {os.cpu_count()} "
        f"({machine.get('cpu', '?')}), nothing pinned.",
        "",
        "| transport | workers | deltas/s | responses/s | delta p50 us | delta p99 us | proxy CPU (cores) "
        "| harness CPU (cores) | other procs (cores) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for transport in ("sse", "ws"):
        for workers in (1, 2):
            lines.append(
                f"| {transport} | {workers} | {med(transport, workers, 'deltas_per_s'):.0f} "
                f"| {med(transport, workers, 'responses_per_s'):.1f} "
                f"| {med(transport, workers, 'lat_p50_us'):.0f} "
                f"| {med(transport, workers, 'lat_p99_us'):.0f} "
                f"| {med(transport, workers, 'cpu_util'):.2f} "
                f"| {med(transport, workers, 'harness_cpu_util'):.2f} "
                f"| {med(transport, workers, 'foreign_cpu_util'):.2f} "
                f"| {med(transport, workers, 'errors'):.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
