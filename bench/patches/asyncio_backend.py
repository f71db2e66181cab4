"""EXPERIMENT (not used by wsproxy): an asyncio-native network backend for httpcore2.

httpcore2 runs on anyio under asyncio. Every upstream read then costs an ``anyio.fail_after``
cancel scope, an exception-mapping context manager, and a ``pause_reading``/``resume_reading``
pair (two ``epoll_ctl`` calls on uvloop) -- tens of microseconds per chunk, paid once per delta
when deltas arrive one per chunk. This backend keeps reading enabled (bounded buffer), returns
buffered data without suspending, and arms a timer only when a read really has to wait and a
timeout was asked for.

Plain TCP only (no ``start_tls``): enough to measure the gain against the benchmark's cleartext
upstream. ``bench/patches/sitecustomize.py`` installs it into a proxy process for an A/B run
(``python -m bench.run --proxy-src DIR`` with both files copied into DIR).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from typing import Any

import httpcore2
from httpcore2._backends.base import AsyncNetworkBackend, AsyncNetworkStream
from httpcore2._utils import is_socket_readable

HIGH_WATER = 1 << 20


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self.exc: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.drain: asyncio.Future[None] | None = None
        self.read_paused = False
        self.write_paused = False
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buf.append(data)
        self.size += len(data)
        if self.size > HIGH_WATER and not self.read_paused:
            self.transport.pause_reading()
            self.read_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.exc = exc
        self._wake()
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)


class _Stream(AsyncNetworkStream):
    def __init__(self, transport: Any, protocol: _Protocol) -> None:
        self._t = transport
        self._p = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        p = self._p
        if not p.buf:
            if p.eof:
                if p.exc is not None:
                    raise httpcore2.ReadError(str(p.exc))
                return b""
            loop = asyncio.get_running_loop()
            waiter = p.waiter = loop.create_future()
            timed_out = False

            def expire() -> None:
                nonlocal timed_out
                timed_out = True
                waiter.cancel()

            handle = loop.call_later(timeout, expire) if timeout is not None else None
            try:
                await waiter
            except asyncio.CancelledError:
                if timed_out:
                    raise httpcore2.ReadTimeout("read timed out") from None
                raise
            finally:
                if handle is not None:
                    handle.cancel()
                p.waiter = None
            if not p.buf:
                if p.exc is not None:
                    raise httpcore2.ReadError(str(p.exc))
                return b""
        data = p.buf.popleft()
        if len(data) > max_bytes:
            p.buf.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        p.size -= len(data)
        if p.read_paused and p.size < HIGH_WATER // 4:
            p.read_paused = False
            self._t.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._t.is_closing():
            raise httpcore2.WriteError("connection closed")
        self._t.write(buffer)
        p = self._p
        if p.write_paused:
            p.drain = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await p.drain
            except TimeoutError:
                raise httpcore2.WriteTimeout("write timed out") from None

    async def aclose(self) -> None:
        self._t.close()

    async def start_tls(self, *args: Any, **kwargs: Any) -> AsyncNetworkStream:
        raise NotImplementedError("experiment: cleartext only")

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._t.get_extra_info("socket")
        if info == "is_readable":
            sock = self._t.get_extra_info("socket")
            return bool(self._p.buf) or self._p.eof or (sock is not None and is_socket_readable(sock))
        if info == "client_addr":
            return self._t.get_extra_info("sockname")
        if info == "server_addr":
            return self._t.get_extra_info("peername")
        return None


class AsyncioBackend(AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _Protocol, host, port, local_addr=(local_address, 0) if local_address else None
                )
        except TimeoutError:
            raise httpcore2.ConnectTimeout("connect timed out") from None
        except OSError as exc:
            raise httpcore2.ConnectError(str(exc)) from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in socket_options or ():
                sock.setsockopt(*option)
        return _Stream(transport, protocol)

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> AsyncNetworkStream:
        raise NotImplementedError("experiment: TCP only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
