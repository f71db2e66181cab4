"""Keepalive: while a model thinks (the upstream is silent), WebSocket pings and SSE comments keep
the connection alive through intermediaries; a WebSocket peer that stops answering pings is
detected, and its session and upstream request are cleaned up."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.faults.conftest import create, metric, metrics, wait_upstream, ws_url

# The upstream thinks for 1.5 s between response.in_progress and its first delta.
THINK = "up@think-1500"
PATIENT = {"up": {"idle_timeout": 5.0}}


def marker() -> str:
    return "m" + uuid.uuid4().hex[:12]


class RawWS:
    """A WebSocket client on a raw socket (websockets' sans-I/O protocol): it sees every frame,
    pings included, and can be told to stop answering them."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.proto = ClientProtocol(parse_uri(ws_url(proxy)), max_size=None)
        self.sock = socket.create_connection(("127.0.0.1", proxy.port))
        self.sock.setblocking(False)
        self.loop = asyncio.get_running_loop()
        self.pings: list[float] = []
        self.answer_pings = True

    async def flush(self) -> None:
        data = b"".join(self.proto.data_to_send())
        if data and self.answer_pings:
            await self.loop.sock_sendall(self.sock, data)

    async def open(self) -> None:
        self.proto.send_request(self.proto.connect())
        await self.flush()
        while True:
            for event in await self.receive():
                if isinstance(event, Response):
                    assert event.status_code == 101
                    return

    async def receive(self) -> list[Any]:
        data = await self.loop.sock_recv(self.sock, 65536)
        if data:
            self.proto.receive_data(data)
        else:
            self.proto.receive_eof()
        events = self.proto.events_received()
        for event in events:
            if getattr(event, "opcode", None) is Opcode.PING:
                self.pings.append(time.monotonic())
        await self.flush()  # pongs go out here (unless told not to answer)
        return events

    async def send_text(self, text: str) -> None:
        self.proto.send_text(text.encode())
        await self.loop.sock_sendall(self.sock, b"".join(self.proto.data_to_send()))

    async def messages_until_terminal(self, timeout: float) -> list[tuple[float, dict[str, Any]]]:
        out: list[tuple[float, dict[str, Any]]] = []
        async with asyncio.timeout(timeout):
            while True:
                for event in await self.receive():
                    if getattr(event, "opcode", None) is Opcode.TEXT:
                        message = json.loads(event.data)
                        out.append((time.monotonic(), message))
                        if message["type"] in ("response.completed", "response.failed"):
                            return out

    def close(self) -> None:
        self.sock.close()


async def test_websocket_pings_while_the_model_thinks(fault_proxy) -> None:
    proxy = fault_proxy(providers=PATIENT, ws_ping_interval=0.2, ws_ping_timeout=1.0)
    ws = RawWS(proxy)
    try:
        await ws.open()
        await ws.send_text(create(THINK, "think hard"))
        messages = await ws.messages_until_terminal(10)
    finally:
        ws.close()
    assert messages[-1][1]["type"] == "response.completed"
    in_progress = next(t for t, m in messages if m["type"] == "response.in_progress")
    first_delta = next(t for t, m in messages if m["type"] == "response.output_text.delta")
    assert first_delta - in_progress >= 1.4
    during = [t for t in ws.pings if in_progress <= t <= first_delta]
    assert len(during) >= 4, f"pings kept the silent connection alive: {len(during)}"


async def test_dead_websocket_peer_is_detected_and_cleaned_up(fault_proxy, fault_upstream) -> None:
    fake, _ = fault_upstream
    proxy = fault_proxy(providers=PATIENT, ws_ping_interval=0.2, ws_ping_timeout=0.5)
    m = marker()
    ws = RawWS(proxy)
    try:
        await ws.open()
        await ws.send_text(create("up@think-4000", m))
        ws.answer_pings = False  # the peer is gone: nothing it would send arrives any more
        # Without pongs the proxy fails the connection after ping_interval + ping_timeout...
        closed_at = None
        async with asyncio.timeout(5):
            while not ws.proto.close_rcvd and ws.proto.state.name != "CLOSED":
                await ws.receive()
            closed_at = time.monotonic()
        assert ws.proto.close_rcvd is not None and ws.proto.close_rcvd.code == 1011
    finally:
        ws.close()
    assert closed_at is not None
    # ...cancels the upstream request at once (it was still thinking)...
    assert await wait_upstream(fake, lambda: fake.find(m)[0]["disconnected"], 3.0)
    assert not fake.find(m)[0]["finished"]
    # ...and the session is gone.
    values = await metrics(proxy)
    assert metric(values, "wsproxy_ws_sessions") == 0
    assert metric(values, "wsproxy_active_responses") == 0


async def test_sse_comments_while_the_model_thinks(fault_proxy) -> None:
    proxy = fault_proxy(providers=PATIENT, sse_keepalive_interval=0.2)
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.setblocking(False)
    body = json.dumps({"model": THINK, "input": "think", "stream": True}).encode()
    request = (
        b"POST /v1/responses HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    chunks: list[tuple[float, bytes]] = []
    try:
        await loop.sock_sendall(sock, request)
        async with asyncio.timeout(10):
            while True:
                chunk = await loop.sock_recv(sock, 65536)
                chunks.append((time.monotonic(), chunk))
                if not chunk or b"response.completed" in chunk:
                    break
    finally:
        sock.close()
    text = b"".join(c for _, c in chunks)
    assert b"response.completed" in text
    in_progress = next(t for t, c in chunks if b"response.in_progress" in c)
    first_delta = next(t for t, c in chunks if b"response.output_text.delta" in c)
    # (chunked transfer encoding: each chunk is "<size>\r\n<data>\r\n")
    comments = [t for t, c in chunks if b"\r\n: keepalive\n\n\r\n" in c and in_progress <= t < first_delta]
    assert len(comments) >= 4, f"comments kept the silent stream alive: {len(comments)}"
