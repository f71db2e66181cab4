"""SQLite response store: the default ``ResponseStore`` backend, one file on local disk.

Role: keep :class:`~wsproxy.store.base.StoredResponse` records (as their JSON blob plus the ``id``,
``owner`` and ``created_at`` columns) and idempotency keys, bounded by a TTL and a record count;
and limit counters, usage rows and response-cache entries (schema version 2), which every
process using the same file shares: the worker processes of one host enforce one limit.

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
* Conversations (schema version 2) are one row each plus one row per item, keyed by
  ``(conversation_id, seq)`` with ``item_id`` unique per conversation; an append is one
  transaction that checks the conversation, the item limit and duplicate ids before inserting.
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
from typing import Any, TypeVar

import orjson

from wsproxy.core.conversations import (
    APPEND_DUPLICATE,
    APPEND_FULL,
    APPEND_NOT_FOUND,
    APPEND_OK,
    ItemPage,
    ListParams,
    StoredConversation,
)
from wsproxy.errors import StoreError
from wsproxy.policy.usage import utc_date
from wsproxy.store.base import (
    RUN_MAX_EVENTS,
    RUN_MAX_RUNS,
    RUN_TTL_SECONDS,
    Charge,
    RunEvent,
    RunLog,
    StoredResponse,
    usage_row,
)

T = TypeVar("T")

SCHEMA_VERSION = 4

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

# Conversations and their items (schema version 2).
_SCHEMA_V2 = (
    """
    CREATE TABLE IF NOT EXISTS conversations (
        id TEXT PRIMARY KEY NOT NULL,
        owner TEXT,
        updated_at REAL NOT NULL,
        data BLOB NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS conversations_updated_at ON conversations (updated_at)",
    """
    CREATE TABLE IF NOT EXISTS conversation_items (
        conversation_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        item_id TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (conversation_id, seq),
        UNIQUE (conversation_id, item_id)
    )
    """,
)

