"""Shared helpers: child processes (started, pinned and stopped by PID), /proc readings, ports,
percentiles and machine facts.

Nothing here measures by itself; the scenarios use these to read a process's CPU time
(``utime + stime`` from ``/proc/PID/stat``) and resident memory (``VmRSS``) before and after a run.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile(want: int = 65536) -> tuple[int, int]:
    """Raise the soft open-files limit as far as the hard limit allows; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, want), hard) if hard != resource.RLIM_INFINITY else max(soft, want)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@dataclass(frozen=True)
class Cores:
    """Which cores the proxy under test and the harness (upstream + load generator) run on."""

    proxy: frozenset[int] | None
    harness: frozenset[int] | None

    @classmethod
    def plan(cls, pin: bool = True) -> Cores:
        cpus = sorted(os.sched_getaffinity(0))
        if not pin or len(cpus) < 2:
            return cls(None, None)
        return cls(frozenset({cpus[0]}), frozenset(cpus[1:2]))

    def describe(self) -> str:
        if self.proxy is None or self.harness is None:
            return "not pinned (fewer than 2 cores available, or --no-pin)"
        return (
            f"proxy under test (wsproxy / nginx) on core {sorted(self.proxy)}, "
            f"fake upstream + load generator on core {sorted(self.harness)}"
        )


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        raw = fh.read()
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (scans /proc; used for nginx's worker)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(b")") + 2 :].split()[1])
        if ppid == pid:
            out.append(int(entry))
    return out


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in [pid, *children_of(pid)]:
        with contextlib.suppress(OSError):
            total += proc_cpu_seconds(p)
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    with open("/proc/stat", "rb") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, steal / CLK_TCK


class QuietGate:
    """Before a measured run, wait (bounded) until processes other than ours leave the machine
    alone: on a shared machine, other jobs' CPU bursts otherwise land in one target's window and
    not in the next one's. ``budget`` caps the waiting over the whole benchmark."""

    def __init__(self, threshold: float = 0.25, per_run: float = 10.0, budget: float = 180.0) -> None:
        self.threshold = threshold  # cores used by others
        self.per_run = per_run
        self.budget = budget
        self.waited = 0.0
        self.gave_up = 0

    async def wait(self, ours: list[int]) -> float:
        """Seconds waited; ``ours`` are the PIDs whose CPU is not 'other'."""
        import asyncio

        start = time.monotonic()
        while True:
            t0, b0 = time.monotonic(), machine_cpu_seconds()[0]
            c0 = sum(_safe_cpu(p) for p in ours) + _self_cpu()
            await asyncio.sleep(0.5)
            busy = machine_cpu_seconds()[0] - b0 - (sum(_safe_cpu(p) for p in ours) + _self_cpu() - c0)
            other = busy / (time.monotonic() - t0)
            spent = time.monotonic() - start
            if other <= self.threshold:
                break
            if spent >= self.per_run or self.waited + spent >= self.budget:
                self.gave_up += 1
                break
        self.waited += time.monotonic() - start
        return time.monotonic() - start


def _safe_cpu(pid: int) -> float:
    try:
        return tree_cpu_seconds(pid)
    except OSError:
        return 0.0


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as fh:
        return int(fh.read().split()[1]) * PAGE


class Child:
    """A child process we started: pinned with ``sched_setaffinity``, stopped by its PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        cores: frozenset[int] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cores = cores
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        cores = self.cores

        def pin() -> None:
            if cores:
                os.sched_setaffinity(0, cores)

        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=pin,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self, tree: bool = False) -> float:
        return tree_cpu_seconds(self.pid) if tree else proc_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return proc_rss_bytes(self.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signal our child by PID, wait (bounded), then SIGKILL it if it is still there."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def wait_for_port(port: int, child: Child | None = None, timeout: float = 20.0) -> None:
    """Until 127.0.0.1:port accepts a connection (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.log_tail()}")
        with socket.socket() as s:
            s.settimeout(0.5)
            try:
                s.connect(("127.0.0.1", port))
                return
            except OSError:
                time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def percentiles(values: Sequence[int] | np.ndarray, qs: Sequence[float] = (50, 99, 99.9)) -> list[float]:
    if len(values) == 0:
        return [float("nan")] * len(qs)
    arr = np.asarray(values, dtype=np.float64)
    return [float(x) for x in np.percentile(arr, qs)]


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return float(np.median(vals)) if vals else float("nan")


def machine_info() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    nginx = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=5)
        nginx = (out.stderr or out.stdout).strip().replace("nginx version: ", "")
    rev = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=REPO_DIR
        ).stdout.strip()
    return {
        "cpu": model,
        "nproc": str(os.cpu_count()),
        "usable_cpus": str(len(os.sched_getaffinity(0))),
        "memory": mem,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "nginx": nginx or "not found",
        "git": rev or "unknown",
        "nofile": "/".join(str(x) for x in resource.getrlimit(resource.RLIMIT_NOFILE)),
    }
