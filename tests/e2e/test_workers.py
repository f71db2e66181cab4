"""``wsproxy serve --workers 2`` as a real process tree on 127.0.0.1: what must hold across
worker processes.

Every response carries ``x-wsproxy-worker: <id>; pid=<pid>``. A test that needs two workers
opens keep-alive connections until it has one to each (the kernel hands a new connection to
either), then sends the first request through one and the next through the other: nothing
depends on luck. Processes are stopped by PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
import websockets

from tests.fakes.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
SLOW = "word " * 60  # the local model answers ~50 tokens to it: ~2.5 s at 50 ms a token


class WorkersProcess:
    """``python -m wsproxy serve --workers N`` with a SQLite store in ``tmp``."""

    def __init__(
        self, tmp: Path, workers: int = 2, grace: float = 10.0, token_delay: float = 0.05, top: str = ""
    ) -> None:
        self.port = free_port()
        rpm = 4 if "api_keys" in top else 0
        self.log_path = tmp / f"wsproxy-{self.port}.log"
        config = tmp / f"wsproxy-{self.port}.toml"
        config.write_text(
            top + f'[store]\nbackend = "sqlite"\npath = "{tmp / "store.sqlite3"}"\n'
            f"[limits]\nshutdown_grace = {grace}\nrate_limit_rpm = {rpm}\n"
            f'[providers.local]\nkind = "local"\ntoken_delay = {token_delay}\nmodels = ["local"]\n'
        )
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "wsproxy", "serve", "--config", str(config)),
                    *("--port", str(self.port), "--workers", str(workers), "--log-level", "info"),
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.workers = workers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_workers(self, timeout: float = 30.0) -> set[int]:
        """Until every worker has answered (new connections until each pid was seen)."""
        pids: set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(pids) < self.workers:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wsproxy exited at start:\n{self.log()}")
            try:
                r = httpx2.get(self.url + "/readyz", timeout=1)
                if r.status_code == 200:
                    pids.add(worker_pid(r))
            except httpx2.HTTPError:
                time.sleep(0.05)
        assert len(pids) == self.workers, f"saw workers {pids}:\n{self.log()}"
        return pids

    def clients(self, count: int = 2, limit: int = 60) -> list[tuple[int, httpx2.Client]]:
        """One keep-alive client per worker (``count`` workers), each pinned to its worker."""
        found: dict[int, httpx2.Client] = {}
        spare: list[httpx2.Client] = []
        for _ in range(limit):
            client = httpx2.Client(base_url=self.url, timeout=30, limits=httpx2.Limits(max_connections=1))
            pid = worker_pid(client.get("/healthz"))
            if pid in found:
                spare.append(client)
            else:
                found[pid] = client
            if len(found) == count:
                break
        for client in spare:
            client.close()
        assert len(found) == count, f"only reached workers {list(found)} in {limit} connections"
        return list(found.items())

    def worker_pids(self) -> set[int]:
        """The workers (children running ``spawn_main``; multiprocessing's resource tracker is
        a child too)."""
        out = subprocess.run(
            ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(self.proc.pid)],
            capture_output=True,
            text=True,
            check=False,
        )
        return {int(line.split()[0]) for line in out.stdout.splitlines() if "spawn_main" in line}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def worker_pid(response: Any) -> int:
    value = response.headers["x-wsproxy-worker"]
    return int(value.rsplit("pid=", 1)[1])


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkersProcess]:
    proxy = WorkersProcess(tmp_path_factory.mktemp("workers"))
    try:
        proxy.wait_workers()
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def two(pair: WorkersProcess) -> Iterator[list[tuple[int, httpx2.Client]]]:
    clients = pair.clients()
    yield clients
    for _, client in clients:
        client.close()


# -- what is shared ----------------------------------------------------------------------------


def test_one_rate_limit_and_one_metrics_view_across_workers(tmp_path: Path) -> None:
    """``limits.rate_limit_rpm`` = 4 with two workers: 4 requests in a minute in all, not 4 per
    worker; and either worker's /metrics counts the responses both served."""
    proxy = WorkersProcess(tmp_path, top='api_keys = ["sk-w"]\n')
    try:
        proxy.wait_workers()
        (pid_a, a), (pid_b, b) = proxy.clients()
        auth = {"authorization": "Bearer sk-w"}
        left = 60 - time.time() % 60
        if left < 10:  # the counter's window is the minute: keep the test inside one
            time.sleep(left + 0.1)
        body = {"model": "local", "input": "hi"}
        answers = [c.post("/v1/responses", json=body, headers=auth) for c in (a, b, a, b)]
        assert [(worker_pid(r), r.status_code) for r in answers] == [
            (pid_a, 200), (pid_b, 200), (pid_a, 200), (pid_b, 200)
        ]  # fmt: skip
        for c in (a, b):
            refused = c.post("/v1/responses", json=body, headers=auth)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        for c in (a, b):
            text = c.get("/metrics", headers=auth).text
            counted = [line for line in text.splitlines() if line.startswith("wsproxy_responses_total{")]
            assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 4, text
            assert 'wsproxy_rate_limited_total{scope="rate_limit_rpm"} 2.0' in text
        for _, c in ((pid_a, a), (pid_b, b)):
            c.close()
    finally:
        proxy.stop()


