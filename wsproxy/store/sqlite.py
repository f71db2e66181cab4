"""SQLite response store: the default ``ResponseStore`` backend, one file on local disk.

Role: keep :class:`~wsproxy.store.base.StoredResponse` records (as their JSON blob plus the ``id``,
``owner`` and ``created_at`` columns) and idempotency keys, bounded by a TTL and a record count.

Rules this module keeps:

* Every sqlite3 call runs on ONE dedicated worker thread owned by the store (a single-thread
  executor, never the event loop's default executor, which is shared with unrelated blocking work).
  That serializes writes (no ``database is locked`` between our own calls) and keeps the event loop
  free. The number of calls queued for that thread is bounded (``max_pending``); callers beyond it
  wait on the event loop, which is backpressure, not blocking.
* Each ``put`` is one transaction, so a reader sees the whole record or nothing, also after a crash.
* WAL journal with ``synchronous=FULL`` by default: a ``put`` that returned has been fsynced to the
  WAL, so it survives kill -9 *and* power loss / OS crash. ``NORMAL`` would survive kill -9 too
  (the WAL is in the OS page cache), but on power loss it may roll back the last commits, i.e. lose
  responses whose ids the client already holds and will send as ``previous_response_id``. One fsync
  per stored response is cheap next to the model call that produced it.
* The schema is versioned with ``PRAGMA user_version`` and created by ``open()``.
* sqlite3 exceptions are mapped to :class:`~wsproxy.errors.StoreError` here, at the boundary.

This module must not touch the network, the event loop's default executor, or any other store; it
knows nothing about HTTP or the Responses API beyond the record it is handed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import orjson

from wsproxy.errors import StoreError
from wsproxy.store.base import (
    RUN_MAX_EVENTS,
    RUN_MAX_RUNS,
    RUN_TTL_SECONDS,
    RunEvent,
    RunLog,
    StoredResponse,
)

T = TypeVar("T")

SCHEMA_VERSION = 2

# Applied in one transaction when the file has user_version 0 (new or never initialized).
_SCHEMA_V1 = (
    """
    CREATE TABLE IF NOT EXISTS responses (
        id TEXT PRIMARY KEY NOT NULL,
        owner TEXT,
        created_at REAL NOT NULL,
        data BLOB NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at)",
    """
    CREATE TABLE IF NOT EXISTS idempotency (
        key TEXT PRIMARY KEY NOT NULL,
        response_id TEXT NOT NULL,
        created_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS idempotency_created_at ON idempotency (created_at)",
)

# Version 2: the run log of background responses (see ``wsproxy.store.base``).
_SCHEMA_V2 = (
    """
    CREATE TABLE IF NOT EXISTS runs (
        id TEXT PRIMARY KEY NOT NULL,
        owner TEXT,
        snapshot BLOB NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        cancel INTEGER NOT NULL DEFAULT 0,
        events INTEGER NOT NULL DEFAULT 0,
        last_seq INTEGER NOT NULL DEFAULT -1,
        updated_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS runs_updated_at ON runs (updated_at)",
    """
    CREATE TABLE IF NOT EXISTS run_events (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID
    """,
)

_VALID_SYNCHRONOUS = ("FULL", "EXTRA", "NORMAL")


