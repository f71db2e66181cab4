"""Redis response store: ``ResponseStore`` on a Redis server, for several proxies sharing state.

Layout, all under ``key_prefix``:

* ``{prefix}resp:{id}``  the record's JSON blob (``StoredResponse.dumps``), written with
  ``SET ... PX ttl`` so Redis expires it by itself even if no proxy ever purges;
* ``{prefix}index``      a sorted set of ids scored by ``created_at``, used by ``purge`` to drop
  expired ids and to enforce ``max_records`` (oldest first);
* ``{prefix}idem:{key}`` an idempotency key bound to a response id with ``SET NX PX ttl``;
* ``{prefix}conv:{id}`` a hash (``data``: the conversation record, ``updated_at``), with
  ``{prefix}conv:{id}:order`` (a sorted set of item ids scored by position) and
  ``{prefix}conv:{id}:items`` (a hash item id -> item JSON); all three get ``PEXPIRE ttl`` again on
  every write, so a conversation expires ``ttl`` after its last use;
* ``{prefix}convindex`` a sorted set of conversation ids scored by last write, for ``purge``;
* ``{prefix}lim:{counter}`` a limit counter (one per principal, limit and window), checked and
  charged for all the limits of a request at once by one Lua script (atomic, so N replicas
  enforce one limit), expiring (PEXPIREAT) a little after its window;
* ``{prefix}usage:{date}`` a hash per UTC day, fields ``{key}\x1f{model}\x1f{counter}``
  raised with HINCRBY, expiring ``usage_days`` after the day;
* ``{prefix}cache:{hash}`` a response-cache entry, ``SET ... PXAT``;
* ``{prefix}run:{id}``   the state of a background run's log (a hash: owner, snapshot, done,
  cancel, events, last_seq, updated_at) and ``{prefix}runev:{id}`` its events (a sorted set
  scored by sequence number, each member ``type\\n`` + JSON), both expiring ``run_ttl`` after
  the owner's last write (there is no count bound on runs: the TTL is the bound). Appending,
  finishing and cancelling are Lua scripts, so a log never exists half-written.

Conversation writes that must check before they write (append, delete an item, update) are Lua
scripts, so they are atomic against other proxies on the same Redis.

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

import datetime as _dt
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from wsproxy.core.conversations import ItemPage, ListParams, StoredConversation
from wsproxy.errors import StoreError
from wsproxy.policy.usage import dates_between
from wsproxy.store.base import (
    RUN_MAX_EVENTS,
    RUN_TTL_SECONDS,
    USAGE_FIELDS,
    Charge,
    RunEvent,
    RunLog,
    StoredResponse,
    usage_row,
)

T = TypeVar("T")

# The ids one purge batch removes (the start of both purge scripts).
# KEYS[1] = index; ARGV = mode, bound, batch, key prefix.
# mode "ttl": bound is the cutoff, drop ids scored strictly below it.
# mode "size": bound is max_records, drop the oldest ids beyond it.
_PURGE_SELECT_LUA = """
local ids
local batch = tonumber(ARGV[3])
if ARGV[1] == 'ttl' then
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, batch)
else
  local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
  if excess <= 0 then return 0 end
  ids = redis.call('ZRANGE', KEYS[1], 0, math.min(excess, batch) - 1)
end
"""

# One purge batch of stored responses, atomically: each id owns one key (prefix .. id).
# Returns how many ids were removed from the index.
_PURGE_LUA = (
    _PURGE_SELECT_LUA
    + """
local removed = 0
for _, id in ipairs(ids) do
  redis.call('UNLINK', ARGV[4] .. id)
  removed = removed + redis.call('ZREM', KEYS[1], id)
end
return removed
"""
)

# KEYS: conv, order, items, index. ARGV: now, max_items, ttl_ms, conv_id, n, id1, blob1, ...
_APPEND_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'not_found' end
local n = tonumber(ARGV[5])
local seen = {}
for i = 1, n do
  local id = ARGV[4 + 2 * i]
  if seen[id] or redis.call('HEXISTS', KEYS[3], id) == 1 then return 'duplicate' end
  seen[id] = true
end
if redis.call('ZCARD', KEYS[2]) + n > tonumber(ARGV[2]) then return 'full' end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local seq = 0
if #last > 0 then seq = tonumber(last[2]) + 1 end
for i = 1, n do
  redis.call('ZADD', KEYS[2], seq + i - 1, ARGV[4 + 2 * i])
  redis.call('HSET', KEYS[3], ARGV[4 + 2 * i], ARGV[5 + 2 * i])
end
local old = tonumber(redis.call('HGET', KEYS[1], 'updated_at') or '0')
local now = tonumber(ARGV[1])
if now > old then
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[1])
  redis.call('ZADD', KEYS[4], now, ARGV[4])
end
for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], ARGV[3]) end
return 'ok'
"""

