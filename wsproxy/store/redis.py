"""Redis response store: ``ResponseStore`` on a Redis server, for several proxies sharing state.

Layout, all under ``key_prefix``:

* ``{prefix}resp:{id}``  the record's JSON blob (``StoredResponse.dumps``), written with
  ``SET ... PX ttl`` so Redis expires it by itself even if no proxy ever purges;
* ``{prefix}index``      a sorted set of ids scored by ``created_at``, used by ``purge`` to drop
  expired ids and to enforce ``max_records`` (oldest first);
* ``{prefix}idem:{key}`` an idempotency key bound to a response id with ``SET NX PX ttl``;
* ``{prefix}run:{id}``   the state of a background run's log (a hash: owner, snapshot, done,
  cancel, events, last_seq, updated_at) and ``{prefix}runev:{id}`` its events (a sorted set
  scored by sequence number, each member ``type\\n`` + JSON), both expiring ``run_ttl`` after
  the owner's last write (there is no count bound on runs: the TTL is the bound). Appending,
  finishing and cancelling are Lua scripts, so a log never exists half-written.

A ``put`` writes the blob and the index entry in one MULTI/EXEC, so readers see all or nothing.
``purge`` runs a small Lua script per batch, so "pick the oldest ids and delete them" is atomic and
cannot delete a record another proxy rewrote in between; each batch is bounded. The script names
keys it computes from the prefix, which is fine on a standalone/Sentinel Redis but not on Redis
Cluster (unsupported here).

The ``redis`` import stays inside this module: redis is optional (``pip install wsproxy[redis]``).
Redis errors are mapped to :class:`~wsproxy.errors.StoreError` here, at the boundary. This module
must not touch the filesystem or any other store.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from wsproxy.errors import StoreError
from wsproxy.store.base import RUN_MAX_EVENTS, RUN_TTL_SECONDS, RunEvent, RunLog, StoredResponse

T = TypeVar("T")

# One purge batch, atomically. KEYS[1] = index; ARGV = mode, bound, batch, record-key prefix.
# mode "ttl": bound is the cutoff, drop ids scored strictly below it.
# mode "size": bound is max_records, drop the oldest ids beyond it.
# Returns how many ids were removed from the index.
_PURGE_LUA = """
local ids
local batch = tonumber(ARGV[3])
if ARGV[1] == 'ttl' then
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, batch)
else
  local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
  if excess <= 0 then return 0 end
  ids = redis.call('ZRANGE', KEYS[1], 0, math.min(excess, batch) - 1)
end
local removed = 0
for _, id in ipairs(ids) do
  redis.call('UNLINK', ARGV[4] .. id)
  removed = removed + redis.call('ZREM', KEYS[1], id)
end
return removed
"""


# KEYS: run hash, events zset. ARGV: now, max events, ttl ms, then seq, member pairs.
# Returns -1 for an unknown run, else the cancel flag (0/1).
_RUN_APPEND_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local count = tonumber(redis.call('HGET', KEYS[1], 'events') or '0')
local last = tonumber(redis.call('HGET', KEYS[1], 'last_seq') or '-1')
local max = tonumber(ARGV[2])
for i = 4, #ARGV, 2 do
  local seq = tonumber(ARGV[i])
  if count >= max then break end
  if seq > last then
    redis.call('ZADD', KEYS[2], seq, ARGV[i + 1])
    count = count + 1
    last = seq
  end
end
redis.call('HSET', KEYS[1], 'events', count, 'last_seq', last, 'updated_at', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return tonumber(redis.call('HGET', KEYS[1], 'cancel') or '0')
"""