def test_many_connections_reach_both_workers_and_see_each_others_responses(pair: WorkersProcess) -> None:
    def one(i: int) -> tuple[int, str, str]:
        with httpx2.Client(base_url=pair.url, timeout=30) as client:
            r = client.post("/v1/responses", json={"model": "local", "input": f"hello {i}"})
            assert r.status_code == 200, r.text
            return worker_pid(r), r.json()["id"], r.json()["output"][0]["content"][0]["text"]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(48)))
    assert {pid for pid, _, _ in results} == pair.worker_pids()
    # Each response, read back through a connection to the OTHER worker, at once.
    (pid_a, a), (_, b) = pair.clients()
    try:
        for pid, rid, text in results:
            reader = b if pid == pid_a else a
            r = reader.get(f"/v1/responses/{rid}")
            assert r.status_code == 200, r.text
            assert worker_pid(r) != pid
            assert r.json()["output"][0]["content"][0]["text"] == text
    finally:
        a.close()
        b.close()


def test_previous_response_id_across_workers(two: list[tuple[int, httpx2.Client]]) -> None:
    (pid_a, a), (pid_b, b) = two
    previous = None
    turns = []
    for turn in range(6):
        client = (a, b)[turn % 2]
        body: dict[str, Any] = {"model": "local", "input": f"turn {turn}"}
        if previous:
            body["previous_response_id"] = previous
        r = client.post("/v1/responses", json=body)
        assert r.status_code == 200, r.text
        assert worker_pid(r) == (pid_a, pid_b)[turn % 2]
        previous = r.json()["id"]
        turns.append(previous)
    # The last response's input holds every turn, written by both workers.
    items = a.get(f"/v1/responses/{previous}/input_items", params={"order": "asc", "limit": 100}).json()
    user_texts = [
        part["text"] for item in items["data"] if item.get("role") == "user" for part in item["content"]
    ]
    assert user_texts == [f"turn {t}" for t in range(6)]


def test_idempotency_key_across_workers(two: list[tuple[int, httpx2.Client]]) -> None:
    (_, a), (_, b) = two
    headers = {"Idempotency-Key": f"key-{time.monotonic_ns()}"}
    body = {"model": "local", "input": "word " * 40}

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda c: c.post("/v1/responses", json=body, headers=headers), [a, b])
    statuses = sorted([first.status_code, second.status_code])
    # One ran; the other, on the other worker, found the key claimed: the same result, or 409
    # while the first still ran.
    assert statuses in ([200, 200], [200, 409]), (first.text, second.text)
    winner = first if first.status_code == 200 else second
    if statuses == [200, 200]:
        assert first.json()["id"] == second.json()["id"]
    else:
        loser = second if winner is first else first
        assert loser.json()["error"]["code"] == "idempotency_key_in_use"
    for client in (a, b):
        again = client.post("/v1/responses", json=body, headers=headers)
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == winner.json()["id"]


