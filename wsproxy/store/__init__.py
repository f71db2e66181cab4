"""Response stores: the ``ResponseStore`` protocol and its memory, SQLite and Redis backends."""

from wsproxy.store.base import ResponseStore, StoredResponse

__all__ = ["ResponseStore", "StoredResponse"]