# KEYS: run hash, events zset. ARGV: now, ttl ms.
_RUN_FINISH_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'done', 1, 'updated_at', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: run hash. Returns 1 when the flag was set on a run that is not done.
_RUN_CANCEL_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'done') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'cancel', 1)
return 1
"""


class RedisStore:
    """``ResponseStore`` on Redis; see the module docstring for the key layout."""

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: float,
        max_records: int,
        key_prefix: str = "wsproxy:",
        max_connections: int = 32,
        pool_timeout: float = 5.0,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 3.0,
        purge_batch: int = 500,
        purge_max_batches: int = 200,
        run_ttl_seconds: float = RUN_TTL_SECONDS,
        run_max_events: int = RUN_MAX_EVENTS,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be > 0")
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        if max_connections < 1 or purge_batch < 1 or purge_max_batches < 1:
            raise ValueError("max_connections, purge_batch and purge_max_batches must be >= 1")
        self.url = url
        self.ttl = float(ttl_seconds)
        # PX in whole milliseconds, at least 1 (0 would be rejected by Redis).
        self._ttl_ms = max(1, math.ceil(self.ttl * 1000))
        self.max_records = max_records
        self.prefix = key_prefix
        self.max_connections = max_connections
        # How long a caller waits for a free pooled connection before StoreError; the pool is a
        # BlockingConnectionPool, so a burst queues instead of failing at max_connections.
        self.pool_timeout = pool_timeout
        self.socket_timeout = socket_timeout
        self.socket_connect_timeout = socket_connect_timeout
        self.purge_batch = purge_batch
        self.purge_max_batches = purge_max_batches
        self.run_ttl = float(run_ttl_seconds)
        self._run_ttl_ms = max(1, math.ceil(self.run_ttl * 1000))
        self.run_max_events = run_max_events
        self._run_scripts: dict[str, Any] = {}
        self._index = f"{key_prefix}index"
        self._client: aioredis.Redis | None = None
        self._pool: aioredis.BlockingConnectionPool | None = None
        self._purge_script: Any = None

    def _key(self, response_id: str) -> str:
        return f"{self.prefix}resp:{response_id}"

    def _idem_key(self, key: str) -> str:
        return f"{self.prefix}idem:{key}"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._client is not None:
            return
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_connections,
                timeout=self.pool_timeout,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_connect_timeout,
                # Re-check idle pooled connections before use so a restarted server is noticed.
                health_check_interval=30,
            )
        except (ValueError, RedisError) as exc:
            raise StoreError(f"Redis store URL is invalid: {exc}") from exc
        client = aioredis.Redis.from_pool(pool)
        try:
            # Fail at startup, not on the first request, when the server is unreachable.
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise StoreError(f"Redis store is unreachable at {self.url}: {exc}") from exc
        self._pool = pool
        self._client = client
        self._purge_script = client.register_script(_PURGE_LUA)
        self._run_scripts = {
            "append": client.register_script(_RUN_APPEND_LUA),
            "finish": client.register_script(_RUN_FINISH_LUA),
            "cancel": client.register_script(_RUN_CANCEL_LUA),
        }

    async def close(self) -> None:
        client, self._client = self._client, None
        self._pool = None
        self._purge_script = None
        self._run_scripts = {}
        if client is not None:
            try:
                # from_pool() made the client own the pool: this disconnects it too.
                await client.aclose()
            except (RedisError, OSError) as exc:
                raise StoreError(f"Redis store failed to close: {exc}") from exc

    # ------------------------------------------------------------------ protocol

    async def put(self, record: StoredResponse) -> None:
        data = record.dumps()
        client = self._require()

        async def op() -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(self._key(record.id), data, px=self._ttl_ms)
                pipe.zadd(self._index, {record.id: float(record.created_at)})
                await pipe.execute()

        await self._guard(op)

    async def get(self, response_id: str) -> StoredResponse | None:
        client = self._require()

        async def op() -> bytes | str | None:
            data: bytes | str | None = await client.get(self._key(response_id))
            return data

        data = await self._guard(op)
        if data is None:
            return None
        try:
            return StoredResponse.loads(data)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise StoreError(f"Redis store holds an unreadable record for {response_id!r}: {exc}") from exc

    async def delete(self, response_id: str) -> bool:
        client = self._require()

        async def op() -> bool:
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(response_id))
                pipe.zrem(self._index, response_id)
                deleted, _ = await pipe.execute()
            return int(deleted) > 0

        return await self._guard(op)

    async def purge(self, now: float) -> int:
        """Remove index entries (and their records) older than the TTL, then the oldest beyond
        ``max_records``; returns how many were removed. At most ``purge_max_batches`` batches of
        ``purge_batch`` ids per call; the rest is left for the next call. Idempotency keys need no
        purge: Redis expires them (PX)."""
        self._require()
        script = self._purge_script
        cutoff = repr(float(now - self.ttl))
        record_prefix = f"{self.prefix}resp:"
        dropped = 0
        budget = self.purge_max_batches

        async def batch(mode: str, bound: str) -> int:
            async def op() -> int:
                n = await script(keys=[self._index], args=[mode, bound, self.purge_batch, record_prefix])
                return int(n)

            return await self._guard(op)

        while budget > 0:
            budget -= 1
            n = await batch("ttl", cutoff)
            dropped += n
            if n < self.purge_batch:
                break
        while budget > 0:
            budget -= 1
            n = await batch("size", str(self.max_records))
            dropped += n
            if n < self.purge_batch:
                break
        return dropped

    async def claim_idempotency_key(self, key: str, response_id: str, now: float) -> str | None:
        # ``now`` is not needed: Redis expires the key on its own clock (PX ttl from the claim).
        client = self._require()
        name = self._idem_key(key)

        async def op() -> str | None:
            # SET NX then GET is not one command before Redis 7 (SET NX GET); if the key expires
            # between the two, try again, a bounded number of times.
            for _ in range(3):
                if await client.set(name, response_id, nx=True, px=self._ttl_ms):
                    return None
                existing: bytes | str | None = await client.get(name)
                if isinstance(existing, bytes):
                    return existing.decode("utf-8")
                if existing is not None:
                    return existing
            raise StoreError(f"Redis store could not claim idempotency key {key!r}: it keeps expiring.")

        return await self._guard(op)

    # ------------------------------------------------------------------ plumbing

    # ------------------------------------------------------------------ run log

    def _run_keys(self, run_id: str) -> list[str]:
        return [f"{self.prefix}run:{run_id}", f"{self.prefix}runev:{run_id}"]

    async def run_start(self, run_id: str, owner: str | None, snapshot: bytes, now: float) -> None:
        client = self._require()
        meta, events = self._run_keys(run_id)
        fields: dict[str | bytes | bytearray | memoryview[int] | int | float, Any] = {
            "owner": orjson.dumps(owner),
            "snapshot": bytes(snapshot),
            "done": 0,
            "cancel": 0,
            "events": 0,
            "last_seq": -1,
            "updated_at": repr(float(now)),
        }

        async def op() -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(meta, events)
                pipe.hset(meta, mapping=fields)
                pipe.pexpire(meta, self._run_ttl_ms)
                await pipe.execute()

        await self._guard(op)

    async def run_append(self, run_id: str, events: Sequence[RunEvent], now: float) -> bool:
        self._require()
        script = self._run_scripts["append"]
        args: list[Any] = [repr(float(now)), self.run_max_events, self._run_ttl_ms]
        for seq, kind, data in events:
            args += [seq, kind.encode() + b"\n" + data]

        async def op() -> int:
            return int(await script(keys=self._run_keys(run_id), args=args))

        return await self._guard(op) == 1

    async def run_read(self, run_id: str, after: int, limit: int) -> RunLog | None:
        client = self._require()
        meta, events = self._run_keys(run_id)

        async def op() -> tuple[Any, Any]:
            # One MULTI: the state and the events of one moment.
            async with client.pipeline(transaction=True) as pipe:
                pipe.hgetall(meta)
                pipe.zrangebyscore(
                    events, f"({int(after)}", "+inf", start=0, num=max(0, limit), withscores=True
                )
                state, members = await pipe.execute()
            return state, members

        state, members = await self._guard(op)
        if not state:
            return None
        got = {(k.decode() if isinstance(k, bytes) else k): v for k, v in state.items()}
        try:
            out: list[RunEvent] = []
            if limit > 0:
                for member, score in members:
                    raw = member if isinstance(member, bytes) else member.encode()
                    kind, _, data = raw.partition(b"\n")
                    out.append((int(score), kind.decode(), data))
            snapshot = got["snapshot"]
            return RunLog(
                owner=orjson.loads(got["owner"]),
                snapshot=snapshot if isinstance(snapshot, bytes) else snapshot.encode(),
                done=int(got["done"]) == 1,
                cancel_requested=int(got["cancel"]) == 1,
                updated_at=float(got["updated_at"]),
                events=out,
            )
        except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
            raise StoreError(f"Redis store holds an unreadable run log for {run_id!r}: {exc}") from exc

    async def run_finish(self, run_id: str, now: float) -> None:
        self._require()
        script = self._run_scripts["finish"]

        async def op() -> None:
            await script(keys=self._run_keys(run_id), args=[repr(float(now)), self._run_ttl_ms])

        await self._guard(op)

    async def run_cancel(self, run_id: str) -> bool:
        self._require()
        script = self._run_scripts["cancel"]

        async def op() -> int:
            return int(await script(keys=self._run_keys(run_id)[:1], args=[]))

        return await self._guard(op) == 1

    def _require(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreError("Redis store is not open.")
        return self._client

    async def _guard(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisError, OSError) as exc:
            # OSError: a socket error redis-py did not wrap (it wraps most into ConnectionError).
            raise StoreError(f"Redis store failed: {exc}") from exc
