"""Stored responses survive a restart and a crash of a real wsproxy process (SQLite store).

The proxy runs as ``python -m wsproxy serve``; clients complete responses while it runs; it is
killed with SIGKILL in the middle of the load, restarted on the same file, and every response a
client saw complete must be retrievable, intact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2

from tests.fakes.servers import free_port, wait_port


def start_proxy(config: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wsproxy",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_port(port, timeout=20)
    except TimeoutError:
        proc.kill()
        raise
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    if proc.stderr is not None:
        proc.stderr.close()


def test_stored_responses_survive_kill_9_and_restart(tmp_path: Path) -> None:
    config = tmp_path / "wsproxy.toml"
    config.write_text(
        f'[store]\nbackend = "sqlite"\npath = "{tmp_path / "store.sqlite3"}"\n'
        '[providers.local]\nkind = "local"\ntoken_delay = 0.0005\n'
    )
    port = free_port()
    completed: dict[str, str] = {}
    lock = threading.Lock()
    stop_flag = threading.Event()

    def worker(n: int) -> None:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for i in range(10_000):
                if stop_flag.is_set():
                    return
                try:
                    r = http.post(
                        "/v1/responses", json={"model": "local", "input": f"worker {n} message {i}"}
                    )
                except httpx2.HTTPError:
                    return  # the server died under us: what it acknowledged before counts
                if r.status_code == 200:
                    body = r.json()
                    with lock:
                        completed[body["id"]] = body["output"][0]["content"][0]["text"]

    for round_ in range(3):
        proc = start_proxy(config, port)
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        before = len(completed)
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(completed) < before + 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop(proc, signal.SIGKILL)  # no chance to flush or close anything
        stop_flag.set()
        for t in threads:
            t.join(timeout=15)
        stop_flag.clear()
        assert len(completed) >= before + 40, f"round {round_}: only {len(completed) - before} completed"

    proc = start_proxy(config, port)
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for rid, text in completed.items():
                r = http.get(f"/v1/responses/{rid}")
                assert r.status_code == 200, (rid, r.text)
                assert r.json()["output"][0]["content"][0]["text"] == text
            # And the file still takes writes after all that.
            assert http.post("/v1/responses", json={"model": "local", "input": "after"}).status_code == 200
    finally:
        stop(proc)