# KEYS: conv, order, items. ARGV: after ('' for none), count, asc ('1' or '0').
# Returns false when the conversation or the ``after`` item is missing, else the item blobs.
_LIST_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local asc = ARGV[3] == '1'
local start = 0
if ARGV[1] ~= '' then
  local r
  if asc then r = redis.call('ZRANK', KEYS[2], ARGV[1]) else r = redis.call('ZREVRANK', KEYS[2], ARGV[1]) end
  if not r then return false end
  start = r + 1
end
local stop = start + tonumber(ARGV[2]) - 1
local ids
if asc then
  ids = redis.call('ZRANGE', KEYS[2], start, stop)
else
  ids = redis.call('ZREVRANGE', KEYS[2], start, stop)
end
local out = {}
-- HMGET in chunks: unpack() of thousands of arguments overflows the Lua stack.
for i = 1, #ids, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #ids) do chunk[#chunk + 1] = ids[j] end
  local blobs = redis.call('HMGET', KEYS[3], unpack(chunk))
  for _, b in ipairs(blobs) do out[#out + 1] = b end
end
return out
"""

# KEYS: conv, order, items, index. ARGV: item_id, now, ttl_ms, conv_id. Returns 1 if removed.
_DELETE_ITEM_LUA = """
local removed = redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if removed == 1 and redis.call('EXISTS', KEYS[1]) == 1 then
  local old = tonumber(redis.call('HGET', KEYS[1], 'updated_at') or '0')
  if tonumber(ARGV[2]) > old then
    redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
    redis.call('ZADD', KEYS[4], tonumber(ARGV[2]), ARGV[4])
  end
  for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], ARGV[3]) end
end
return removed
"""

# KEYS: conv, order, items, index. ARGV: data, now, ttl_ms, conv_id. Returns 0 if missing.
_UPDATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[1])
local old = tonumber(redis.call('HGET', KEYS[1], 'updated_at') or '0')
if tonumber(ARGV[2]) > old then
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
  redis.call('ZADD', KEYS[4], tonumber(ARGV[2]), ARGV[4])
end
for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], ARGV[3]) end
return 1
"""

# One conversation purge batch; like _PURGE_LUA, but each id owns three keys.
# KEYS[1] = convindex; ARGV[4] = conversation-key prefix.
_PURGE_CONV_LUA = (
    _PURGE_SELECT_LUA
    + """
local removed = 0
for _, id in ipairs(ids) do
  local base = ARGV[4] .. id
  redis.call('UNLINK', base, base .. ':order', base .. ':items')
  removed = removed + redis.call('ZREM', KEYS[1], id)
end
return removed
"""
)


# Check-and-charge of every limit of one request, atomically. KEYS = counters; ARGV = for each
# key: amount, limit, expires_at (ms). Returns 0 when all were charged, else the 1-based index of
# the first counter that would pass its limit (then nothing was charged).
_TAKE_LUA = """
for i = 1, #KEYS do
  local current = tonumber(redis.call('GET', KEYS[i]) or '0')
  if current + tonumber(ARGV[3 * i - 2]) > tonumber(ARGV[3 * i - 1]) then return i end
end
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[3 * i - 2])
  redis.call('PEXPIREAT', KEYS[i], ARGV[3 * i])
end
return 0
"""