# Limit counters, usage rows and the response cache, shared by the processes of one host
# (schema version 3).
_SCHEMA_V3 = (
    """
    CREATE TABLE IF NOT EXISTS counters (
        key TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL,
        expires_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS counters_expires_at ON counters (expires_at)",
    """
    CREATE TABLE IF NOT EXISTS usage (
        date TEXT NOT NULL,
        key TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cached_tokens INTEGER NOT NULL DEFAULT 0,
        reasoning_tokens INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (date, key, model)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS response_cache (
        key TEXT PRIMARY KEY NOT NULL,
        data BLOB NOT NULL,
        expires_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS response_cache_expires_at ON response_cache (expires_at)",
)

# Version 4: the run log of background responses (see ``wsproxy.store.base``).
_SCHEMA_V4 = (
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
        usage_days: int = 400,
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
        self.usage_days = usage_days
        self.run_ttl = float(run_ttl_seconds)
        self.run_max_events = run_max_events
        self.run_max_runs = run_max_runs
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._closing = False
        # Touched only on the worker thread. ``_fast`` is a second connection to the same file
        # with synchronous=NORMAL, for counters, usage and the cache: written on every request,
        # they survive a crash of the process (WAL) and need no fsync each; a power loss may
        # lose the last ones, which a stored response must not.
        self._conn: sqlite3.Connection | None = None
        self._fast: sqlite3.Connection | None = None

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
            n = await self._call(self._purge_conversations_sync, cutoff, self.purge_batch)
            dropped += n
            if n < self.purge_batch:
                break
        excess = await self._call(self._count_sync, "conversations") - self.max_records
        while excess > 0 and budget > 0:
            budget -= 1
            n = await self._call(self._purge_conversations_sync, None, min(excess, self.purge_batch))
            dropped += n
            excess -= n
            if n == 0:
                break
        while budget > 0:
            budget -= 1
            if await self._call(self._delete_expired_sync, "idempotency", cutoff) < self.purge_batch:
                break
        await self._call(self._purge_tenancy_sync, now)
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

    # ------------------------------------------------------------------ conversations

    async def create_conversation(
        self, conversation: StoredConversation, items: list[dict[str, Any]]
    ) -> None:
        rows = [(str(item["id"]), orjson.dumps(item)) for item in items]
        await self._call(self._create_conv_sync, conversation, conversation.dumps(), rows)

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        return await self._call(self._get_conv_sync, conversation_id)

    async def update_conversation(
        self, conversation_id: str, metadata: dict[str, str], now: float
    ) -> StoredConversation | None:
        return await self._call(self._update_conv_sync, conversation_id, dict(metadata), float(now))

    async def delete_conversation(self, conversation_id: str) -> bool:
        return await self._call(self._delete_conv_sync, conversation_id)

    async def append_items(
        self, conversation_id: str, items: list[dict[str, Any]], now: float, max_items: int
    ) -> str:
        rows = [(str(item["id"]), orjson.dumps(item)) for item in items]
        return await self._call(self._append_sync, conversation_id, rows, float(now), max_items)

    async def list_items(self, conversation_id: str, params: ListParams) -> ItemPage | None:
        return await self._call(self._list_sync, conversation_id, params)

    async def get_item(self, conversation_id: str, item_id: str) -> dict[str, Any] | None:
        return await self._call(self._get_item_sync, conversation_id, item_id)

    async def delete_item(self, conversation_id: str, item_id: str, now: float) -> bool:
        return await self._call(self._delete_item_sync, conversation_id, item_id, float(now))

    # ------------------------------------------------------------------ background run logs

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
            fast = sqlite3.connect(
                self.path, timeout=self.busy_timeout_ms / 1000.0, isolation_level=None, check_same_thread=True
            )
            fast.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            fast.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._fast = fast

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
            if version < 3:
                for statement in _SCHEMA_V3:
                    conn.execute(statement)
            if version < 4:
                for statement in _SCHEMA_V4:
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
        fast, self._fast = self._fast, None
        if fast is not None:
            fast.close()
        if conn is not None:
            conn.close()

    def _write(self, fn: Callable[[sqlite3.Connection], T], *, fast: bool = False) -> T:
        """Run ``fn`` in one write transaction (all or nothing)."""
        conn = self._db()
        if fast:
            if self._fast is None:
                raise StoreError("SQLite store is not open.")
            conn = self._fast
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

    # -- conversations, worker-thread side

    def _create_conv_sync(self, conv: StoredConversation, data: bytes, rows: list[tuple[str, bytes]]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO conversations (id, owner, updated_at, data) VALUES (?, ?, ?, ?)",
                (conv.id, conv.owner, float(conv.updated_at), data),
            )
            conn.execute("DELETE FROM conversation_items WHERE conversation_id = ?", (conv.id,))
            conn.executemany(
                "INSERT INTO conversation_items (conversation_id, seq, item_id, data) VALUES (?, ?, ?, ?)",
                [(conv.id, seq, item_id, blob) for seq, (item_id, blob) in enumerate(rows)],
            )

        self._write(write)

    def _conv_row(self, conn: sqlite3.Connection, conversation_id: str) -> StoredConversation | None:
        row = conn.execute("SELECT data FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            return None
        try:
            return StoredConversation.loads(row[0])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(
                f"SQLite store holds an unreadable conversation {conversation_id!r}: {exc}"
            ) from exc

    def _touch_conv(self, conn: sqlite3.Connection, conv: StoredConversation, now: float) -> None:
        conv.updated_at = max(conv.updated_at, now)
        conn.execute(
            "UPDATE conversations SET updated_at = ?, data = ? WHERE id = ?",
            (conv.updated_at, conv.dumps(), conv.id),
        )

    def _get_conv_sync(self, conversation_id: str) -> StoredConversation | None:
        return self._conv_row(self._db(), conversation_id)

    def _update_conv_sync(
        self, conversation_id: str, metadata: dict[str, str], now: float
    ) -> StoredConversation | None:
        def write(conn: sqlite3.Connection) -> StoredConversation | None:
            conv = self._conv_row(conn, conversation_id)
            if conv is None:
                return None
            conv.metadata = metadata
            self._touch_conv(conn, conv, now)
            return conv

        return self._write(write)

    def _delete_conv_sync(self, conversation_id: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM conversation_items WHERE conversation_id = ?", (conversation_id,))
            return conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount > 0

        return self._write(write)

    def _append_sync(
        self, conversation_id: str, rows: list[tuple[str, bytes]], now: float, max_items: int
    ) -> str:
        def write(conn: sqlite3.Connection) -> str:
            conv = self._conv_row(conn, conversation_id)
            if conv is None:
                return APPEND_NOT_FOUND
            ids = [item_id for item_id, _ in rows]
            if len(set(ids)) != len(ids):
                return APPEND_DUPLICATE
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                hit = conn.execute(
                    "SELECT 1 FROM conversation_items WHERE conversation_id = ? "
                    f"AND item_id IN ({marks}) LIMIT 1",
                    (conversation_id, *chunk),
                ).fetchone()
                if hit is not None:
                    return APPEND_DUPLICATE
            count, last = conn.execute(
                "SELECT COUNT(*), COALESCE(MAX(seq), -1) FROM conversation_items WHERE conversation_id = ?",
                (conversation_id,),
            ).fetchone()
            if int(count) + len(rows) > max_items:
                return APPEND_FULL
            conn.executemany(
                "INSERT INTO conversation_items (conversation_id, seq, item_id, data) VALUES (?, ?, ?, ?)",
                [
                    (conversation_id, int(last) + 1 + i, item_id, blob)
                    for i, (item_id, blob) in enumerate(rows)
                ],
            )
            self._touch_conv(conn, conv, now)
            return APPEND_OK

        return self._write(write)

    def _list_sync(self, conversation_id: str, params: ListParams) -> ItemPage | None:
        conn = self._db()
        # One read transaction: the page and the cursor it starts from are from the same snapshot.
        conn.execute("BEGIN")
        try:
            if (
                conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
                is None
            ):
                return None
            asc = params.order == "asc"
            bound: int | None = None
            if params.after is not None:
                row = conn.execute(
                    "SELECT seq FROM conversation_items WHERE conversation_id = ? AND item_id = ?",
                    (conversation_id, params.after),
                ).fetchone()
                if row is None:
                    return None
                bound = int(row[0])
            sql = "SELECT data FROM conversation_items WHERE conversation_id = ?"
            args: list[Any] = [conversation_id]
            if bound is not None:
                sql += " AND seq > ?" if asc else " AND seq < ?"
                args.append(bound)
            sql += " ORDER BY seq " + ("ASC" if asc else "DESC") + " LIMIT ?"
            args.append(params.limit + 1)
            blobs = [r[0] for r in conn.execute(sql, args).fetchall()]
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
        items = [orjson.loads(blob) for blob in blobs[: params.limit]]
        return ItemPage(items=items, has_more=len(blobs) > params.limit)

    def _get_item_sync(self, conversation_id: str, item_id: str) -> dict[str, Any] | None:
        row = (
            self._db()
            .execute(
                "SELECT data FROM conversation_items WHERE conversation_id = ? AND item_id = ?",
                (conversation_id, item_id),
            )
            .fetchone()
        )
        if row is None:
            return None
        item: dict[str, Any] = orjson.loads(row[0])
        return item

    def _delete_item_sync(self, conversation_id: str, item_id: str, now: float) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            gone = conn.execute(
                "DELETE FROM conversation_items WHERE conversation_id = ? AND item_id = ?",
                (conversation_id, item_id),
            ).rowcount
            conv = self._conv_row(conn, conversation_id)
            if gone and conv is not None:
                self._touch_conv(conn, conv, now)
            return gone > 0

        return self._write(write)

    def _purge_conversations_sync(self, cutoff: float | None, limit: int) -> int:
        """Drop up to ``limit`` conversations (and their items): expired ones when ``cutoff`` is
        given, else the least recently written."""

        def write(conn: sqlite3.Connection) -> int:
            if cutoff is None:
                rows = conn.execute(
                    "SELECT id FROM conversations ORDER BY updated_at, rowid LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT id FROM conversations WHERE updated_at < ? ORDER BY updated_at LIMIT ?",
                    (cutoff, limit),
                ).fetchall()
            ids = [(r[0],) for r in rows]
            conn.executemany("DELETE FROM conversation_items WHERE conversation_id = ?", ids)
            conn.executemany("DELETE FROM conversations WHERE id = ?", ids)
            return len(ids)

        return self._write(write)
    # ------------------------------------------------------------------ limits, usage, cache

    async def take_limits(self, charges: Sequence[Charge], now: float) -> int:
        rows = [(c.key, int(c.amount), int(c.limit), float(c.expires_at)) for c in charges]
        return await self._call(self._take_sync, rows, float(now))

    async def adjust_limit(self, key: str, delta: int, expires_at: float) -> None:
        await self._call(self._adjust_sync, key, int(delta), float(expires_at))

    async def add_usage(self, date: str, key: str, model: str, counts: Sequence[int]) -> None:
        await self._call(self._add_usage_sync, date, key, model, tuple(int(n) for n in counts))

    async def usage(self, key: str | None, start: str, end: str) -> list[dict[str, Any]]:
        return await self._call(self._usage_sync, key, start, end)

    async def cache_get(self, key: str, now: float) -> bytes | None:
        return await self._call(self._cache_get_sync, key, float(now))

    async def cache_put(self, key: str, data: bytes, expires_at: float) -> None:
        await self._call(self._cache_put_sync, key, bytes(data), float(expires_at))

    def _take_sync(self, rows: list[tuple[str, int, int, float]], now: float) -> int:
        # One BEGIN IMMEDIATE transaction: the write lock is held from the first read, so the
        # check and the charge are atomic also against other processes on this file.
        def write(conn: sqlite3.Connection) -> int:
            current = []
            for index, (key, amount, limit, _) in enumerate(rows):
                row = conn.execute("SELECT value, expires_at FROM counters WHERE key = ?", (key,)).fetchone()
                value = int(row[0]) if row is not None and float(row[1]) > now else 0
                if value + amount > limit:
                    return index
                current.append(value)
            for (key, amount, _, expires_at), value in zip(rows, current, strict=True):
                conn.execute(
                    "INSERT OR REPLACE INTO counters (key, value, expires_at) VALUES (?, ?, ?)",
                    (key, value + amount, expires_at),
                )
            return -1

        return self._write(write, fast=True)

    def _adjust_sync(self, key: str, delta: int, expires_at: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            updated = conn.execute(
                "UPDATE counters SET value = MAX(0, value + ?), expires_at = MAX(expires_at, ?) "
                "WHERE key = ?",
                (delta, expires_at, key),
            ).rowcount
            if not updated:
                conn.execute(
                    "INSERT INTO counters (key, value, expires_at) VALUES (?, ?, ?)",
                    (key, max(0, delta), expires_at),
                )

        self._write(write, fast=True)

    def _add_usage_sync(self, date: str, key: str, model: str, counts: tuple[int, ...]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO usage (date, key, model, requests, input_tokens, output_tokens, "
                "cached_tokens, reasoning_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (date, key, model) DO UPDATE SET "
                "requests = requests + excluded.requests, "
                "input_tokens = input_tokens + excluded.input_tokens, "
                "output_tokens = output_tokens + excluded.output_tokens, "
                "cached_tokens = cached_tokens + excluded.cached_tokens, "
                "reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens",
                (date, key, model, *counts),
            )

        self._write(write, fast=True)

    def _usage_sync(self, key: str | None, start: str, end: str) -> list[dict[str, Any]]:
        sql = (
            "SELECT date, key, model, requests, input_tokens, output_tokens, cached_tokens, "
            "reasoning_tokens FROM usage WHERE date >= ? AND date <= ?"
        )
        args: tuple[str, ...] = (start, end)
        if key is not None:
            sql += " AND key = ?"
            args += (key,)
        rows = self._db().execute(sql + " ORDER BY date, key, model", args).fetchall()
        return [usage_row(r[0], r[1], r[2], r[3:]) for r in rows]

    def _cache_get_sync(self, key: str, now: float) -> bytes | None:
        row = (
            self._db()
            .execute("SELECT data FROM response_cache WHERE key = ? AND expires_at > ?", (key, now))
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    def _cache_put_sync(self, key: str, data: bytes, expires_at: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO response_cache (key, data, expires_at) VALUES (?, ?, ?)",
                (key, data, expires_at),
            )

        self._write(write, fast=True)

    def _purge_tenancy_sync(self, now: float) -> None:
        keep_from = utc_date(now - self.usage_days * 86400.0)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM counters WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM response_cache WHERE expires_at <= ?", (now,))
            # The cache is bounded like records: the entries closest to expiry go first.
            conn.execute(
                "DELETE FROM response_cache WHERE rowid IN (SELECT rowid FROM response_cache "
                "ORDER BY expires_at DESC LIMIT -1 OFFSET ?)",
                (self.max_records,),
            )
            conn.execute("DELETE FROM usage WHERE date < ?", (keep_from,))

        self._write(write, fast=True)

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
