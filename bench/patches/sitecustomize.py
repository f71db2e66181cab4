"""EXPERIMENT: put this file and ``asyncio_backend.py`` into a directory, then run
``python -m bench.run --proxy-src DIR`` (DIR also holding a ``wsproxy`` package) to measure
httpcore2 on :class:`asyncio_backend.AsyncioBackend` instead of anyio. Python imports
``sitecustomize`` at start-up from ``PYTHONPATH``, which the bench sets to DIR for the proxy."""

import httpcore2._backends.auto as _auto
from asyncio_backend import AsyncioBackend


async def _init_backend(self):  # type: ignore[no-untyped-def]
    if not hasattr(self, "_backend"):
        self._backend = AsyncioBackend()


_auto.AutoBackend._init_backend = _init_backend  # type: ignore[method-assign]