def test_background_run_polled_streamed_and_cancelled_through_the_other_worker(
    two: list[tuple[int, httpx2.Client]],
) -> None:
    (pid_a, a), (pid_b, b) = two
    created = a.post("/v1/responses", json={"model": "local", "input": SLOW, "background": True})
    assert created.status_code == 200 and worker_pid(created) == pid_a
    rid = created.json()["id"]
    # Polled through the other worker at once: it exists, and runs.
    polled = b.get(f"/v1/responses/{rid}")
    assert polled.status_code == 200 and worker_pid(polled) == pid_b
    assert polled.json()["id"] == rid and polled.json()["status"] in ("queued", "in_progress")
    # Streamed from the start through the other worker: every event, in order, to the end.
    with b.stream("GET", f"/v1/responses/{rid}", params={"stream": "true"}) as r:
        assert worker_pid(r) == pid_b
        full = sse_events(r.read().decode())
    assert [e["sequence_number"] for e in full] == list(range(len(full)))
    assert full[-1]["type"] == "response.completed"
    text = "".join(e["delta"] for e in full if e["type"] == "response.output_text.delta")
    assert text == full[-1]["response"]["output"][0]["content"][0]["text"]
    # ... and from any point, after the end too.
    n = len(full) // 2
    tail = sse_events(b.get(f"/v1/responses/{rid}", params={"stream": "true", "starting_after": n}).text)
    assert tail == full[n + 1 :]
    done = b.get(f"/v1/responses/{rid}").json()
    assert done["status"] == "completed" and done["id"] == rid
    # Cancelling a finished run through a worker that did not run it: its final state.
    assert b.post(f"/v1/responses/{rid}/cancel").json()["status"] == "completed"

    # Cancelled through the other worker while it runs; the owner's stream ends.
    run = a.post("/v1/responses", json={"model": "local", "input": SLOW * 4, "background": True}).json()
    with ThreadPoolExecutor(1) as pool:
        owner_stream = pool.submit(
            lambda: sse_events(a.get(f"/v1/responses/{run['id']}", params={"stream": "true"}).text)
        )
        time.sleep(0.5)
        start = time.monotonic()
        cancelled = b.post(f"/v1/responses/{run['id']}/cancel")
        assert cancelled.status_code == 200 and worker_pid(cancelled) == pid_b
        assert cancelled.json()["status"] == "cancelled"
        assert time.monotonic() - start < 3.0
        seen = owner_stream.result(timeout=10)
    assert seen and not any(e["type"] == "response.completed" for e in seen)
    assert a.get(f"/v1/responses/{run['id']}").json()["status"] == "cancelled"
    assert b.post(f"/v1/responses/{run['id']}/cancel").json()["status"] == "cancelled"  # idempotent


