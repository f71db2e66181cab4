"""A hand-written upstream on raw sockets, for the faults an ASGI server cannot be told to make:
HTTP/2 GOAWAY and RST_STREAM, HTTP/2 protocol garbage, and a TCP reset (RST) mid-stream.

It speaks HTTP/2 with prior knowledge (h2c, via the ``h2`` state machine) and plain HTTP/1.1, on
127.0.0.1 in a background thread. The answer is chosen by the request's ``model``:

    fake               the normal answer (same events as :class:`FakeOpenAI`)
    goaway-once-<tag>  the first request for <tag>: GOAWAY(last_stream_id=0) before any answer,
                       and the connection is closed; later requests: the normal answer
    goaway-mid         3 events, then GOAWAY(INTERNAL_ERROR, last_stream_id=0) and close
    rst-mid            3 events, then RST_STREAM(INTERNAL_ERROR) on the stream
    garbage-mid        3 events, then bytes that are not an HTTP/2 frame
    reset-mid          3 events, then a TCP RST (SO_LINGER 0) on the connection
    stall-mid          3 events, then silence until the client resets the stream
    slow-<ms>          the normal answer with <ms> between events
    think-<ms>         (HTTP/2) created + in_progress, then <ms> of silence, then the answer
    flood-<n>-<size>   (HTTP/1.1) n deltas of <size> bytes, each written after the previous one
                       drained: a client that stops reading blocks it (``sent`` stops growing)

Every request is recorded with what the client did to it (``reset_by_client`` when the proxy
sent RST_STREAM or closed the connection before the answer ended), so a test can assert that
the upstream saw the cancel.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import orjson
from h2.errors import ErrorCodes

from tests.fakes.openai_upstream import FakeOpenAI, _sse
from tests.fakes.servers import free_port

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class RawUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.events_source = FakeOpenAI()
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.seen_tags: set[str] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"rawupstream-{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> RawUpstream:
        self.thread.start()
        if not self._started.wait(10):
            raise RuntimeError("raw upstream did not start")
        return self

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=10)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._main())
        self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self._started.set()
        await self._stop.wait()
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    def wait(self, predicate: Any, timeout: float = 5.0) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def touch(self, record: dict[str, Any], **changes: Any) -> None:
        with self.changed:
            record.update(changes)
            self.changed.notify_all()

    def find(self, marker: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if marker in orjson.dumps(r["body"].get("input")).decode()]

    # -- connections --------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        with self.lock:
            self.connections += 1
        try:
            head = await reader.readexactly(len(PREFACE))
            if head == PREFACE:
                await H2Handler(self, reader, writer).run(head)
            else:
                await self._http1(head, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    def _record(self, body: dict[str, Any], proto: str) -> dict[str, Any]:
        record = {
            "body": body,
            "model": str(body.get("model")),
            "proto": proto,
            "sent": 0,
            "reset_by_client": False,
            "finished": False,
        }
        with self.changed:
            self.requests.append(record)
            self.changed.notify_all()
        return record

    def _once(self, tag: str) -> bool:
        with self.lock:
            if tag in self.seen_tags:
                return False
            self.seen_tags.add(tag)
            return True

    async def _http1(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = head + await reader.readuntil(b"\r\n\r\n")
        header_block, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in header_block.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if head.startswith(b"GET"):
            # A WebSocket upgrade: this provider speaks HTTP only.
            writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            writer.close()
            return
        body = rest + await reader.readexactly(length - len(rest))
        record = self._record(orjson.loads(body), "1.1")
        model = record["model"]
        events = self.events_source._shaped(model, record["body"])
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        try:
            for i, event in enumerate(events):
                if model.endswith("-mid") and i == 3:
                    await asyncio.sleep(0.2)  # let the events so far reach the client first
                    if model == "reset-mid":
                        _abort_with_rst(writer)
                        return
                    # stall-mid and the rest: silence until the client closes
                    if await reader.read(1) == b"":
                        self.touch(record, reset_by_client=True)
                    return
                writer.write(_sse(event))
                await writer.drain()  # blocks while the client does not read (backpressure)
                self.touch(record, sent=record["sent"] + 1)
        except (ConnectionError, OSError):
            self.touch(record, reset_by_client=True)
            raise
        self.touch(record, finished=True)
        writer.close()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class H2Handler:
    """One HTTP/2 connection: the ``h2`` state machine fed from the socket."""

    def __init__(
        self, server: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.bodies: dict[int, bytearray] = {}
        self.records: dict[int, dict[str, Any]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.reset_streams: dict[int, asyncio.Event] = {}
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.transport.is_closing():
            self.writer.write(data)

    async def run(self, preface: bytes) -> None:
        # Like most servers: at most 100 concurrent streams per connection.
        self.conn.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100}
        )
        self.conn.initiate_connection()
        self.flush()
        pending = preface
        try:
            while not self.closed:
                if pending:
                    data, pending = pending, b""
                else:
                    data = await self.reader.read(65536)
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    self.on_event(event)
                self.flush()
        finally:
            for sid, record in self.records.items():
                if not record["finished"]:
                    self.server.touch(record, reset_by_client=True)
                    self.reset_streams.setdefault(sid, asyncio.Event()).set()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def on_event(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.bodies[event.stream_id] = bytearray()
        elif isinstance(event, h2.events.DataReceived):
            self.bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            body = orjson.loads(bytes(self.bodies.pop(event.stream_id, b"{}")))
            self.records[event.stream_id] = self.server._record(body, "2")
            task = asyncio.get_running_loop().create_task(self.answer(event.stream_id))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(event, h2.events.StreamReset):
            record = self.records.get(event.stream_id)
            if record is not None and not record["finished"]:
                self.server.touch(record, reset_by_client=True)
            self.reset_streams.setdefault(event.stream_id, asyncio.Event()).set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    async def answer(self, sid: int) -> None:
        record = self.records[sid]
        model = record["model"]
        if model.startswith("goaway-once-") and self.server._once(model):
            self.conn.close_connection(error_code=ErrorCodes.NO_ERROR, last_stream_id=0)
            self.flush()
            self.closed = True
            self.writer.close()
            return
        delay = int(model.split("-")[1]) / 1000 if model.startswith("slow-") else 0.0
        think = int(model.split("-")[1]) / 1000 if model.startswith("think-") else 0.0
        events = self.server.events_source.events(record["body"])
        self.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/event-stream")])
        self.flush()
        for i, event in enumerate(events):
            if model.endswith("-mid") and i == 3:
                await self.misbehave(sid, model)
                return
            self.conn.send_data(sid, _sse(event))
            self.flush()
            await self.writer.drain()
            self.server.touch(record, sent=record["sent"] + 1)
            if delay:
                await asyncio.sleep(delay)
            if think and event["type"] == "response.in_progress":
                await asyncio.sleep(think)
        self.conn.end_stream(sid)
        self.flush()
        self.server.touch(record, finished=True)

    async def misbehave(self, sid: int, model: str) -> None:
        await self.writer.drain()
        await asyncio.sleep(0.2)  # let the events so far reach the client first
        if model == "goaway-mid":
            self.conn.close_connection(error_code=ErrorCodes.INTERNAL_ERROR, last_stream_id=0)
            self.flush()
            self.closed = True
            self.writer.close()
        elif model == "rst-mid":
            self.conn.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
            self.flush()
        elif model == "garbage-mid":
            # A SETTINGS frame of 5 bytes (settings are 6 bytes each): a FRAME_SIZE_ERROR.
            self.writer.write(b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5)
        elif model == "reset-mid":
            _abort_with_rst(self.writer)
            self.closed = True
        else:  # stall-mid: silence until the client resets the stream or goes away
            await self.reset_streams.setdefault(sid, asyncio.Event()).wait()
