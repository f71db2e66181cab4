"""``python -m bench.run``: run the benchmark and write ``bench/RESULTS.md`` and ``bench/results/``.

    python -m bench.run                  full run (about 12-15 minutes)
    python -m bench.run --quick          a couple of minutes, fewer repetitions and targets
    python -m bench.run --scenario c200 --scenario idle      only these (names: single c50 c200 sat
                                         sat10 sat-c1 sat-c4 sat-c64 saturation idle agent profile)

The proxy under test (wsproxy, and nginx as the reference proxy) is pinned to one core, the fake
upstream and this load generator to another, when the machine has two or more. Every child process
is started by this script and stopped by its PID in ``finally``. The load generator's own capacity
is measured in the same run (the ``direct`` target at saturation) and reported next to the proxy's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import BENCH_DIR, REPO_DIR, Cores, machine_info, raise_nofile
from bench.loadgen import Progress
from bench.profile import profile_target
from bench.scenarios import Plan, cpu_split, make_plan, preflight, run_agent, run_idle, run_load_scenario
from bench.targets import Lab


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def count_steps(plan: Plan, lab: Lab) -> int:
    steps = sum(s.reps * sum(1 for k in s.targets if lab.available(k)) for s in plan.loads)
    steps += 2 * plan.idle_reps + 4 * plan.agent_reps + len(plan.profiles)
    return steps


async def show_progress(progress: Progress, stop: asyncio.Event) -> None:
    """One status line, rewritten in place on a terminal, every few seconds otherwise."""
    tty = sys.stderr.isatty()
    interval = 0.5 if tty else 5.0
    while not stop.is_set():
        rec = progress.recorder
        live = f" | deltas {rec.seen_deltas:,} errors {rec.errors}" if rec is not None else ""
        pct = 100 * progress.done_steps / max(1, progress.total_steps)
        line = (
            f"[{time.monotonic() - progress.started:6.0f}s {pct:3.0f}% "
            f"{progress.done_steps}/{progress.total_steps}] {progress.stage}{live}"
        )
        sys.stderr.write(("\r\033[K" + line[:160]) if tty else line + "\n")
        sys.stderr.flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stop.wait()
    if tty:
        sys.stderr.write("\n")


async def run_plan(plan: Plan, lab: Lab, cores: Cores, out_dir: Path) -> dict[str, Any]:
    progress = Progress(total_steps=count_steps(plan, lab))
    stop = asyncio.Event()
    display = asyncio.create_task(show_progress(progress, stop))
    results: dict[str, Any] = {"scenarios": {}, "samples": {}}
    try:
        keys = [k for s in plan.loads for k in s.targets] + ["ws-ws", "ws-sse", "direct"]
        results["preflight_failures"] = await preflight(lab, keys, progress)
        progress.total_steps = count_steps(plan, lab)
        for sc in plan.loads:
            res, samples = await run_load_scenario(lab, sc, progress)
            results["scenarios"][sc.name] = res
            results["samples"][sc.name] = samples
        if "sat" in results["scenarios"] and "sat10" in results["scenarios"]:
            results["cpu_split"] = cpu_split(results["scenarios"]["sat"], results["scenarios"]["sat10"])
        if plan.agent_reps:
            results["agent"] = await run_agent(lab, plan.agent_turns, plan.agent_reps, progress)
        if plan.profiles:
            results["profiles"] = []
            for key, sessions, tokens, delay_ms in plan.profiles:
                prof = await profile_target(
                    lab, cores, key, plan.profile_seconds, out_dir, progress, sessions, tokens, delay_ms
                )
                if prof is not None:
                    results["profiles"].append(prof)
        if plan.idle_reps:
            results["idle"] = [
                await run_idle(lab, plan.idle_sessions, plan.idle_reps, True, progress),
                await run_idle(lab, plan.idle_sessions, plan.idle_reps, False, progress),
            ]
    finally:
        stop.set()
        await display
    return results


def _git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, timeout=30, check=True)
    return out.stdout.decode().strip()


def proxy_source(args: argparse.Namespace, tmp: Path) -> tuple[Path | None, str]:
    """Where the proxy under test is imported from, and how to say so in the results."""
    if args.proxy_src:
        return Path(args.proxy_src).resolve(), f"source tree {args.proxy_src}"
    if args.proxy_rev:
        src = tmp / "src"
        src.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO_DIR), "archive", args.proxy_rev, "wsproxy"],
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(src, filter="data")
        return src, f"git {_git('rev-parse', '--short', args.proxy_rev)} (`git archive`, committed code only)"
    try:
        dirty = bool(_git("status", "--porcelain", "--", "wsproxy"))
        head = _git("rev-parse", "--short", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None, "working tree"
    return None, f"working tree at git {head}" + (" with uncommitted changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a couple of minutes: fewer reps and targets")
    parser.add_argument("--scenario", action="append", help="run only this scenario (repeatable)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx reference proxy")
    parser.add_argument("--out", default=str(BENCH_DIR), help="where RESULTS.md and results/ go")
    parser.add_argument("--proxy-src", help="run wsproxy from this source tree (A/B a patch)")
    parser.add_argument("--proxy-rev", help="run wsproxy as committed at this git revision (e.g. HEAD)")
    args = parser.parse_args(argv)

    soft, hard = raise_nofile(65536)
    machine = machine_info()  # before pinning this process
    cores = Cores.plan(not args.no_pin)
    if cores.harness:
        os.sched_setaffinity(0, cores.harness)
    out = Path(args.out)
    out_dir = out / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = make_plan(args.quick, args.scenario)
    if soft < plan.idle_sessions + 1000:  # each side (proxy, load generator) holds one fd per session
        print(f"open-files limit is {soft}: idle sessions capped at {soft - 1000}", file=sys.stderr)
        plan.idle_sessions = max(100, soft - 1000)
    command = "python -m bench.run" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="wsproxy-bench-") as tmp:
        src, proxy_desc = proxy_source(args, Path(tmp))
        lab = Lab(Path(tmp), cores, use_nginx=not args.no_nginx, proxy_src=src)
        try:
            lab.start()
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                results = runner.run(run_plan(plan, lab, cores, out_dir))
        finally:
            lab.stop()
    results["meta"] = {
        "command": command,
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "seconds": round(time.time() - started),
        "machine": machine,
        "pinning": cores.describe(),
        "nofile": [soft, hard],
        "proxy_src": proxy_desc,
        "quiet_wait_s": round(lab.quiet.waited, 1),
        "quiet_gave_up": lab.quiet.gave_up,
    }
    from bench.report import write_report

    samples = results.pop("samples")
    (out_dir / "results.json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    path = write_report(results, samples, out, out_dir)
    print(f"wrote {path} and {out_dir}/ in {results['meta']['seconds']}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
