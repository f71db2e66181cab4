"""permessage-deflate in WebSocket mode, on the uvicorn configuration ``wsproxy serve`` runs
(``srv.build_config``): negotiated with the ``websockets`` client library (which the openai SDK
uses), zlib streams created only on first use, and ``limits.ws_compression = false``."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from websockets import frames
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate
from websockets.sync.client import connect

import wsproxy.server as srv
from tests.e2e.cliserver import CliServer
from tests.e2e.sdk import client

TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")


def one_session(server: CliServer, timeout: float = 5.0) -> srv.LeanWebSocketProtocol:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions = [s for s in server.ws_sessions() if s.handshake_complete]
        if len(sessions) == 1:
            return sessions[0]
        time.sleep(0.01)
    raise AssertionError(f"expected one WebSocket session, found {len(server.ws_sessions())}")


def run_response(ws: Any, **fields: Any) -> list[dict[str, Any]]:
    ws.send(json.dumps({"type": "response.create", "model": "local", **fields}))
    events = []
    for _ in range(2000):
        event = json.loads(ws.recv(timeout=10))
        events.append(event)
        if event["type"] in TERMINAL:
            return events
    raise AssertionError("no terminal event")


def test_websockets_client_negotiates_the_lean_deflate_and_streams(make_cli_proxy: Any) -> None:
    server = make_cli_proxy()
    url = f"ws://127.0.0.1:{server.port}/v1/responses"
    with connect(url, compression="deflate", open_timeout=5) as ws:
        (ext,) = ws.protocol.extensions
        assert isinstance(ext, PerMessageDeflate)
        # The server's window, as the client was told to expect it, and the client's.
        assert ext.remote_max_window_bits == srv.DEFLATE_SERVER_WINDOW_BITS
        assert ext.local_max_window_bits == srv.DEFLATE_CLIENT_WINDOW_BITS

        (server_ext,) = one_session(server).conn.extensions
        assert isinstance(server_ext, srv.LazyPerMessageDeflate)
        # An idle session holds no zlib stream yet.
        assert "encoder" not in vars(server_ext)
        assert "decoder" not in vars(server_ext)

        first = run_response(ws, input="first turn, compressed", store=False)
        assert first[0]["type"] == "response.created"
        assert first[-1]["type"] == "response.completed"
        assert [e["sequence_number"] for e in first] == list(range(len(first)))
        # Both directions went through zlib: the client compressed its request, the server its events.
        assert "encoder" in vars(server_ext)
        assert "decoder" in vars(server_ext)

        # Context takeover across messages: later frames refer back to earlier ones.
        rid = first[-1]["response"]["id"]
        second = run_response(ws, input="second turn", store=False, previous_response_id=rid)
        assert second[-1]["type"] == "response.completed"
        assert second[-1]["response"]["previous_response_id"] == rid
        usage = [turn[-1]["response"]["usage"]["input_tokens"] for turn in (first, second)]
        assert usage[1] > usage[0]


def test_openai_sdk_with_deflate_offered(make_cli_proxy: Any) -> None:
    # The SDK leaves compression off unless given a max_size; then the websockets default
    # (deflate) applies.
    server = make_cli_proxy()
    options = {"max_size": 16 * 1024 * 1024, "compression": "deflate"}
    with client(server).responses.connect(websocket_connection_options=options) as conn:  # type: ignore[arg-type]
        (server_ext,) = one_session(server).conn.extensions
        assert isinstance(server_ext, srv.LazyPerMessageDeflate)
        for turn in range(3):
            conn.response.create(model="local", input=f"turn {turn}", store=False)
            events = []
            for _ in range(2000):
                event = conn.recv()
                events.append(event)
                if event.type in TERMINAL:
                    break
            assert events[0].type == "response.created"
            assert events[-1].type == "response.completed"
        assert "encoder" in vars(server_ext)


def test_compression_off_negotiates_nothing(make_cli_proxy: Any) -> None:
    server = make_cli_proxy(ws_compression=False)
    url = f"ws://127.0.0.1:{server.port}/v1/responses"
    with connect(url, compression="deflate", open_timeout=5) as ws:
        assert ws.protocol.extensions == []
        assert one_session(server).conn.extensions == []
        assert run_response(ws, input="uncompressed", store=False)[-1]["type"] == "response.completed"


# -- the extension on its own, against websockets' client side ----------------------------------------


def negotiate(**client_options: Any) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    factory = ClientPerMessageDeflateFactory(**client_options)
    response, server_ext = srv.LEAN_DEFLATE.process_request_params(factory.get_request_params(), [])
    client_ext = factory.process_response_params(response, [])
    assert isinstance(server_ext, srv.LazyPerMessageDeflate)
    return client_ext, server_ext


def deltas(n: int) -> list[bytes]:
    return [
        b'{"type":"response.output_text.delta","sequence_number":%d,"item_id":"msg_1","output_index":0,'
        b'"content_index":0,"delta":" word %d","logprobs":[]}' % (i, i)
        for i in range(n)
    ]


def test_lazy_extension_round_trips_with_context_takeover() -> None:
    client_ext, server_ext = negotiate()
    assert not server_ext.local_no_context_takeover
    assert "encoder" not in vars(server_ext) and "decoder" not in vars(server_ext)
    raw = sent = 0
    for data in deltas(50):
        wire = server_ext.encode(frames.Frame(frames.OP_TEXT, data))
        assert wire.rsv1  # compressed
        assert client_ext.decode(wire).data == data
        raw += len(data)
        sent += len(wire.data)
    assert sent < raw / 4  # later frames reuse the earlier ones' bytes
    assert "decoder" not in vars(server_ext)  # nothing received yet
    # A fragmented message from the client: the first frame and a continuation.
    first = client_ext.encode(frames.Frame(frames.OP_TEXT, b'{"type":"response.create",', fin=False))
    cont = client_ext.encode(frames.Frame(frames.OP_CONT, b'"model":"local"}'))
    joined = bytes(server_ext.decode(first).data) + bytes(server_ext.decode(cont).data)
    assert joined == b'{"type":"response.create","model":"local"}'
    assert "decoder" in vars(server_ext)


def test_lazy_extension_without_context_takeover_keeps_nothing_between_messages() -> None:
    client_ext, server_ext = negotiate(server_no_context_takeover=True, client_no_context_takeover=True)
    assert server_ext.local_no_context_takeover and server_ext.remote_no_context_takeover
    for data in deltas(5):
        assert client_ext.decode(server_ext.encode(frames.Frame(frames.OP_TEXT, data))).data == data
        assert server_ext.decode(client_ext.encode(frames.Frame(frames.OP_TEXT, data))).data == data
        assert "encoder" not in vars(server_ext) and "decoder" not in vars(server_ext)


def test_lazy_extension_missing_attributes_still_raise() -> None:
    _, server_ext = negotiate()
    with pytest.raises(AttributeError):
        _ = server_ext.no_such_attribute  # type: ignore[attr-defined]


def test_ws_compression_setting_reaches_uvicorn() -> None:
    from wsproxy.settings import load_settings

    on = load_settings(None, environ={})
    off = load_settings(None, environ={"WSPROXY_LIMITS_WS_COMPRESSION": "false"})
    assert on.limits.ws_compression is True
    assert off.limits.ws_compression is False
    assert srv.build_config(on, app=object()).ws_per_message_deflate is True
    assert srv.build_config(off, app=object()).ws_per_message_deflate is False
    assert srv.build_config(on, app=object()).ws is srv.LeanWebSocketProtocol


def test_short_messages_go_out_uncompressed_and_both_windows_stay_in_step() -> None:
    factory = srv.deflate_factory(min_bytes=300)
    client_factory = ClientPerMessageDeflateFactory()
    response, server_ext = factory.process_request_params(client_factory.get_request_params(), [])
    client_ext = client_factory.process_response_params(response, [])
    assert isinstance(server_ext, srv.LazyPerMessageDeflate)
    big = b'{"type":"response.completed","response":{"output":[%s]}}' % b",".join(deltas(8))
    messages = [*deltas(3), big, *deltas(3), big, big]
    for data in messages:
        wire = server_ext.encode(frames.Frame(frames.OP_TEXT, data))
        # Short ones as they are (RSV1 clear), long ones compressed: the sender's choice per message.
        assert wire.rsv1 is (len(data) >= 300)
        assert (wire.data == data) is (len(data) < 300)
        assert client_ext.decode(wire).data == data
    # The compressor exists once something was worth compressing, and only then.
    assert "encoder" in vars(server_ext)
    small_only = srv.deflate_factory(min_bytes=300).process_request_params(
        ClientPerMessageDeflateFactory().get_request_params(), []
    )[1]
    for data in deltas(5):
        small_only.encode(frames.Frame(frames.OP_TEXT, data))
    assert "encoder" not in vars(small_only)


def test_compression_threshold_setting_reaches_the_factory() -> None:
    from wsproxy.settings import load_settings

    default = load_settings(None, environ={})
    everything = load_settings(None, environ={"WSPROXY_LIMITS_WS_COMPRESSION_MIN_BYTES": "0"})
    assert srv.build_config(default, app=object()).wsproxy_deflate.min_bytes == 1024  # type: ignore[attr-defined]
    assert srv.build_config(everything, app=object()).wsproxy_deflate.min_bytes == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_plain_text_frames_are_written_as_websockets_would_write_them(length: int) -> None:
    data = ("é" * (length // 2) + "x" * (length % 2)).encode()
    assert len(data) == length
    frame = frames.Frame(frames.OP_TEXT, data)
    assert srv.text_frame_header(length) + data == frame.serialize(mask=False, extensions=[])


def test_long_messages_and_many_small_ones_reach_the_client_intact(make_cli_proxy: Any) -> None:
    # Both paths on one connection: small frames written by wsproxy, large ones compressed by
    # websockets (over 1 KB), in order, with and without compression negotiated.
    server = make_cli_proxy()
    url = f"ws://127.0.0.1:{server.port}/v1/responses"
    for compression in ("deflate", None):
        with connect(url, compression=compression, open_timeout=5, max_size=None) as ws:
            long_input = "word " * 40_000  # a 200 KB request; the answer echoes some of it
            events = run_response(ws, input=long_input, store=False, instructions="x" * 70_000)
            assert events[-1]["type"] == "response.completed"
            assert [e["sequence_number"] for e in events] == list(range(len(events)))
            assert events[-1]["response"]["instructions"] == "x" * 70_000  # > 64 KB frame


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


def _open_protocol() -> tuple[Any, _Transport]:
    """A LeanWebSocketProtocol past its handshake (only what its frame path reads)."""
    import asyncio as aio

    from websockets.protocol import State
    from websockets.server import ServerProtocol

    proto: Any = object.__new__(srv.LeanWebSocketProtocol)
    proto.conn = ServerProtocol()
    proto.conn.state = State.OPEN
    proto.handshake_complete, proto.close_sent, proto.disconnected = True, False, False
    proto.writable = aio.Event()
    proto.writable.set()
    proto._plain_below, proto._held = -1, None
    proto.transport = transport = _Transport()
    return proto, transport


async def test_frames_marked_more_go_out_in_one_write_and_never_wait_past_the_loop_iteration() -> None:
    import asyncio as aio

    proto, transport = _open_protocol()
    texts = [f'{{"n":{i}}}' for i in range(4)]
    wire = [srv.text_frame_header(len(t)) + t.encode() for t in texts]
    await proto.send({"type": "websocket.send", "text": texts[0], "wsproxy.more": True})
    await proto.send({"type": "websocket.send", "text": texts[1], "wsproxy.more": True})
    assert transport.writes == []  # held: the next one is at hand
    await proto.send({"type": "websocket.send", "text": texts[2]})
    assert transport.writes == [wire[0] + wire[1] + wire[2]]  # one syscall for three frames
    # A marked frame whose follower never comes still goes out in this loop iteration.
    await proto.send({"type": "websocket.send", "text": texts[3], "wsproxy.more": True})
    await aio.sleep(0)
    assert transport.writes == [wire[0] + wire[1] + wire[2], wire[3]]


def test_frames_are_written_through_the_frame_writer_extension(
    make_cli_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app finds ``scope["extensions"]["wsproxy.frames"]`` and writes the deltas through it,
    synchronously; frames it refuses (compressed ones) take the ASGI send. The client sees one
    ordered stream either way."""
    calls = {"written": 0, "refused": 0}
    original = srv.LeanWebSocketProtocol.write_text

    def counting(self: Any, text: Any, more: bool = False) -> bool:
        done = original(self, text, more)
        calls["written" if done else "refused"] += 1
        return done

    monkeypatch.setattr(srv.LeanWebSocketProtocol, "write_text", counting)
    server = make_cli_proxy()
    url = f"ws://127.0.0.1:{server.port}/v1/responses"
    with connect(url, compression="deflate", open_timeout=5) as ws:
        writer = one_session(server).scope["extensions"]["wsproxy.frames"]
        assert isinstance(writer, srv.FrameWriter) and not writer.paused
        events = run_response(ws, input="through the frame writer", store=False)
    assert events[-1]["type"] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = sum(e["type"].endswith(".delta") for e in events)
    # Every small frame went through write_text; the large ones (response.created, .completed:
    # over the 1 KB deflate threshold) were refused there and compressed on uvicorn's path.
    assert calls["written"] >= deltas > 0 and calls["refused"] >= 1
