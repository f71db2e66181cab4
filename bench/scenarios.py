"""The scenarios, and how each is run and summarised.

- load scenarios (:class:`LoadScenario`): every listed target at one concurrency and pace, the
  targets interleaved inside each repetition (so drift hits all of them alike), medians over the
  repetitions. "Added" figures are paired per repetition: target minus its direct baseline in the
  same repetition (passthrough targets against the direct Responses stream, translated ones against
  the direct Chat stream; WebSocket targets against direct *SSE*, since the upstream speaks SSE);
- idle sessions (:func:`run_idle`): proxy RSS growth per open, idle WebSocket session;
- the agent loop (:func:`run_agent`): N tool-calling turns over WebSocket mode versus over HTTP;
- the per-response / per-delta CPU split (:func:`cpu_split`) from two saturation runs that differ
  only in tokens per response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.common import median
from bench.loadgen import Progress, agent_loop, close_all, open_idle, probe, run_load
from bench.streams import model_name
from bench.targets import TARGETS, Lab

ALL = (
    "direct",
    "direct-chat",
    "nginx",
    "ws-sse",
    "ws-ws",
    "ws-ws-raw",
    "ws-sse-h2",
    "ws-ws-h2",
    "ws-sse-cc",
    "ws-ws-cc",
)
SINGLE = tuple(k for k in ALL if k != "ws-sse-h2")
PACED = ("direct", "direct-chat", "nginx", "ws-sse", "ws-ws", "ws-ws-h2", "ws-ws-cc")
CORE = ("direct", "nginx", "ws-sse", "ws-ws")
SHORT = ALL  # short answers (per-response cost): every target
METRICS = ("lat_p50_us", "lat_p99_us", "lat_p999_us", "ttfd_p50_us", "ttfd_p99_us")


@dataclass(frozen=True)
class LoadScenario:
    name: str
    title: str
    concurrency: int
    tokens: int
    delay_ms: float
    targets: tuple[str, ...]
    warmup: float
    duration: float
    reps: int
    prefill_ms: float = 0.0
    group: str = "paced"  # paced | saturation | split

    @property
    def model(self) -> str:
        return model_name(self.tokens, self.delay_ms, self.prefill_ms)

    @property
    def stagger(self) -> float:
        """Spread session starts over one response (paced) so streams are not in lockstep."""
        return min(1.0, self.tokens * self.delay_ms / 1000.0) if self.delay_ms > 0 else 0.05


@dataclass
class Plan:
    loads: list[LoadScenario] = field(default_factory=list)
    idle_sessions: int = 10_000
    idle_reps: int = 3
    agent_turns: int = 20
    agent_reps: int = 5
    profile_seconds: float = 6.0
    # (target, sessions, tokens, delay_ms): saturation per delta, paced per delta, per response
    profiles: tuple[tuple[str, int, int, float], ...] = (
        ("ws-ws", 16, 200, 0),
        ("ws-sse", 16, 200, 0),
        ("ws-ws-cc", 16, 200, 0),
        ("ws-ws", 50, 200, 5),
        ("ws-sse", 16, 10, 0),
    )


def make_plan(quick: bool, only: Iterable[str] | None = None) -> Plan:
    q = quick
    reps = 2 if q else 3
    loads = [
        LoadScenario(
            "single",
            "1 session, 200 tokens, 5 ms apart",
            1,
            200,
            5,
            (*CORE, "direct-chat", "ws-ws-cc", "ws-ws-h2") if q else SINGLE,
            1.1,
            2.0 if q else 3.0,
            reps,
        ),
        LoadScenario(
            "c50", "50 sessions, 200 tokens, 5 ms apart", 50, 200, 5, PACED, 1.2, 2.0 if q else 3.5, reps
        ),
        LoadScenario(
            "c200", "200 sessions, 200 tokens, 5 ms apart", 200, 200, 5, PACED, 1.2, 2.0 if q else 3.5, reps
        ),
        LoadScenario(
            "sat",
            "saturation: 16 sessions, 200 tokens, 0 ms",
            16,
            200,
            0,
            ALL,
            0.5,
            1.5 if q else 3.0,
            reps,
            group="saturation",
        ),
        LoadScenario(
            "sat10",
            "saturation, short answers: 16 sessions, 10 tokens, 0 ms",
            16,
            10,
            0,
            SHORT,
            0.5,
            1.5 if q else 2.0,
            reps,
            group="split",
        ),
    ]
    if not q:
        for c in (1, 4, 64):
            loads.append(
                LoadScenario(
                    f"sat-c{c}",
                    f"saturation: {c} sessions, 200 tokens, 0 ms",
                    c,
                    200,
                    0,
                    CORE,
                    0.5,
                    3.0,
                    2,
                    group="saturation",
                )
            )
    plan = Plan(
        loads=loads,
        idle_sessions=2000 if q else 10_000,
        idle_reps=2 if q else 3,
        agent_reps=3 if q else 5,
        profile_seconds=4.0 if q else 6.0,
    )
    if only:
        wanted = set(only)
        plan.loads = [s for s in plan.loads if s.name in wanted or s.group in wanted]
        if "idle" not in wanted:
            plan.idle_reps = 0
        if "agent" not in wanted:
            plan.agent_reps = 0
        if "profile" not in wanted:
            plan.profiles = ()
    return plan


# -- load scenarios -----------------------------------------------------------------------------


async def preflight(lab: Lab, keys: Iterable[str], progress: Progress) -> dict[str, str]:
    """One short response through every target; the ones that fail are skipped (and reported)."""
    broken: dict[str, str] = {}
    for key in dict.fromkeys(keys):
        if not lab.available(key):
            continue
        progress.stage = f"preflight: {TARGETS[key].label}"
        error = await probe(lab.endpoint(TARGETS[key], model_name(3, 0)))
        if error is not None:
            broken[key] = error
            lab.broken[key] = error
    return broken


async def run_load_scenario(
    lab: Lab, sc: LoadScenario, progress: Progress
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (the JSON-able result, the pooled latency samples per target for the plots)."""
    keys = [k for k in sc.targets if lab.available(k)]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    samples: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for rep in range(sc.reps):
        order = keys[rep % len(keys) :] + keys[: rep % len(keys)]  # rotate: no target always goes first
        for key in order:
            target = TARGETS[key]
            progress.stage = (
                f"{sc.name} rep {rep + 1}/{sc.reps}: {target.label} (waiting for a quiet machine)"
            )
            await lab.quiet.wait(lab.pids())
            progress.stage = f"{sc.name} rep {rep + 1}/{sc.reps}: {target.label}"
            lab.upstream_stats(reset=True)
            result = await run_load(
                lab.endpoint(target, sc.model),
                sc.concurrency,
                sc.warmup,
                sc.duration,
                sc.stagger,
                lab.server_cpu(target),
                lambda: lab.upstream.cpu_seconds() if lab.upstream else 0.0,
                progress,
            )
            summary = result.summary()
            up = summary["upstream"] = lab.upstream_stats()
            summary["upstream_conns_per_request"] = up["connections"] / max(1, up["requests"])
            runs[key].append(summary)
            samples[key].append(result.lat)
            progress.done_steps += 1
            await asyncio.sleep(0.2)
    return {"params": sc.__dict__, "runs": runs, "summary": summarise(runs)}, {
        k: np.concatenate(v) if v else np.array([]) for k, v in samples.items()
    }


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Medians per target, paired 'added' figures against the baseline, ratios against nginx."""
    out: dict[str, dict[str, float]] = {}
    for key, reps in runs.items():
        row: dict[str, float] = {}
        for metric in reps[0]:
            values = [r[metric] for r in reps if isinstance(r.get(metric), (int, float))]
            if values:
                row[metric] = median(values)
        row["errors"] = float(sum(r["errors"] for r in reps))
        row["reps"] = float(len(reps))
        base = runs.get(TARGETS[key].baseline)
        if base is not None and key != TARGETS[key].baseline:
            for metric in METRICS:
                paired = [r[metric] - b[metric] for r, b in zip(reps, base, strict=False)]
                row[f"added_{metric}"] = median(paired)
            row["rate_vs_direct"] = median(
                [
                    r["deltas_per_s"] / b["deltas_per_s"]
                    for r, b in zip(reps, base, strict=False)
                    if b["deltas_per_s"]
                ]
            )
        out[key] = row
    ng = out.get("nginx")
    if ng is not None:
        for key, row in out.items():
            if key == "nginx":
                continue
            for metric in ("lat_p50_us", "lat_p99_us", "lat_p999_us"):
                a, b = row.get(f"added_{metric}"), ng.get(f"added_{metric}")
                if a is not None and b and b > 0:
                    row[f"added_{metric}_vs_nginx"] = a / b
            if row.get("cpu_us_per_delta") and ng.get("cpu_us_per_delta"):
                row["cpu_vs_nginx"] = row["cpu_us_per_delta"] / ng["cpu_us_per_delta"]
    return out


def cpu_split(long: dict[str, Any], short: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Solve cpu = a * deltas + b * responses from two saturation runs (200 and 10 tokens):
    ``a`` is the marginal CPU per forwarded delta, ``b`` the fixed CPU per response."""
    out = {}
    for key, row in long["summary"].items():
        other = short["summary"].get(key)
        if other is None or "cpu_us_per_response" not in row or "cpu_us_per_response" not in other:
            continue
        d1 = row["deltas_per_s"] / max(row["responses_per_s"], 1e-9)  # deltas per response
        d2 = other["deltas_per_s"] / max(other["responses_per_s"], 1e-9)
        c1, c2 = row["cpu_us_per_response"], other["cpu_us_per_response"]
        if abs(d1 - d2) < 1:
            continue
        a = (c1 - c2) / (d1 - d2)
        out[key] = {"cpu_us_per_delta_marginal": a, "cpu_us_per_response_fixed": c2 - a * d2}
    return out


