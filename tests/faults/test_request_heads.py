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


async def test_a_whole_oversized_head_in_one_read_is_431_before_the_app_sees_it() -> None:
    proto, transport = _protocol()
    pad = b"x-pad: " + b"p" * (srv.MAX_HEAD_BYTES + 10) + b"\r\n"
    proto.data_received(_request(10, pad))  # head, body and all in one read
    for _ in range(20):
        await asyncio.sleep(0)
    assert transport.written.startswith(b"HTTP/1.1 431 ") and transport.closing
    assert b"200 OK" not in transport.written


async def test_many_headers_just_under_the_bound_in_one_read_are_accepted() -> None:
    proto, transport = _protocol()
    one = b"x-h: " + b"v" * 1000 + b"\r\n"
    headers = one * ((srv.MAX_HEAD_BYTES - 2000) // len(one))
    proto.data_received(_request(5, headers))
    for _ in range(20):
        await asyncio.sleep(0)
    assert transport.written.startswith(b"HTTP/1.1 200 OK") and not transport.closing


def test_an_oversized_head_sent_at_once_over_a_socket_is_431(proxy: Any) -> None:
    import socket

    body = b'{"model":"local","input":"hi"}'
    request = (
        b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + b"x-pad: " + b"p" * (srv.MAX_HEAD_BYTES + 100) + b"\r\n"
        + b"content-length: %d\r\n\r\n" % len(body) + body
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while len(answer) < 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 ")
