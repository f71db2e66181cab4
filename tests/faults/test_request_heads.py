"""The bounded request head (``srv.BoundedHttpToolsProtocol``) counts head bytes only: a request
whose head and large body arrive in one read is no oversized head."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

import wsproxy.server as srv


class _Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _protocol() -> tuple[srv.BoundedHttpToolsProtocol, _Transport]:
    config = uvicorn.Config(_app, lifespan="off", log_level="warning")
    proto = srv.BoundedHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = _Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    return proto, transport


def _request(body_size: int, extra_headers: bytes = b"") -> bytes:
    return (
        b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n" % body_size
        + extra_headers
        + b"\r\n"
        + b"b" * body_size
    )


async def test_head_and_a_large_body_in_one_read_are_not_an_oversized_head() -> None:
    proto, transport = _protocol()
    proto.data_received(_request(srv.MAX_HEAD_BYTES + 40_000) * 2)  # two whole requests, one read
    for _ in range(20):
        await asyncio.sleep(0)
    assert b" 431 " not in transport.written and not transport.closing
    assert transport.written.count(b"HTTP/1.1 200 OK") == 2


async def test_a_head_over_the_bound_is_still_431() -> None:
    proto, transport = _protocol()
    # A head that trickles in and never ends (no blank line), past the bound.
    head = b"POST /x HTTP/1.1\r\nhost: x\r\nx-pad: " + b"p" * (srv.MAX_HEAD_BYTES + 1000)
    for i in range(0, len(head), 8192):
        proto.data_received(head[i : i + 8192])
        if transport.closing:
            break
    assert transport.written.startswith(b"HTTP/1.1 431 ") and transport.closing
