"""``wsproxy serve --workers N``: one supervisor process and N workers serving one port.

Each worker is a whole wsproxy (its own event loop, runtime, upstream pools and store
connection); what they share is the listening socket and the store (SQLite file or Redis), which
is why ``workers > 1`` refuses the memory store.

The socket is bound once, here in the parent, and handed to every worker (as uvicorn's own
multiprocess supervisor does), rather than each worker binding the port with SO_REUSEPORT:

- a connection waiting in the accept queue is never lost: with SO_REUSEPORT every worker has its
  own queue, and the connections the kernel hashed to a worker that dies are reset with it;
- the port stays bound while a dead worker is replaced, and no other process of the same user can
  bind it alongside us (SO_REUSEPORT lets it, and it would receive a share of the connections);
- the price is balance: the kernel wakes the workers in turn but a worker accepts whatever is
  queued, so a short burst can land on one of them. Under sustained load (what ``--workers`` is
  for) busy workers accept less often and the load evens out; see bench/ for the measurement.

Shutdown keeps the single-process semantics. SIGTERM or SIGINT to the parent is passed on as
SIGTERM to every worker, which drains (readiness false, in-flight responses get
``limits.shutdown_grace``, WebSockets close with 1001) and exits; the parent exits 0 when they all
have. A second signal to the parent sends SIGQUIT, which a worker takes as "exit now"; workers
that are still there after ``FORCE_WAIT`` seconds are killed.

In a worker a repeated SIGTERM/SIGINT is NOT "exit now" (as it is in a single process): the
same shutdown often signals a worker twice, once from the parent and once from whoever signalled
the whole process group (Ctrl-C in a terminal, systemd's control-group kill). Only the parent
decides that a shutdown is forced. A worker whose parent has gone (killed with SIGKILL) drains
and exits by itself.

A worker that exits while the server is not shutting down is replaced, at most ``MAX_RESTARTS``
times within ``RESTART_WINDOW`` seconds; past that, or when a worker fails at start-up (its
lifespan could not open the store, say: every replacement would fail the same way), the parent
shuts the others down and exits non-zero.

Prometheus: a metrics library in multiprocess mode needs ``PROMETHEUS_MULTIPROC_DIR`` set before
the workers start and empty at start; unless it is already set, the parent makes a fresh
directory for the run, passes it to the workers in their environment, marks the files of dead
workers (``prometheus_client.multiprocess.mark_process_dead``)
and removes the directory at exit.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from wsproxy.server.graceful import GracefulServer
from wsproxy.settings import Settings

log = logging.getLogger("wsproxy.workers")

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
# After a second signal: how long workers get to exit before they are killed.
FORCE_WAIT = 5.0
# Beyond the shutdown grace, what a worker's drain may take: the settle phases of
# ``Runtime.drain`` (5 s each), uvicorn's own wait for connections, the store's close.
DRAIN_MARGIN = 30.0
BACKLOG = 2048
PARENT_CHECK_INTERVAL = 1.0
# Where the parent's tick sleeps between looking at signals and workers.
TICK = 0.1
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts from (bound once, here)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # SO_REUSEADDR (set by create_server): a restart binds the port while old connections of
    # the previous run are still in TIME_WAIT.
    sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    sock.set_inheritable(True)
    return sock


class WorkerServer(GracefulServer):
    """The server of one worker: SIGTERM/SIGINT drain (repeats are no-ops), SIGQUIT exits at
    once, and the worker drains by itself when its parent is gone."""

    def __init__(self, config: uvicorn.Config, settings: Settings, parent_pid: int) -> None:
        super().__init__(config, settings)
        self.parent_pid = parent_pid

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGQUIT, self._exit_now)
        watcher = asyncio.get_running_loop().create_task(self._watch_parent())
        try:
            await super().serve(sockets)
        finally:
            watcher.cancel()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_requested or self.should_exit:
            return  # the same shutdown, signalled twice (see the module docstring)
        super().handle_exit(sig, frame)

    def _exit_now(self, sig: int, frame: FrameType | None) -> None:
        self.force_exit = True
        self.should_exit = True

    async def _watch_parent(self) -> None:
        while not self.should_exit:
            await asyncio.sleep(PARENT_CHECK_INTERVAL)
            if os.getppid() != self.parent_pid:
                log.warning("the supervisor (pid %d) is gone: draining", self.parent_pid)
                self.handle_exit(signal.SIGTERM, None)
                return


def worker_main(settings: Settings, sock: socket.socket, parent_pid: int) -> None:
    """The body of a worker process (spawned: a fresh interpreter, nothing inherited but the
    socket, the settings and the environment)."""
    from wsproxy.observability.logs import configure_logging
    from wsproxy.server.config import build_config

    configure_logging(settings.log_level, settings.log_format, settings.worker_id)
    server = WorkerServer(build_config(settings), settings, parent_pid)
    server.run(sockets=[sock])


class Worker:
    def __init__(self, worker_id: int, process: BaseProcess) -> None:
        self.worker_id = worker_id
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def signal(self, sig: int) -> None:
        if self.process.exitcode is None and self.process.pid:
            try:
                os.kill(self.process.pid, sig)
            except ProcessLookupError:
                pass


class Supervisor:
    """Starts the workers, replaces those that die, and shuts them all down on a signal."""

    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock: socket.socket | None = sock
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, Worker] = {}
        self.restarts: deque[float] = deque()
        self.signals: list[int] = []
        self.draining = False
        self.drain_deadline = 0.0
        self.forcing = False
        self.force_deadline = 0.0
        self.failed = 0  # the exit status, when it is not 0
        self.prometheus_dir: str | None = None

    # -- the parent's loop --------------------------------------------------------------------

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._prometheus_setup()
        try:
            for worker_id in range(1, self.settings.workers + 1):
                self._start(worker_id)
            log.info(
                "supervisor pid %d: %d workers on %s:%d",
                os.getpid(),
                self.settings.workers,
                self.settings.host,
                self.settings.port,
            )
            while self.workers:
                sentinels = [w.process.sentinel for w in self.workers.values()]
                multiprocessing.connection.wait(sentinels, timeout=TICK)
                self._handle_signals()
                self._reap()
                self._check_deadlines()
        finally:
            for worker in self.workers.values():  # only if the loop itself failed
                worker.signal(signal.SIGKILL)
            self._close_socket()
            self._prometheus_cleanup()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("supervisor pid %d: all workers exited (status %d)", os.getpid(), self.failed)
        return self.failed

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        # Only recorded: the loop acts on it within one tick.
        self.signals.append(sig)

    def _start(self, worker_id: int) -> None:
        assert self.sock is not None
        settings = self.settings.replace(worker_id=worker_id)
        process = self.context.Process(
            target=worker_main,
            args=(settings, self.sock, os.getpid()),
            name=f"wsproxy-worker-{worker_id}",
            daemon=True,
        )
        process.start()
        self.workers[worker_id] = Worker(worker_id, process)
        log.info("worker %d started (pid %d)", worker_id, process.pid)

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if not self.draining:
                self.shutdown(f"signal {signal.Signals(sig).name}")
            elif not self.forcing:
                log.warning("second signal: workers exit now")
                self.forcing = True
                self.force_deadline = time.monotonic() + FORCE_WAIT
                for worker in self.workers.values():
                    worker.signal(signal.SIGQUIT)

    def shutdown(self, why: str) -> None:
        """Drain every worker (they stop on their own once drained)."""
        if self.draining:
            return
        log.info("supervisor: %s, draining %d workers", why, len(self.workers))
        self.draining = True
        self.drain_deadline = time.monotonic() + 2 * self.settings.limits.shutdown_grace + DRAIN_MARGIN
        # The workers hold their own copies: the port keeps listening until the last worker has
        # closed its copy, and then refuses connections at once instead of queueing them.
        self._close_socket()
        for worker in self.workers.values():
            worker.signal(signal.SIGTERM)

    def _reap(self) -> None:
        for worker_id, worker in list(self.workers.items()):
            code = worker.exitcode
            if code is None:
                continue
            worker.process.join(0)
            del self.workers[worker_id]
            self._prometheus_dead(worker.pid)
            if self.draining:
                # A worker signalled before it installed its handlers dies of the signal itself:
                # it had nothing in flight.
                clean = code in (0, -signal.SIGTERM, -signal.SIGINT) and not self.forcing
                if not clean and not self.failed:
                    self.failed = 1
                log.info("worker %d (pid %d) exited with %s", worker_id, worker.pid, code)
                continue
            if code == STARTUP_FAILURE:
                log.error("worker %d (pid %d) failed to start: shutting down", worker_id, worker.pid)
                self.failed = STARTUP_FAILURE
                self.shutdown("a worker failed to start")
                continue
            now = time.monotonic()
            while self.restarts and now - self.restarts[0] > RESTART_WINDOW:
                self.restarts.popleft()
            if len(self.restarts) >= MAX_RESTARTS:
                log.error(
                    "worker %d (pid %d) exited with %s; %d restarts in %.0fs already: shutting down",
                    worker_id,
                    worker.pid,
                    code,
                    len(self.restarts),
                    RESTART_WINDOW,
                )
                self.failed = 1
                self.shutdown("too many worker restarts")
                continue
            self.restarts.append(now)
            log.error("worker %d (pid %d) exited with %s: replacing it", worker_id, worker.pid, code)
            self._start(worker_id)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        late = (self.forcing and now > self.force_deadline) or (self.draining and now > self.drain_deadline)
        if late and self.workers:
            for worker in self.workers.values():
                log.error("worker %d (pid %d) did not exit: killing it", worker.worker_id, worker.pid)
                worker.signal(signal.SIGKILL)
            self.failed = self.failed or 1
            self.forcing, self.force_deadline = True, now + FORCE_WAIT

    def _close_socket(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    # -- prometheus multiprocess mode --------------------------------------------------------

    def _prometheus_setup(self) -> None:
        if os.environ.get(PROMETHEUS_DIR_ENV):
            return  # the operator's own directory (they empty it between runs)
        self.prometheus_dir = tempfile.mkdtemp(prefix="wsproxy-metrics-")
        os.environ[PROMETHEUS_DIR_ENV] = self.prometheus_dir  # inherited by the workers

    def _prometheus_dead(self, pid: int) -> None:
        from prometheus_client import multiprocess

        try:
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        except OSError:
            log.exception("could not mark the metrics of worker pid %d dead", pid)

    def _prometheus_cleanup(self) -> None:
        path, self.prometheus_dir = self.prometheus_dir, None
        if path is not None:
            os.environ.pop(PROMETHEUS_DIR_ENV, None)
            shutil.rmtree(path, ignore_errors=True)


def run_workers(settings: Settings, sock: Any = None) -> int:
    """Bind the port (unless ``sock`` is given), run the supervisor; the exit status."""
    if sock is None:
        sock = bind_socket(settings.host, settings.port)
    return Supervisor(settings, sock).run()
