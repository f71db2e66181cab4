"""Build the configured ``ResponseStore`` backend by name.

Role: the one place that maps ``store.backend`` ("memory", "sqlite", "redis") to a class. Backends
are imported lazily, so the optional ``redis`` dependency is only needed when it is chosen. The
store is returned unopened: the caller owns ``open()``/``close()``. This module must not open
files or connections itself.
"""

from __future__ import annotations

from wsproxy.store.base import ResponseStore

BACKENDS = ("memory", "sqlite", "redis")


def make_store(
    backend: str, *, path: str, url: str, ttl_seconds: float, max_records: int, usage_days: int = 400
) -> ResponseStore:
    """Return an unopened store; ``path`` is used by sqlite, ``url`` by redis, neither by memory."""
    if backend == "memory":
        from wsproxy.store.memory import MemoryStore

        return MemoryStore(ttl_seconds=ttl_seconds, max_records=max_records, usage_days=usage_days)
    if backend == "sqlite":
        from wsproxy.store.sqlite import SQLiteStore

        return SQLiteStore(path, ttl_seconds=ttl_seconds, max_records=max_records, usage_days=usage_days)
    if backend == "redis":
        try:
            from wsproxy.store.redis import RedisStore
        except ImportError as exc:
            # Keep it an ImportError (a deployment problem, not a bad value), with the fix in it.
            raise ImportError(
                "store backend 'redis' needs the redis package: pip install 'wsproxy[redis]'"
            ) from exc
        return RedisStore(url, ttl_seconds=ttl_seconds, max_records=max_records, usage_days=usage_days)
    raise ValueError(f"unknown store backend {backend!r}; expected one of {', '.join(BACKENDS)}")
