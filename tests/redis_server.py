"""Fixtures for the store tests: a real ``redis-server`` on 127.0.0.1, started once per session.

The server is a child process of the test run, started on a free port with persistence off
(``--save "" --appendonly no``) and stopped by its PID at session end. If ``redis-server`` is not
on PATH the fixture FAILS (it does not skip): CI installs it, and a silently skipped backend is an
untested backend.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_START_ATTEMPTS = 3
_START_DEADLINE_S = 10.0
_STOP_DEADLINE_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()  # SIGTERM to this PID only
    try:
        proc.wait(timeout=_STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=_STOP_DEADLINE_S)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail(
            "redis-server is not on PATH; install it (apt-get install redis-server) to test RedisStore"
        )
    workdir: Path = tmp_path_factory.mktemp("redis")
    last_error = "not started"
    # The free port can be taken between _free_port() and the bind; retry a few times.
    for _ in range(_START_ATTEMPTS):
        port = _free_port()
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                # A file, not a pipe: a pipe nobody drains could fill up and stall the server.
                "--logfile",
                str(workdir / f"redis-{port}.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + _START_DEADLINE_S
        while time.monotonic() < deadline and proc.poll() is None and not _pings(port):
            time.sleep(0.05)
        if proc.poll() is None and _pings(port):
            try:
                yield f"redis://127.0.0.1:{port}/0"
            finally:
                _stop(proc)
            return
        _stop(proc)
        log = workdir / f"redis-{port}.log"
        tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
        last_error = f"exit code {proc.returncode}: {tail.strip()}"
    pytest.fail(f"redis-server did not answer PING after {_START_ATTEMPTS} attempts ({last_error})")