# A settlement: add ARGV[1] (may be negative) without going below 0; keep until ARGV[2] (ms).
_ADJUST_LUA = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if value < 0 then redis.call('SET', KEYS[1], 0) end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 0
"""

_SEP = "\x1f"


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
        usage_days: int = 400,
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
        self.usage_days = usage_days
        self.run_ttl = float(run_ttl_seconds)
        self._run_ttl_ms = max(1, math.ceil(self.run_ttl * 1000))
        self.run_max_events = run_max_events
        self._run_scripts: dict[str, Any] = {}
        self._index = f"{key_prefix}index"
        self._take_script: Any = None
        self._adjust_script: Any = None
        self._client: aioredis.Redis | None = None
        self._pool: aioredis.BlockingConnectionPool | None = None
        self._purge_script: Any = None
        self._conv_index = f"{key_prefix}convindex"
        self._scripts: dict[str, Any] = {}

    def _conv_keys(self, conversation_id: str) -> list[str]:
        base = f"{self.prefix}conv:{conversation_id}"
        return [base, f"{base}:order", f"{base}:items", self._conv_index]

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
        self._take_script = client.register_script(_TAKE_LUA)
        self._adjust_script = client.register_script(_ADJUST_LUA)
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("append", _APPEND_LUA),
                ("list", _LIST_LUA),
                ("delete_item", _DELETE_ITEM_LUA),
                ("update", _UPDATE_LUA),
                ("purge", _PURGE_CONV_LUA),
            )
        }

    async def close(self) -> None:
        client, self._client = self._client, None
        self._pool = None
        self._purge_script = None
        self._run_scripts = {}
        self._scripts = {}
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
        cutoff = repr(float(now - self.ttl))
        dropped = 0
        budget = self.purge_max_batches
        # Responses first, then conversations; each by TTL, then by size.
        kinds = (
            (self._purge_script, self._index, f"{self.prefix}resp:"),
            (self._scripts["purge"], self._conv_index, f"{self.prefix}conv:"),
        )
        for script, index, key_prefix in kinds:
            for mode, bound in (("ttl", cutoff), ("size", str(self.max_records))):
                while budget > 0:
                    budget -= 1
                    n = await self._purge_batch(script, index, [mode, bound, self.purge_batch, key_prefix])
                    dropped += n
                    if n < self.purge_batch:
                        break
        return dropped

    async def _purge_batch(self, script: Any, index: str, args: list[Any]) -> int:
        async def op() -> int:
            return int(await script(keys=[index], args=args))

        return await self._guard(op)

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

    # ------------------------------------------------------------------ conversations

    async def create_conversation(
        self, conversation: StoredConversation, items: list[dict[str, Any]]
    ) -> None:
        client = self._require()
        conv, order, items_key, index = self._conv_keys(conversation.id)
        data = conversation.dumps()
        blobs = {str(item["id"]): orjson.dumps(item) for item in items}

        async def op() -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(conv, order, items_key)
                pipe.hset(conv, mapping={"data": data, "updated_at": repr(float(conversation.updated_at))})
                if items:
                    pipe.zadd(order, {str(item["id"]): i for i, item in enumerate(items)})
                    pipe.hset(items_key, mapping=blobs)  # type: ignore[arg-type]
                for key in (conv, order, items_key):
                    pipe.pexpire(key, self._ttl_ms)
                pipe.zadd(index, {conversation.id: float(conversation.updated_at)})
                await pipe.execute()

        await self._guard(op)

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        client = self._require()
        conv = self._conv_keys(conversation_id)[0]

        async def op() -> list[Any]:
            values: list[Any] = await client.hmget(conv, ["data", "updated_at"])
            return values

        data, updated = await self._guard(op)
        if data is None:
            return None
        try:
            record = StoredConversation.loads(data)
            if updated is not None:
                record.updated_at = float(updated)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(
                f"Redis store holds an unreadable conversation {conversation_id!r}: {exc}"
            ) from exc
        return record

    async def update_conversation(
        self, conversation_id: str, metadata: dict[str, str], now: float
    ) -> StoredConversation | None:
        current = await self.get_conversation(conversation_id)
        if current is None:
            return None
        current.metadata = dict(metadata)
        current.updated_at = max(current.updated_at, now)
        script = self._scripts["update"]
        keys = self._conv_keys(conversation_id)

        async def op() -> int:
            return int(
                await script(
                    keys=keys, args=[current.dumps(), repr(float(now)), self._ttl_ms, conversation_id]
                )
            )

        return current if await self._guard(op) else None

    async def delete_conversation(self, conversation_id: str) -> bool:
        client = self._require()
        conv, order, items_key, index = self._conv_keys(conversation_id)

        async def op() -> bool:
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(conv)
                pipe.delete(order, items_key)
                pipe.zrem(index, conversation_id)
                deleted, _, _ = await pipe.execute()
            return int(deleted) > 0

        return await self._guard(op)

    async def append_items(
        self, conversation_id: str, items: list[dict[str, Any]], now: float, max_items: int
    ) -> str:
        script = self._scripts.get("append")
        self._require()
        args: list[Any] = [repr(float(now)), max_items, self._ttl_ms, conversation_id, len(items)]
        for item in items:
            args += [str(item["id"]), orjson.dumps(item)]
        keys = self._conv_keys(conversation_id)

        async def op() -> str:
            result = await script(keys=keys, args=args)  # type: ignore[misc]
            return result.decode() if isinstance(result, bytes) else str(result)

        return await self._guard(op)

    async def list_items(self, conversation_id: str, params: ListParams) -> ItemPage | None:
        script = self._scripts.get("list")
        self._require()
        keys = self._conv_keys(conversation_id)[:3]
        args = [params.after or "", params.limit + 1, "1" if params.order == "asc" else "0"]

        async def op() -> list[Any] | None:
            result: list[Any] | None = await script(keys=keys, args=args)  # type: ignore[misc]
            return result

        blobs = await self._guard(op)
        if blobs is None:
            return None
        items = [orjson.loads(b) for b in blobs[: params.limit] if b is not None]
        return ItemPage(items=items, has_more=len(blobs) > params.limit)

    async def get_item(self, conversation_id: str, item_id: str) -> dict[str, Any] | None:
        client = self._require()
        items_key = self._conv_keys(conversation_id)[2]

        async def op() -> Any:
            return await client.hget(items_key, item_id)

        blob = await self._guard(op)
        if blob is None:
            return None
        item: dict[str, Any] = orjson.loads(blob)
        return item

    async def delete_item(self, conversation_id: str, item_id: str, now: float) -> bool:
        script = self._scripts.get("delete_item")
        self._require()
        keys = self._conv_keys(conversation_id)

        async def op() -> bool:
            args = [item_id, repr(float(now)), self._ttl_ms, conversation_id]
            return int(await script(keys=keys, args=args)) > 0  # type: ignore[misc]

        return await self._guard(op)

    # ------------------------------------------------------------------ limits, usage, cache

    async def take_limits(self, charges: Sequence[Charge], now: float) -> int:
        # ``now`` is not needed: counters expire on Redis's clock and name their window.
        self._require()
        script = self._take_script
        keys = [f"{self.prefix}lim:{c.key}" for c in charges]
        args: list[int] = []
        for c in charges:
            args.extend((int(c.amount), int(c.limit), int(c.expires_at * 1000)))

        async def op() -> int:
            return int(await script(keys=keys, args=args))

        return await self._guard(op) - 1

    async def adjust_limit(self, key: str, delta: int, expires_at: float) -> None:
        self._require()
        script = self._adjust_script

        async def op() -> None:
            await script(keys=[f"{self.prefix}lim:{key}"], args=[int(delta), int(expires_at * 1000)])

        await self._guard(op)

    async def add_usage(self, date: str, key: str, model: str, counts: Sequence[int]) -> None:
        client = self._require()
        name = f"{self.prefix}usage:{date}"
        expire_at = int(_day_start(date) + (self.usage_days + 1) * 86400)

        async def op() -> None:
            async with client.pipeline(transaction=True) as pipe:
                for field_name, n in zip(USAGE_FIELDS, counts, strict=True):
                    if n:
                        pipe.hincrby(name, f"{key}{_SEP}{model}{_SEP}{field_name}", int(n))
                pipe.expireat(name, expire_at)
                await pipe.execute()

        await self._guard(op)

    async def usage(self, key: str | None, start: str, end: str) -> list[dict[str, Any]]:
        client = self._require()
        dates = dates_between(start, end)

        async def op() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for date in dates:
                    pipe.hgetall(f"{self.prefix}usage:{date}")
                result: list[Any] = await pipe.execute()
                return result

        rows: list[dict[str, Any]] = []
        for date, fields in zip(dates, await self._guard(op), strict=True):
            by_row: dict[tuple[str, str], list[int]] = {}
            for raw_field, raw_value in fields.items():
                text = raw_field.decode() if isinstance(raw_field, bytes) else str(raw_field)
                row_key, _, rest = text.partition(_SEP)
                model, _, counter = rest.rpartition(_SEP)
                if (key is not None and row_key != key) or counter not in USAGE_FIELDS:
                    continue
                counts = by_row.setdefault((row_key, model), [0] * len(USAGE_FIELDS))
                counts[USAGE_FIELDS.index(counter)] = int(raw_value)
            rows.extend(usage_row(date, k, m, c) for (k, m), c in by_row.items())
        return sorted(rows, key=lambda r: (r["date"], r["key"], r["model"]))

    async def cache_get(self, key: str, now: float) -> bytes | None:
        client = self._require()

        async def op() -> bytes | None:
            data: bytes | str | None = await client.get(f"{self.prefix}cache:{key}")
            return data.encode() if isinstance(data, str) else data

        return await self._guard(op)

    async def cache_put(self, key: str, data: bytes, expires_at: float) -> None:
        client = self._require()

        async def op() -> None:
            await client.set(f"{self.prefix}cache:{key}", data, pxat=int(expires_at * 1000))

        await self._guard(op)

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

    # ------------------------------------------------------------------ plumbing

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


def _day_start(date: str) -> float:
    return _dt.datetime.combine(_dt.date.fromisoformat(date), _dt.time(), _dt.UTC).timestamp()
