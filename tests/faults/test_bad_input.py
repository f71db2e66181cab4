"""Bad input: each gets the documented error, and the WebSocket stays open where the protocol
allows (a frame over the size limit is a 1009 close and invalid UTF-8 in a text frame a 1007
close: RFC 6455 leaves no other choice). Other sessions are never affected."""

from __future__ import annotations

import asyncio
import json

import httpx2
import pytest
import websockets

from tests.faults.conftest import create, recv_json, until_outcome, ws_connect
from tests.faults.test_keepalive import RawWS

LOCAL_OK = create("local", "fine")

# (frame, status, error.code, error.param)
BAD_FRAMES: list[tuple[str | bytes, int, str, str | None]] = [
    ("{not json", 400, "invalid_json", None),
    ("[1, 2]", 400, "invalid_json", None),
    ('"just a string"', 400, "invalid_json", None),
    ("", 400, "invalid_json", None),
    ("[" * 5000, 400, "invalid_json", None),
    ('{"type": "response.create", "model": "local", "max_output_tokens": 1e400}', 400, "invalid_json", None),
    ('{"type": "response.create", "model": "local", "input": "\\ud800"}', 400, "invalid_json", None),
    ('{"type": "response.create", "model": "local"} trailing', 400, "invalid_json", None),
    ('{"type": "response.cancel"}', 400, "unknown_event_type", "type"),
    ('{"type": 5}', 400, "unknown_event_type", "type"),
    ("{}", 400, "unknown_event_type", "type"),
    ('{"type": "response.create"}', 400, "missing_required_parameter", "model"),
    ('{"type": "response.create", "model": 7}', 400, "invalid_type", "model"),
    (
        '{"type": "response.create", "model": "local", "temperature": "hot"}',
        400,
        "invalid_type",
        "temperature",
    ),
    (
        '{"type": "response.create", "model": "local", "temperature": true}',
        400,
        "invalid_type",
        "temperature",
    ),
    ('{"type": "response.create", "model": "local", "temperature": 9}', 400, "invalid_value", "temperature"),
    ('{"type": "response.create", "model": "local", "input": 5}', 400, "invalid_type", "input"),
    ('{"type": "response.create", "model": "local", "input": [1]}', 400, "invalid_type", "input[0]"),
    ('{"type": "response.create", "model": "local", "bogus": 1}', 400, "unknown_parameter", "bogus"),
    ('{"type": "response.create", "model": "local", "stream_id": ""}', 400, "invalid_stream_id", "stream_id"),
    (
        '{"type": "response.create", "model": "local", "background": true}',
        400,
        "unsupported_parameter",
        "background",
    ),
    ('{"type": "response.create", "model": "nope@x", "input": "x"}', 404, "model_not_found", "model"),
    (b"\x00\xffbinary", 400, "invalid_frame", None),
]


async def test_bad_frames_get_errors_and_the_socket_stays_open(fault_proxy) -> None:
    proxy = fault_proxy()
    async with ws_connect(proxy) as ws:
        for frame, status, code, param in BAD_FRAMES:
            await ws.send(frame)
            event = await recv_json(ws)
            assert event["type"] == "error", (frame, event)
            assert (event["status"], event["error"]["code"], event["error"]["param"]) == (
                status,
                code,
                param,
            ), (frame, event)
            assert event["error"]["message"]
        await ws.send(LOCAL_OK)
        assert (await until_outcome(ws))[-1]["type"] == "response.completed"


async def test_frame_over_the_size_limit_closes_1009(fault_proxy) -> None:
    proxy = fault_proxy(max_ws_message_bytes=64 * 1024)
    async with ws_connect(proxy) as other:
        async with ws_connect(proxy) as ws:
            await ws.send(create("local", "x" * (100 * 1024)))
            with pytest.raises(websockets.ConnectionClosed) as info:
                async with asyncio.timeout(5):
                    await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        # Just under the limit is fine, and the other session never noticed.
        await other.send(create("local", "y " * (30 * 1024)))
        assert (await until_outcome(other))[-1]["type"] == "response.completed"