# -- idle sessions ------------------------------------------------------------------------------


async def run_idle(lab: Lab, n: int, reps: int, deflate: bool, progress: Progress) -> dict[str, Any]:
    """Fresh proxy per repetition; RSS after a short warm-up, then after ``n`` idle sessions."""
    runs = []
    target = TARGETS["ws-ws" if deflate else "ws-ws-raw"]
    for rep in range(reps):
        progress.stage = f"idle sessions rep {rep + 1}/{reps} ({'deflate' if deflate else 'no deflate'})"
        lab.restart_proxy()
        assert lab.proxy is not None
        ep = lab.endpoint(target, "bench-1-0-0")
        warm, _ = await open_idle(ep, 100)
        await close_all(warm, settle=1.5)
        rss0 = lab.proxy.rss_bytes()
        t0 = time.monotonic()
        conns, failures = await open_idle(ep, n, progress=progress)
        open_s = time.monotonic() - t0
        await asyncio.sleep(2.0)
        rss1 = lab.proxy.rss_bytes()
        cpu0 = lab.proxy.cpu_seconds()
        await asyncio.sleep(3.0)
        idle_cpu = (lab.proxy.cpu_seconds() - cpu0) / 3.0
        alive = sum(1 for c in conns if not c.closed)
        runs.append(
            {
                "opened": len(conns),
                "alive": alive,
                "failures": failures,
                "open_seconds": open_s,
                "handshakes_per_s": len(conns) / open_s if open_s else 0.0,
                "rss_before_mb": rss0 / 2**20,
                "rss_after_mb": rss1 / 2**20,
                "kb_per_session": (rss1 - rss0) / max(1, len(conns)) / 1024,
                "idle_cpu_util": idle_cpu,
            }
        )
        progress.stage = "closing idle sessions"
        await close_all(conns, settle=2.0)
        progress.done_steps += 1
    lab.restart_proxy()
    return {
        "requested": n,
        "deflate": deflate,
        "runs": runs,
        "kb_per_session": median([r["kb_per_session"] for r in runs]),
        "opened": min(r["opened"] for r in runs) if runs else 0,
        "handshakes_per_s": median([r["handshakes_per_s"] for r in runs]),
        "idle_cpu_util": median([r["idle_cpu_util"] for r in runs]),
    }


