"""``bench/RESULTS.md`` and the plots (``bench/results/*.png``) from one run's results.

Tables give medians over repetitions; "added" columns are paired differences against the direct
baseline of the same repetition; every absolute figure sits next to a ratio (against direct, against
nginx, or against the target it is compared with).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bench.targets import TARGETS

PASS, FAIL, NA = "yes", "**no**", "n/a"


def f(x: Any, digits: int = 0, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "-"
    if isinstance(x, (int, float)) and abs(x) >= 10_000:
        return f"{x:,.0f}{unit}"
    return f"{x:.{digits}f}{unit}"


def _row(s: dict[str, Any], key: str) -> dict[str, float]:
    return s.get("summary", {}).get(key, {}) if s else {}


# -- plots --------------------------------------------------------------------------------------


def plot_latency(name: str, title: str, samples: dict[str, np.ndarray], out_dir: Path) -> str | None:
    keys = [k for k, v in samples.items() if len(v)]
    if not keys:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in keys:
        us = np.sort(samples[key]) / 1e3
        us = np.maximum(us, 1.0)
        y = np.arange(1, len(us) + 1) / len(us)
        style = "--" if TARGETS[key].via == "direct" else "-"
        ax1.plot(us, y, style, label=TARGETS[key].label, linewidth=1.2)
        ax2.plot(us, np.maximum(1.0 - y, 1e-6), style, label=TARGETS[key].label, linewidth=1.2)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("per-delta latency, upstream write -> client receive (us)")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("fraction of deltas <= x")
    ax2.set_yscale("log")
    ax2.set_ylabel("fraction of deltas > x (tail)")
    ax2.axhline(0.01, color="grey", linewidth=0.6)
    ax2.axhline(0.001, color="grey", linewidth=0.6)
    ax1.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{name}: {title}")
    fig.tight_layout()
    path = out_dir / f"latency_{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_throughput(results: dict[str, Any], out_dir: Path) -> str | None:
    sc = results.get("scenarios", {})
    paced = [(1, "single"), (50, "c50"), (200, "c200")]
    sat = [(1, "sat-c1"), (4, "sat-c4"), (16, "sat"), (64, "sat-c64")]
    if not any(n in sc for _, n in paced + sat):
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, points, ttl in ((ax1, paced, "paced: 200 tokens, 5 ms apart"), (ax2, sat, "saturation: 0 ms")):
        keys: list[str] = []
        for _, name in points:
            for k in sc.get(name, {}).get("summary", {}):
                if k not in keys and k != "direct-chat":
                    keys.append(k)
        for key in keys:
            xs, ys = [], []
            for c, name in points:
                row = _row(sc.get(name, {}), key)
                if "deltas_per_s" in row:
                    xs.append(c)
                    ys.append(row["deltas_per_s"])
            if xs:
                style = "--" if TARGETS[key].via == "direct" else "-"
                ax.plot(xs, ys, style + "o", label=TARGETS[key].label, markersize=4)
        if ax is ax1:
            ax.plot([1, 200], [200, 40000], ":", color="grey", label="offered (1 delta / 5 ms / session)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel("deltas/s delivered")
        ax.set_title(ttl)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_cpu(results: dict[str, Any], out_dir: Path) -> str | None:
    summ = results.get("scenarios", {}).get("sat", {}).get("summary", {})
    keys = [k for k, v in summ.items() if "cpu_us_per_delta" in v]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(10, 4))
    vals = [summ[k]["cpu_us_per_delta"] for k in keys]
    ax.bar(range(len(keys)), vals, color=["#888" if k == "nginx" else "#3a7" for k in keys])
    ax.set_xticks(range(len(keys)), [TARGETS[k].label for k in keys], rotation=25, ha="right", fontsize=8)
    ax.axhline(15, color="orange", linestyle="--", label="target: passthrough <= 15 us")
    ax.axhline(30, color="red", linestyle=":", label="target: translated <= 30 us")
    ax.set_ylabel("proxy CPU per forwarded delta (us)")
    ax.set_title("CPU per delta at saturation (16 sessions, 200 tokens, 0 ms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "cpu_per_delta.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# -- tables -------------------------------------------------------------------------------------


def scenario_table(res: dict[str, Any]) -> list[str]:
    lines = [
        "| target | deltas/s | vs direct | resp/s | errors | TTFD added p50 / p99 (us) "
        "| delta latency added p50 / p99 / p99.9 (us) | added p50 vs nginx | absolute p50 / p99 (us) "
        "| proxy CPU | CPU us/delta | CPU us/response | harness CPU / late deltas | other procs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in res["summary"].items():
        added = (
            (
                f"{f(r.get('added_lat_p50_us'))} / {f(r.get('added_lat_p99_us'))} / "
                f"{f(r.get('added_lat_p999_us'))}"
            )
            if "added_lat_p50_us" in r
            else "baseline"
        )
        ttfd = (
            f"{f(r.get('added_ttfd_p50_us'))} / {f(r.get('added_ttfd_p99_us'))}"
            if "added_ttfd_p50_us" in r
            else "baseline"
        )
        cpu = f"{f(100 * r['cpu_util'])}%" if "cpu_util" in r else "-"
        lines.append(
            f"| {TARGETS[key].label} | {f(r.get('deltas_per_s'))} | {f(r.get('rate_vs_direct'), 2)} "
            f"| {f(r.get('responses_per_s'), 1)} | {int(r.get('errors', 0))} | {ttfd} | {added} "
            f"| {f(r.get('added_lat_p50_us_vs_nginx'), 1)}x "
            f"| {f(r.get('lat_p50_us'))} / {f(r.get('lat_p99_us'))} "
            f"| {cpu} | {f(r.get('cpu_us_per_delta'), 1)} | {f(r.get('cpu_us_per_response'))} "
            f"| {_harness(res, key, r)} | {f(100 * r.get('foreign_cpu_util', 0))}% |"
        )
    return lines


def _harness(res: dict[str, Any], key: str, row: dict[str, float]) -> str:
    """Harness core busy share, and the share of deltas the upstream wrote > 2 ms late (its own backlog)."""
    reps = res["runs"].get(key, [])
    late = sum(r.get("upstream", {}).get("late_2ms", 0) for r in reps)
    sent = sum(r.get("upstream", {}).get("deltas", 0) for r in reps)
    busy = row.get("harness_cpu_util")
    flag = " **harness-limited**" if (busy or 0) > 0.9 and sent and late / sent > 0.01 else ""
    return f"{f(100 * busy if busy is not None else None)}% / {f(100 * late / sent if sent else 0, 1)}%{flag}"


def targets_table(results: dict[str, Any]) -> list[str]:
    sc = results.get("scenarios", {})
    single, sat, c200 = sc.get("single", {}), sc.get("sat", {}), sc.get("c200", {})
    rows: list[tuple[str, str, str]] = []

    def ok(cond: bool | None) -> str:
        return NA if cond is None else (PASS if cond else FAIL)

    ng = _row(single, "nginx")
    if ng:
        rows.append(
            (
                "nginx adds ~70 us per delta at one session (reference)",
                f"nginx adds {f(ng.get('added_lat_p50_us'))} us p50, {f(ng.get('added_lat_p99_us'))} us p99",
                NA,
            )
        )
    for key in ("ws-sse", "ws-ws", "ws-ws-raw"):
        r = _row(single, key)
        if r and ng:
            ratio = r.get("added_lat_p50_us_vs_nginx")
            rows.append(
                (
                    f"{TARGETS[key].label}: per-delta p50 added within 1.5x nginx (1 session)",
                    f"{f(r.get('added_lat_p50_us'))} us = {f(ratio, 1)}x nginx",
                    ok(ratio is not None and ratio <= 1.5),
                )
            )
        if r:
            p99 = r.get("added_lat_p99_us")
            rows.append(
                (
                    f"{TARGETS[key].label}: per-delta p99 added < 500 us (1 session)",
                    f"{f(p99)} us",
                    ok(p99 is not None and p99 < 500),
                )
            )
    for key, limit in (("ws-ws", 15), ("ws-ws-raw", 15), ("ws-sse", 15), ("ws-ws-cc", 30), ("ws-sse-cc", 30)):
        r = _row(sat, key)
        if r and "cpu_us_per_delta" in r:
            split = results.get("cpu_split", {}).get(key, {})
            extra = (
                (
                    f" (marginal {f(split['cpu_us_per_delta_marginal'], 1)} us/delta + "
                    f"{f(split['cpu_us_per_response_fixed'])} us/response)"
                )
                if split
                else ""
            )
            rows.append(
                (
                    f"{TARGETS[key].label}: CPU per delta at saturation <= {limit} us",
                    f"{f(r['cpu_us_per_delta'], 1)} us{extra}",
                    ok(r["cpu_us_per_delta"] <= limit),
                )
            )
    for h2, h1 in (("ws-ws-h2", "ws-ws"), ("ws-sse-h2", "ws-sse")):
        a, b = _row(sat, h2), _row(sat, h1)
        if a.get("cpu_us_per_delta") and b.get("cpu_us_per_delta"):
            ratio = a["cpu_us_per_delta"] / b["cpu_us_per_delta"]
            rows.append(
                (f"{TARGETS[h2].label}: CPU per delta <= 1.3x HTTP/1.1", f"{f(ratio, 2)}x", ok(ratio <= 1.3))
            )
    ng200 = _row(c200, "nginx")
    for key in ("ws-sse", "ws-ws"):
        r = _row(c200, key)
        if r:
            rate = r.get("rate_vs_direct")
            cpu = r.get("cpu_util")
            # p99 against nginx's: the added figures when nginx adds a measurable amount, else
            # (nginx adds nothing measurable under load) the absolute per-delta p99s.
            ng_added, ng_abs = ng200.get("added_lat_p99_us"), ng200.get("lat_p99_us")
            if ng_added is not None and ng_added > 0:
                vs, basis = r.get("added_lat_p99_us_vs_nginx"), "added"
            elif ng_abs and r.get("lat_p99_us") is not None:
                vs, basis = r["lat_p99_us"] / ng_abs, "absolute"
            else:
                vs, basis = None, "n/a"
            held = rate is not None and rate >= 0.98 and vs is not None and vs <= 2.0
            rows.append(
                (
                    f"{TARGETS[key].label}: 200 sessions at 5 ms on one core, no backlog, "
                    "p99 within 2x nginx",
                    f"{f(rate, 2)}x the direct rate, CPU {f(100 * cpu if cpu is not None else None)}%, "
                    f"p99 added {f(r.get('added_lat_p99_us'))} us, absolute {f(r.get('lat_p99_us'))} us "
                    f"= {f(vs, 1)}x nginx ({basis})",
                    ok(held),
                )
            )
    for key in ("ws-sse", "ws-ws"):
        r = _row(single, key)
        if r:
            t = r.get("added_ttfd_p50_us")
            rows.append(
                (
                    f"{TARGETS[key].label}: time to first delta added < 1 ms p50",
                    f"{f(t)} us",
                    ok(t is not None and t < 1000),
                )
            )
    for idle in results.get("idle", []):
        kb = idle["kb_per_session"]
        rows.append(
            (
                f"{idle['requested']:,} idle WS sessions < 50 KB each "
                f"({'permessage-deflate' if idle['deflate'] else 'no compression'})",
                f"{f(kb, 1)} KB/session, {idle['opened']:,} opened",
                ok(kb < 50 and idle["opened"] >= 10_000) if idle["requested"] >= 10_000 else NA,
            )
        )
    agent = results.get("agent", {}).get("summary")
    if agent:
        ws, best_http = (
            agent["ws"]["total_ms"],
            min(agent["http_chain"]["total_ms"], agent["http_full"]["total_ms"]),
        )
        rows.append(
            (
                "agent loop over WS measurably faster than over HTTP",
                f"WS {f(ws, 1)} ms vs HTTP {f(agent['http_chain']['total_ms'], 1)} ms (chained) / "
                f"{f(agent['http_full']['total_ms'], 1)} ms (full context) "
                f"for {results['agent']['turns']} turns",
                ok(ws < 0.95 * best_http),
            )
        )
    lines = ["| target | measured | met |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return lines


def profile_lines(prof: dict[str, Any]) -> list[str]:
    if "error" in prof:
        return [f"py-spy failed for {prof['target']}: `{prof['error'][:300]}`", ""]
    out = [
        f"**{prof['label']}, {prof.get('load', '')}** ({prof['samples']} samples; in that run "
        f"{f(prof.get('cpu_us_per_delta'), 1)} us CPU per delta, {f(prof.get('cpu_us_per_response'))} us per "
        f"response, proxy CPU {f(100 * (prof.get('cpu_util') or 0))}%; raw stacks: `results/{prof['raw']}`)",
        "",
        "| by library (leaf frame) | share | us/delta |",
        "|---|---:|---:|",
    ]
    out += [
        f"| {r['name']} | {100 * r['share']:.1f}% | {f(r['us_per_delta'], 1)} |" for r in prof["by_library"]
    ]
    out += ["", "| by innermost wsproxy frame (incl. what it calls) | share | us/delta |", "|---|---:|---:|"]
    out += [
        f"| `{r['name']}` | {100 * r['share']:.1f}% | {f(r['us_per_delta'], 1)} |"
        for r in prof["by_wsproxy_frame"][:10]
    ]
    out += ["", "| hottest leaf functions | share |", "|---|---:|"]
    out += [f"| `{r['name']}` | {100 * r['share']:.1f}% |" for r in prof["top_leaf"][:10]]
    return [*out, ""]


def write_report(results: dict[str, Any], samples: dict[str, Any], out: Path, out_dir: Path) -> Path:
    meta = results["meta"]
    m = meta["machine"]
    sc = results.get("scenarios", {})
    plots = []
    for name in ("single", "c50", "c200", "sat"):
        if name in sc and name in samples:
            p = plot_latency(name, sc[name]["params"]["title"], samples[name], out_dir)
            if p:
                plots.append(p)
    tp = plot_throughput(results, out_dir)
    cpu = plot_cpu(results, out_dir)

    lines = [
        "# wsproxy benchmark results",
        "",
        f"Command: `{meta['command']}` (from the repository root, in the project venv). "
        f"Started {meta['started']}, took {meta['seconds']} s. Regenerated by every run; raw figures in "
        "`results/results.json`.",
        "",
        f"Machine: {m['cpu']}, {m['nproc']} CPUs ({m['usable_cpus']} usable), {m['memory']}, "
        f"Linux {m['kernel']}, Python {m['python']}, nginx {m['nginx']}, "
        f"open-files limit {meta['nofile'][0]}. wsproxy under test: {meta.get('proxy_src') or m['git']}.",
        "",
        f"Pinning: {meta['pinning']}. The machine may be shared: before each measured run the harness "
        "waited (up to 10 s, 180 s in all) for other processes to use less than 0.25 core "
        f"(waited {meta.get('quiet_wait_s', 0)} s in all; {meta.get('quiet_gave_up', 0)} runs started "
        "without a quiet machine), and the `other procs` column is the CPU that processes other than "
        "ours used during each measured window (from /proc/stat), in cores.",
        "",
        "How to read: every figure is the median over repetitions. *Added* = target minus the direct "
        "baseline "
        "measured in the same repetition (paired): passthrough targets against the client reading the fake "
        "upstream's Responses SSE directly, translated targets (Chat upstream) against the client "
        "reading the "
        "Chat SSE directly. WebSocket targets are compared with direct **SSE** (the upstream speaks "
        "SSE only). "
        "Per-delta latency = client receive time minus the timestamp the upstream wrote into the delta (one "
        "CLOCK_MONOTONIC). CPU = utime+stime of the proxy process (nginx: master+worker) over the measured "
        "window, divided by deltas or responses delivered in it. `WS` targets negotiate "
        "permessage-deflate as the "
        "`websockets` library does by default (the openai SDK when given a `max_size`); wsproxy "
        "compresses only messages of 1 KB or more by default (`limits.ws_compression_min_bytes`), "
        "so deltas go out uncompressed; `no deflate` does not offer it.",
        "",
        *(
            [
                "**Targets skipped because one short response through them failed before the run:** "
                + "; ".join(f"{TARGETS[k].label}: `{v}`" for k, v in results["preflight_failures"].items()),
                "",
            ]
            if results.get("preflight_failures")
            else []
        ),
        "## Against the targets",
        "",
        *targets_table(results),
        "",
    ]
    for name, res in sc.items():
        p = res["params"]
        lines += [
            f"## {name}: {p['title']}",
            "",
            f"{p['concurrency']} sessions, {p['tokens']} tokens per response, {p['delay_ms']:g} ms between "
            f"deltas, {p['reps']} repetitions of {p['duration']:g} s (after {p['warmup']:g} s warm-up).",
            "",
            *scenario_table(res),
            "",
        ]
        if f"latency_{name}.png" in plots:
            lines += [f"![latency {name}](results/latency_{name}.png)", ""]
    split = results.get("cpu_split")
    if split:
        lines += [
            "## CPU: per delta versus per response",
            "",
            "From `sat` (200 tokens) and `sat10` (10 tokens) at the same concurrency: solving "
            "cpu = a x deltas + b x responses.",
            "",
            "| target | marginal CPU per delta (us) | fixed CPU per response (us) |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {TARGETS[k].label} | {f(v['cpu_us_per_delta_marginal'], 1)} | "
            f"{f(v['cpu_us_per_response_fixed'])} |"
            for k, v in split.items()
        ]
        lines.append("")
    if cpu:
        lines += [f"![cpu per delta](results/{cpu})", ""]
    if tp:
        lines += ["## Throughput versus concurrency", "", f"![throughput](results/{tp})", ""]
    direct = _row(sc.get("sat", {}), "direct")
    if direct:
        best = max(
            (r.get("deltas_per_s", 0) for k, r in sc["sat"]["summary"].items() if k.startswith("ws-")),
            default=0,
        )
        lines += [
            "## Is the load generator the bottleneck?",
            "",
            f"At saturation the harness core (fake upstream + load generator) delivered "
            f"{f(direct['deltas_per_s'])} deltas/s directly, "
            f"{f(direct['deltas_per_s'] / best if best else None, 1)}x the best wsproxy target "
            f"({f(best)} deltas/s), using {f(direct.get('harness_cpu_us_per_delta'), 1)} us"
            " of harness CPU per delta. Upstream timer lateness (> 2 ms) per paced run is in "
            "`results.json` (`upstream.late_2ms`).",
            "",
        ]
        late = []
        for name in ("single", "c50", "c200"):
            for key, reps in sc.get(name, {}).get("runs", {}).items():
                n = sum(r.get("upstream", {}).get("late_2ms", 0) for r in reps)
                d = sum(r.get("upstream", {}).get("deltas", 0) for r in reps)
                if d:
                    late.append(f"{name}/{key}: {n} of {d:,}")
        if late:
            lines += ["Deltas the upstream wrote more than 2 ms late: " + "; ".join(late) + ".", ""]
    if results.get("idle"):
        lines += [
            "## Idle WebSocket sessions",
            "",
            "Fresh proxy per repetition; RSS (from /proc) after 100 warm-up sessions were opened and "
            "closed, then "
            "after N idle sessions (handshake done, no request).",
            "",
            "| variant | requested | opened | KB per session | handshakes/s | proxy CPU while idle |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for idle in results["idle"]:
            fails = {k: v for r in idle["runs"] for k, v in r["failures"].items()}
            lines.append(
                f"| {'permessage-deflate' if idle['deflate'] else 'no compression'} | "
                f"{idle['requested']:,} | {idle['opened']:,}"
                f"{' (failures: ' + str(fails) + ')' if fails else ''}"
                f" | {f(idle['kb_per_session'], 1)} | {f(idle['handshakes_per_s'])} | "
                f"{f(100 * idle['idle_cpu_util'], 1)}% |"
            )
        lines.append("")
    agent = results.get("agent")
    if agent:
        lines += [
            "## Agent loop: WebSocket mode versus HTTP",
            "",
            f"{agent['turns']} tool-calling turns on one connection (each answer: a function call "
            "streamed in about 20 argument deltas, no delay; each tool output "
            f"{agent['tool_output_bytes']} bytes), "
            f"{len(next(iter(agent['runs'].values())))} repetitions.",
            "",
            "| variant | total (ms) | vs WS | turn p50 (ms) | last turn (ms) | errors |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in agent["summary"].values():
            lines.append(
                f"| {r['description']} | {f(r['total_ms'], 1)} | {f(r['vs_ws'], 2)}x | "
                f"{f(r['turn_p50_ms'], 2)} | {f(r['last_turn_ms'], 2)} | {int(r['errors'])} |"
            )
        lines.append("")
    if results.get("profiles"):
        lines += [
            "## Where the CPU per delta goes (py-spy)",
            "",
            "py-spy (`record --format raw --nonblocking`, 250 Hz, idle samples excluded) on the proxy, "
            "pinned to the harness core, during a separate run of the load named in each heading. The "
            "`us/delta` column spreads the run's CPU per delta over the shares. py-spy sees Python frames "
            "only: time in a syscall (a socket write, with the loopback TCP work the kernel does in it) is "
            "charged to the Python function that made it.",
            "",
        ]
        for prof in results["profiles"]:
            lines += profile_lines(prof)
    notes = out / "FINDINGS.md"
    if notes.exists():
        lines += [
            "## Findings and proposed changes",
            "",
            "See [FINDINGS.md](FINDINGS.md) (written by hand from these results and profiles).",
            "",
        ]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    return path
