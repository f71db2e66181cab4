"""Where the proxy's CPU per delta goes: py-spy samples of the proxy during a saturation run.

``py-spy record --format raw`` (collapsed stacks, idle samples excluded, ``--nonblocking`` so the
proxy is never paused) runs pinned to the harness core while the load generator drives one target
(saturation for CPU per delta, a paced load, short answers for CPU per response).
The samples are summarised three ways:

- by the library the sampled (leaf) frame is in: how much is wsproxy's own code versus uvicorn,
  websockets, Starlette, httpx2/httpcore2/h11/h2/anyio, asyncio;
- by the innermost *wsproxy* frame on the stack: which of wsproxy's functions (with everything it
  calls) is responsible;
- the hottest leaf functions.

Each share is also expressed in microseconds per delta, using the CPU per delta of the same run.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import Child, Cores
from bench.loadgen import Progress, run_load
from bench.streams import model_name
from bench.targets import TARGETS, Lab

_LIBS = (
    ("wsproxy/", "wsproxy"),
    ("httpx2/", "httpx2 + httpcore2 + h11/h2 + anyio (upstream client)"),
    ("httpcore2/", "httpx2 + httpcore2 + h11/h2 + anyio (upstream client)"),
    ("h11/", "httpx2 + httpcore2 + h11/h2 + anyio (upstream client)"),
    ("h2/", "httpx2 + httpcore2 + h11/h2 + anyio (upstream client)"),
    ("hpack/", "httpx2 + httpcore2 + h11/h2 + anyio (upstream client)"),
    ("anyio/", "httpx2 + httpcore2 + h11/h2 + anyio (upstream client)"),
    ("sniffio/", "httpx2 + httpcore2 + h11/h2 + anyio (upstream client)"),
    ("uvicorn/", "uvicorn + websockets (client edge)"),
    ("websockets/", "uvicorn + websockets (client edge)"),
    ("starlette/", "starlette"),
    ("asyncio/", "asyncio / stdlib"),
    ("contextlib.py", "asyncio / stdlib"),
    ("_weakrefset.py", "asyncio / stdlib"),
    ("typing.py", "asyncio / stdlib"),
    ("enum.py", "asyncio / stdlib"),
)


def find_py_spy() -> str | None:
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def _frame_file(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``path/to/file.py``."""
    i = frame.rfind(" (")
    return frame[i + 2 : frame.rfind(":")] if i >= 0 else ""


def _frame_func(frame: str) -> str:
    i = frame.rfind(" (")
    if i < 0:
        return frame or "<native/unknown>"
    return f"{frame[:i]} ({_frame_file(frame)})"


def _lib(frame: str) -> str:
    path = _frame_file(frame)
    for needle, name in _LIBS:
        if needle in path:
            return name
    return "other (native / unattributed)" if not path else "other python"


def summarise(raw: str, cpu_us_per_delta: float | None) -> dict[str, Any]:
    by_lib: Counter[str] = Counter()
    by_ws: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        line = line.rstrip()
        if not line or " " not in line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = stack.split(";")
        total += n
        leaf = frames[-1]
        by_lib[_lib(leaf)] += n
        by_leaf[_frame_func(leaf)] += n
        owner = next((f for f in reversed(frames) if "wsproxy/" in _frame_file(f)), None)
        by_ws[_frame_func(owner) if owner else "(no wsproxy frame: server/event-loop machinery)"] += n

    def table(c: Counter[str], k: int) -> list[dict[str, Any]]:
        rows = []
        for name, n in c.most_common(k):
            share = n / total if total else 0.0
            rows.append(
                {
                    "name": name,
                    "share": share,
                    "us_per_delta": share * cpu_us_per_delta if cpu_us_per_delta else None,
                }
            )
        return rows

    return {
        "samples": total,
        "by_library": table(by_lib, 12),
        "by_wsproxy_frame": table(by_ws, 15),
        "top_leaf": table(by_leaf, 15),
    }


async def profile_target(
    lab: Lab,
    cores: Cores,
    key: str,
    seconds: float,
    out_dir: Path,
    progress: Progress,
    sessions: int = 16,
    tokens: int = 200,
    delay_ms: float = 0,
) -> dict[str, Any] | None:
    """py-spy on the proxy while ``sessions`` sessions stream ``tokens`` deltas ``delay_ms`` apart."""
    spy = find_py_spy()
    if spy is None or lab.proxy is None:
        return None
    target = TARGETS[key]
    tag = f"{key}_{sessions}x{tokens}x{delay_ms:g}ms"
    raw_path = out_dir / f"profile_{tag}.txt"
    load = f"{sessions} sessions, {tokens} tokens, {delay_ms:g} ms apart"
    progress.stage = f"profiling wsproxy: {target.label}, {load}"
    child = Child(
        "py-spy",
        [
            spy,
            "record",
            "--pid",
            str(lab.proxy.pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "250",
            "--format",
            "raw",
            "--nonblocking",
            "-o",
            str(raw_path),
        ],
        lab.tmp / f"profile_{tag}.log",
        cores.harness,
    ).start()
    try:
        stagger = min(1.0, tokens * delay_ms / 1000) if delay_ms else 0.05
        result = await run_load(
            lab.endpoint(target, model_name(tokens, delay_ms)),
            sessions,
            stagger + 0.3,
            seconds,
            stagger,
            lab.server_cpu(target),
            lambda: lab.upstream.cpu_seconds() if lab.upstream else 0.0,
            progress,
        )
        for _ in range(100):
            if not child.alive():
                break
            await asyncio.sleep(0.2)
    finally:
        child.stop()
    progress.done_steps += 1
    if not raw_path.exists():
        return {"target": key, "error": child.log_tail()}
    summary = result.summary()
    prof = summarise(raw_path.read_text(), summary.get("cpu_us_per_delta"))
    prof.update(
        {
            "target": key,
            "label": target.label,
            "load": load,
            "cpu_us_per_delta": summary.get("cpu_us_per_delta"),
            "cpu_us_per_response": summary.get("cpu_us_per_response"),
            "cpu_util": summary.get("cpu_util"),
            "raw": raw_path.name,
        }
    )
    return prof