# -- agent loop ---------------------------------------------------------------------------------

AGENT_VARIANTS = (
    ("ws", "ws-ws", "WebSocket mode: previous_response_id + new tool output, store=false"),
    ("http_chain", "ws-sse", "HTTP SSE: previous_response_id + new tool output, store=true"),
    ("http_full", "ws-sse", "HTTP SSE: whole conversation resent, store=false"),
    ("direct_full", "direct", "direct to the upstream, whole conversation resent (reference)"),
)


async def run_agent(
    lab: Lab, turns: int, reps: int, progress: Progress, tool_output_bytes: int = 2048
) -> dict[str, Any]:
    model = model_name(20, 0, 0, tool=True)
    runs: dict[str, list[dict[str, Any]]] = {v[0]: [] for v in AGENT_VARIANTS}
    for rep in range(reps):
        for mode, key, _ in AGENT_VARIANTS:
            progress.stage = f"agent loop rep {rep + 1}/{reps}: {mode}"
            ep = lab.endpoint(TARGETS[key], model)
            result = await agent_loop(
                ep, "http_full" if mode == "direct_full" else mode, turns, tool_output_bytes
            )
            runs[mode].append(result)
            progress.done_steps += 1
    summary = {}
    for mode, _, desc in AGENT_VARIANTS:
        rs = runs[mode]
        summary[mode] = {
            "description": desc,
            "total_ms": median([r["total_us"] / 1e3 for r in rs]),
            "turn_p50_ms": median([float(np.median(r["per_turn_us"])) / 1e3 for r in rs]),
            "last_turn_ms": median([r["per_turn_us"][-1] / 1e3 for r in rs]),
            "errors": float(sum(r["errors"] for r in rs)),
        }
    ws = summary["ws"]["total_ms"]
    for mode in summary:
        summary[mode]["vs_ws"] = summary[mode]["total_ms"] / ws if ws else float("nan")
    return {
        "turns": turns,
        "tool_output_bytes": tool_output_bytes,
        "model": model,
        "runs": runs,
        "summary": summary,
    }