def test_background_stream_resumes_on_the_other_worker_mid_run(two: list[tuple[int, httpx2.Client]]) -> None:
    (_, a), (_, b) = two
    seen: list[dict[str, Any]] = []
    with a.stream(
        "POST", "/v1/responses", json={"model": "local", "input": SLOW, "background": True, "stream": True}
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if len(seen) == 10:
                    break  # the connection drops; the run goes on in worker A
    rid = seen[0]["response"]["id"]
    resumed = sse_events(
        b.get(
            f"/v1/responses/{rid}", params={"stream": "true", "starting_after": seen[-1]["sequence_number"]}
        ).text
    )
    assert resumed[0]["sequence_number"] == seen[-1]["sequence_number"] + 1
    numbers = [e["sequence_number"] for e in seen + resumed]
    assert numbers == list(range(len(numbers)))
    assert resumed[-1]["type"] == "response.completed"
    assert sum(e["type"] == "response.completed" for e in resumed) == 1


# -- the process model ---------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_every_worker(tmp_path: Path, sig: signal.Signals) -> None:
    proxy = WorkersProcess(tmp_path, grace=10.0)
    clients: list[httpx2.Client] = []
    try:
        workers = proxy.wait_workers()
        (pid_a, a), (pid_b, b) = proxy.clients()
        clients += [a, b]

        def stream(client: httpx2.Client) -> list[dict[str, Any]]:
            body = {"model": "local", "input": SLOW, "stream": True}
            with client.stream("POST", "/v1/responses", json=body) as r:
                return sse_events(r.read().decode())

        async def websocket() -> tuple[list[dict[str, Any]], int | None]:
            events: list[dict[str, Any]] = []
            async with websockets.connect(proxy.url.replace("http", "ws") + "/v1/responses") as ws:
                await ws.send(json.dumps({"type": "response.create", "model": "local", "input": "hi"}))
                async with asyncio.timeout(20):
                    try:
                        while True:
                            events.append(json.loads(await ws.recv()))
                    except websockets.ConnectionClosed:
                        pass
                return events, ws.close_code

        with ThreadPoolExecutor(3) as pool:
            streams = [pool.submit(stream, client) for client in (a, b)]
            ws_session = pool.submit(asyncio.run, websocket())
            time.sleep(0.6)  # both streams are under way
            proxy.proc.send_signal(sig)
            time.sleep(0.3)
            # Readiness is false on both workers (their keep-alive connections still answer).
            assert a.get("/readyz").status_code == 503 and b.get("/readyz").status_code == 503
            refused = b.post("/v1/responses", json={"model": "local", "input": "late"})
            assert refused.status_code == 503
            results = [s.result(timeout=30) for s in streams]
            ws_events, close_code = ws_session.result(timeout=30)
        for events in results:
            assert events[-1]["type"] == "response.completed"  # in-flight streams complete
        assert close_code == 1001
        assert [e["type"] for e in ws_events if e["type"] == "response.completed"] == ["response.completed"]
        assert proxy.proc.wait(30) == 0
        assert not any(alive(pid) for pid in workers | {pid_a, pid_b})
        assert "all workers exited (status 0)" in proxy.log()
    finally:
        for client in clients:
            client.close()
        proxy.stop()


def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    proxy = WorkersProcess(tmp_path, grace=30.0, token_delay=0.2)
    try:
        workers = proxy.wait_workers()
        (_, a), (_, b) = proxy.clients()
        with ThreadPoolExecutor(2) as pool:
            for client in (a, b):  # a response that would take a minute, on each worker
                pool.submit(
                    lambda c: c.post("/v1/responses", json={"model": "local", "input": SLOW * 2}), client
                )
            time.sleep(0.5)
            proxy.proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            proxy.proc.send_signal(signal.SIGINT)
            start = time.monotonic()
            proxy.proc.wait(10)
            assert time.monotonic() - start < 6.0
            for client in (a, b):
                client.close()
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in workers)
    finally:
        proxy.stop()


def test_a_worker_that_dies_is_replaced(tmp_path: Path) -> None:
    proxy = WorkersProcess(tmp_path)
    try:
        first = proxy.wait_workers()
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        now: set[int] = set()
        while time.monotonic() < deadline:
            now = proxy.worker_pids()
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.1)
        assert len(now) == 2 and victim not in now, proxy.log()
        assert proxy.wait_workers() == now  # the replacement serves
        assert "replacing it" in proxy.log()
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(30) == 0
    finally:
        proxy.stop()


def test_workers_refuse_a_store_they_cannot_share(tmp_path: Path) -> None:
    config = tmp_path / "mem.toml"
    config.write_text('[store]\nbackend = "memory"\n')
    out = subprocess.run(
        [sys.executable, "-m", "wsproxy", "serve", "--config", str(config), "--workers", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "workers > 1 needs a store the workers share" in out.stderr