async def test_invalid_utf8_text_frame_closes_1007(fault_proxy) -> None:
    proxy = fault_proxy()
    ws = RawWS(proxy)
    try:
        await ws.open()
        ws.proto.send_text(b'{"type": "response.create", "model": "local", "input": "\xff\xfe"}')
        await ws.loop.sock_sendall(ws.sock, b"".join(ws.proto.data_to_send()))
        async with asyncio.timeout(5):
            while ws.proto.close_rcvd is None:
                await ws.receive()
    finally:
        ws.close()
    assert ws.proto.close_rcvd.code == 1007


async def test_flood_of_creates_is_bounded_and_answered(fault_proxy) -> None:
    proxy = fault_proxy(ws_max_queued=4, ws_max_inflight=1)
    n = 60
    async with ws_connect(proxy) as ws:
        for i in range(n):
            await ws.send(create("up@slow-5", f"flood {i}"))
        outcomes = []
        async with asyncio.timeout(30):
            while len(outcomes) < n:
                outcomes.append((await until_outcome(ws))[-1])
        kinds = [o["type"] for o in outcomes]
        refused = [o for o in outcomes if o["type"] == "error"]
        assert kinds.count("response.completed") >= 5, "the running one and the queued ones ran"
        assert refused, "the flood was refused past the queue limit"
        assert {(o["status"], o["error"]["code"]) for o in refused} == {(400, "too_many_queued_responses")}
        await ws.send(LOCAL_OK)
        assert (await until_outcome(ws))[-1]["type"] == "response.completed"


# -- HTTP -------------------------------------------------------------------------------------

BAD_BODIES: list[tuple[bytes, int, str, str | None]] = [
    (b"{not json", 400, "invalid_json", None),
    (b"\xff\xfe{}", 400, "invalid_json", None),
    (b'{"model": "local", "input": "\xff"}', 400, "invalid_json", None),
    (b"[]", 400, "invalid_json", None),
    (b"", 400, "invalid_json", None),
    (b'{"model": "local", "input": "x", "temperature": "hot"}', 400, "invalid_type", "temperature"),
    (b'{"model": "local", "input": "x", "stream_id": "a"}', 400, "unknown_parameter", "stream_id"),
    (b'{"input": "x"}', 400, "missing_required_parameter", "model"),
]


@pytest.mark.parametrize("body,status,code,param", BAD_BODIES, ids=[repr(b[0][:20]) for b in BAD_BODIES])
async def test_bad_bodies_get_errors(fault_proxy, body, status, code, param) -> None:
    proxy = fault_proxy()
    async with httpx2.AsyncClient(timeout=5) as client:
        r = await client.post(
            proxy.url + "/v1/responses", content=body, headers={"content-type": "application/json"}
        )
    assert r.status_code == status
    error = r.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert r.headers["x-should-retry"] == "false"


async def test_body_over_the_limit_is_413(fault_proxy) -> None:
    proxy = fault_proxy(max_body_bytes=64 * 1024)
    big = json.dumps({"model": "local", "input": "x" * (100 * 1024)}).encode()

    async def chunked():  # no content-length: the limit is enforced while reading
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    async with httpx2.AsyncClient(timeout=5) as client:
        json_type = {"content-type": "application/json"}  # other POST bodies are 415
        declared = await client.post(proxy.url + "/v1/responses", content=big, headers=json_type)
        streamed = await client.post(proxy.url + "/v1/responses", content=chunked(), headers=json_type)
        ok = await client.post(proxy.url + "/v1/responses", json={"model": "local", "input": "small"})
    for r in (declared, streamed):
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert ok.status_code == 200


async def test_huge_headers_are_431_and_the_server_lives_on(proxy_process) -> None:
    proxy = proxy_process()
    for path, extra in (
        ("/v1/responses", b""),
        (
            "/v1/responses",
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(
            b"GET "
            + path.encode()
            + b" HTTP/1.1\r\nHost: x\r\n"
            + extra
            + b"X-Big: "
            + b"a" * (200 * 1024)
            + b"\r\n\r\n"
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        async with asyncio.timeout(5):
            head = await reader.read(200)
        writer.close()
        assert head.startswith(b"HTTP/1.1 431"), head
    rss = proxy.rss_kib()
    async with httpx2.AsyncClient(timeout=5) as client:
        normal = await client.post(
            proxy.url + "/v1/responses",
            json={"model": "local", "input": "after"},
            headers={"x-fine": "b" * 8000},
        )
    assert normal.status_code == 200
    assert proxy.rss_kib() - rss < 4096