class SQLiteStore:
    """``ResponseStore`` on one SQLite file; see the module docstring for the rules it keeps."""

    def __init__(
        self,
        path: str,
        *,
        ttl_seconds: float,
        max_records: int,
        busy_timeout_ms: int = 5000,
        synchronous: str = "FULL",
        max_pending: int = 1024,
        purge_batch: int = 500,
        purge_max_batches: int = 200,
        run_ttl_seconds: float = RUN_TTL_SECONDS,
        run_max_events: int = RUN_MAX_EVENTS,
        run_max_runs: int = RUN_MAX_RUNS,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be > 0")
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        if synchronous.upper() not in _VALID_SYNCHRONOUS:
            # OFF is refused: it gives up durability of completed puts on an OS crash.
            raise ValueError(f"synchronous must be one of {_VALID_SYNCHRONOUS}")
        if max_pending < 1 or purge_batch < 1 or purge_max_batches < 1:
            raise ValueError("max_pending, purge_batch and purge_max_batches must be >= 1")
        self.path = path
        self.ttl = float(ttl_seconds)
        self.max_records = max_records
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous.upper()
        self.max_pending = max_pending
        # A purge batch is one short write transaction; other calls queued on the worker thread run
        # between batches, so a large purge delays a request by at most one batch.
        self.purge_batch = purge_batch
        self.purge_max_batches = purge_max_batches
        self.run_ttl = float(run_ttl_seconds)
        self.run_max_events = run_max_events
        self.run_max_runs = run_max_runs
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._closing = False
        # Touched only on the worker thread.
        self._conn: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._closing = False
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="wsproxy-sqlite"
        )
        self._slots = asyncio.Semaphore(self.max_pending)
        try:
            await self._call(self._open_sync)
        except BaseException:
            # Leave no thread behind when the file cannot be opened or has a newer schema.
            await self._shutdown()
            raise

    async def close(self) -> None:
        if self._executor is None or self._closing:
            return
        # New calls are refused from here on; calls already queued run first (the executor is FIFO).
        self._closing = True
        await self._shutdown()

    async def _shutdown(self) -> None:
        executor = self._executor
        if executor is None:
            return
        try:
            await asyncio.wrap_future(executor.submit(self._close_sync))
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store failed to close: {exc}") from exc
        finally:
            # The close job was the last one queued and has finished, so joining the idle thread
            # returns at once; it does not stall the loop.
            executor.shutdown(wait=True)
            self._executor = None
            self._slots = None

    # ------------------------------------------------------------------ protocol

    async def put(self, record: StoredResponse) -> None:
        # Serialize on the caller's side, now: the caller may mutate its dicts as soon as it
        # regains control, and the worker thread must never read objects the loop can change.
        data = record.dumps()
        await self._call(self._put_sync, record.id, record.owner, float(record.created_at), data)

    async def get(self, response_id: str) -> StoredResponse | None:
        return await self._call(self._get_sync, response_id)

    async def delete(self, response_id: str) -> bool:
        return await self._call(self._delete_sync, response_id)

    async def purge(self, now: float) -> int:
        """Drop expired records, then the oldest beyond ``max_records``; returns records dropped.

        Works in batches of ``purge_batch`` rows, each its own transaction and its own call on the
        worker thread, at most ``purge_max_batches`` per call; what is left is done next time.
        """
        cutoff = now - self.ttl
        budget = self.purge_max_batches
        dropped = 0
        while budget > 0:
            budget -= 1
            n = await self._call(self._delete_expired_sync, "responses", cutoff)
            dropped += n
            if n < self.purge_batch:
                break
        excess = await self._call(self._count_sync, "responses") - self.max_records
        while excess > 0 and budget > 0:
            budget -= 1
            n = await self._call(self._delete_oldest_sync, "responses", min(excess, self.purge_batch))
            dropped += n
            excess -= n
            if n == 0:
                break
        while budget > 0:
            budget -= 1
            if await self._call(self._delete_expired_sync, "idempotency", cutoff) < self.purge_batch:
                break
        # Idempotency keys are bounded like records, so a flood of distinct keys cannot grow the file.
        excess = await self._call(self._count_sync, "idempotency") - self.max_records
        while excess > 0 and budget > 0:
            budget -= 1
            n = await self._call(self._delete_oldest_sync, "idempotency", min(excess, self.purge_batch))
            excess -= n
            if n == 0:
                break
        while budget > 0:
            budget -= 1
            if await self._call(self._purge_runs_sync, now - self.run_ttl) < self.purge_batch:
                break
        return dropped

    async def claim_idempotency_key(self, key: str, response_id: str, now: float) -> str | None:
        return await self._call(self._claim_sync, key, response_id, float(now))

    async def run_start(self, run_id: str, owner: str | None, snapshot: bytes, now: float) -> None:
        await self._call(self._run_start_sync, run_id, owner, bytes(snapshot), float(now))

    async def run_append(self, run_id: str, events: Sequence[RunEvent], now: float) -> bool:
        return await self._call(self._run_append_sync, run_id, list(events), float(now))

    async def run_read(self, run_id: str, after: int, limit: int) -> RunLog | None:
        return await self._call(self._run_read_sync, run_id, int(after), int(limit))

    async def run_finish(self, run_id: str, now: float) -> None:
        await self._call(self._run_finish_sync, run_id, float(now))

    async def run_cancel(self, run_id: str) -> bool:
        return await self._call(self._run_cancel_sync, run_id)

    # ------------------------------------------------------------------ event-loop side plumbing

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the worker thread; map sqlite3 errors to ``StoreError``."""
        executor, slots = self._executor, self._slots
        if executor is None or slots is None or self._closing:
            raise StoreError("SQLite store is not open.")
        await slots.acquire()
        if self._executor is not executor or self._closing:
            slots.release()
            raise StoreError("SQLite store is not open.")
        loop = asyncio.get_running_loop()
        try:
            cfut = executor.submit(fn, *args)
        except BaseException:
            slots.release()
            raise

        def release(_: concurrent.futures.Future[T]) -> None:
            # The slot is freed when the thread is done with the job (not when the awaiting task
            # is cancelled), so the number of jobs queued on the thread really is bounded.
            try:
                loop.call_soon_threadsafe(slots.release)
            except RuntimeError:
                # The loop is already closed: nobody is left to wait for a slot.
                return

        cfut.add_done_callback(release)
        try:
            return await asyncio.wrap_future(cfut)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store failed: {exc}") from exc

    # ------------------------------------------------------------------ worker-thread side

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("SQLite store is not open.")
        return self._conn

    def _open_sync(self) -> None:
        # isolation_level=None: no implicit transactions; every write below opens its own
        # BEGIN IMMEDIATE so the write lock is taken up front (no lock-upgrade deadlocks with
        # another process on the same file) and the busy timeout applies.
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000.0,
            isolation_level=None,
            check_same_thread=True,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            mode = self._enable_wal(conn)
            if str(mode).lower() != "wal" and self.path != ":memory:":
                raise StoreError(f"SQLite store could not enable WAL (journal_mode={mode}).")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # After a checkpoint, truncate the WAL back to this size so it does not stay at its
            # high-water mark forever (64 MiB).
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute("PRAGMA foreign_keys = OFF")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _enable_wal(self, conn: sqlite3.Connection) -> str:
        """``journal_mode = WAL``, retried: switching a new file to WAL takes an exclusive lock
        for which SQLite does not call the busy handler, so processes opening one file at once
        (``--workers N`` starting) get "database is locked" at once. Bounded by the busy timeout."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000.0
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"SQLite store {self.path!r} has schema version {version}; this wsproxy knows "
                    f"up to {SCHEMA_VERSION}. Refusing to open it."
                )
            if version < 1:
                for statement in _SCHEMA_V1:
                    conn.execute(statement)
            if version < 2:
                for statement in _SCHEMA_V2:
                    conn.execute(statement)
            # Future migrations go here, each `if version < N:` step inside this same transaction.
            if version != SCHEMA_VERSION:
                # user_version lives in the database header and is part of this transaction.
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back by itself (e.g. on SQLITE_FULL); a second
            # ROLLBACK would raise and hide the original error.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction (all or nothing)."""
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            # COMMIT is inside the try: if it fails (e.g. disk I/O error) the transaction must not
            # stay open, or every later BEGIN on this connection would fail.
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back by itself (e.g. on SQLITE_FULL); a second
            # ROLLBACK would raise and hide the original error.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _put_sync(self, response_id: str, owner: str | None, created_at: float, data: bytes) -> None:
        def write(conn: sqlite3.Connection) -> None:
            # INSERT OR REPLACE gives an overwritten record a new rowid, so it counts as newest
            # among equal created_at values when the size bound is enforced.
            conn.execute(
                "INSERT OR REPLACE INTO responses (id, owner, created_at, data) VALUES (?, ?, ?, ?)",
                (response_id, owner, created_at, data),
            )

        self._write(write)

    def _get_sync(self, response_id: str) -> StoredResponse | None:
        row = self._db().execute("SELECT data FROM responses WHERE id = ?", (response_id,)).fetchone()
        if row is None:
            return None
        try:
            return StoredResponse.loads(row[0])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            # Not reachable through put(); only a file edited or damaged outside this store.
            raise StoreError(f"SQLite store holds an unreadable record for {response_id!r}: {exc}") from exc

    def _delete_sync(self, response_id: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

        return self._write(write)

    def _count_sync(self, table: str) -> int:
        # table is one of two literals chosen in this module, never caller input.
        return int(self._db().execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def _delete_expired_sync(self, table: str, cutoff: float) -> int:
        def write(conn: sqlite3.Connection) -> int:
            return conn.execute(
                f"DELETE FROM {table} WHERE rowid IN "
                f"(SELECT rowid FROM {table} WHERE created_at < ? ORDER BY created_at LIMIT ?)",
                (cutoff, self.purge_batch),
            ).rowcount

        return self._write(write)

    def _delete_oldest_sync(self, table: str, limit: int) -> int:
        def write(conn: sqlite3.Connection) -> int:
            return conn.execute(
                f"DELETE FROM {table} WHERE rowid IN "
                f"(SELECT rowid FROM {table} ORDER BY created_at, rowid LIMIT ?)",
                (limit,),
            ).rowcount

        return self._write(write)

    def _claim_sync(self, key: str, response_id: str, now: float) -> str | None:
        cutoff = now - self.ttl

        def write(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT response_id, created_at FROM idempotency WHERE key = ?", (key,)
            ).fetchone()
            # An expired key that purge has not reached yet is free to claim again, as in Redis.
            if row is not None and float(row[1]) >= cutoff:
                return str(row[0])
            conn.execute(
                "INSERT OR REPLACE INTO idempotency (key, response_id, created_at) VALUES (?, ?, ?)",
                (key, response_id, now),
            )
            return None

        return self._write(write)

    # -- the run log (worker thread)

    def _run_start_sync(self, run_id: str, owner: str | None, snapshot: bytes, now: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM run_events WHERE run_id = ?", (run_id,))
            conn.execute(
                "INSERT OR REPLACE INTO runs (id, owner, snapshot, updated_at) VALUES (?, ?, ?, ?)",
                (run_id, owner, snapshot, now),
            )

        self._write(write)

    def _run_append_sync(self, run_id: str, events: list[RunEvent], now: float) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT events, last_seq, cancel FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return False
            count, last = int(row[0]), int(row[1])
            fresh = [e for e in events if e[0] > last][: max(0, self.run_max_events - count)]
            if fresh:
                conn.executemany(
                    "INSERT OR IGNORE INTO run_events (run_id, seq, type, data) VALUES (?, ?, ?, ?)",
                    [(run_id, seq, kind, data) for seq, kind, data in fresh],
                )
                last = fresh[-1][0]
            conn.execute(
                "UPDATE runs SET events = ?, last_seq = ?, updated_at = ? WHERE id = ?",
                (count + len(fresh), last, now, run_id),
            )
            return bool(row[2])

        return self._write(write)

    def _run_read_sync(self, run_id: str, after: int, limit: int) -> RunLog | None:
        db = self._db()
        # The state first: events appended before it was read are all there (see base).
        row = db.execute(
            "SELECT owner, snapshot, done, cancel, updated_at FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
        if row is None:
            return None
        rows = db.execute(
            "SELECT seq, type, data FROM run_events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (run_id, after, max(0, limit)),
        ).fetchall()
        return RunLog(
            owner=row[0],
            snapshot=bytes(row[1]),
            done=bool(row[2]),
            cancel_requested=bool(row[3]),
            updated_at=float(row[4]),
            events=[(int(seq), str(kind), bytes(data)) for seq, kind, data in rows],
        )

    def _run_finish_sync(self, run_id: str, now: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE runs SET done = 1, updated_at = ? WHERE id = ?", (now, run_id))

        self._write(write)

    def _run_cancel_sync(self, run_id: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute("UPDATE runs SET cancel = 1 WHERE id = ? AND done = 0", (run_id,)).rowcount > 0
            )

        return self._write(write)

    def _purge_runs_sync(self, cutoff: float) -> int:
        """One batch of runs whose owner has not written since ``cutoff``, or beyond
        ``run_max_runs`` (oldest first), with their events."""

        def write(conn: sqlite3.Connection) -> int:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM runs WHERE updated_at < ? ORDER BY updated_at LIMIT ?",
                    (cutoff, self.purge_batch),
                )
            ]
            if len(ids) < self.purge_batch:  # then the oldest beyond the bound on runs
                ids += [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM runs ORDER BY updated_at DESC LIMIT ? OFFSET ?",
                        (self.purge_batch - len(ids), self.run_max_runs),
                    )
                    if r[0] not in ids
                ]
            for run_id in ids:
                conn.execute("DELETE FROM run_events WHERE run_id = ?", (run_id,))
                conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            return len(ids)

        return self._write(write)
