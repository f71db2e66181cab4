"""A fake OpenAI-native provider that also speaks Responses WebSocket mode on ``/v1/responses``
(and HTTP + SSE, as :class:`FakeOpenAI`, for the fallback), run under hypercorn.

WebSocket mode as OpenAI runs it (``responses-websocket.md``):

- one ``response.create`` at a time per socket, answered with the same events as SSE, one JSON
  text frame each; ``generate: false`` answers ``response.created`` + ``response.completed``;
- a connection-local cache of the latest completed response: ``previous_response_id`` must name
  it, or a response stored with ``store: true``; anything else is answered with the real error
  event (``previous_response_not_found``, status 400) and the socket stays open;
- the upgrade can be refused (``refuse_status``), sockets dropped between turns
  (:meth:`drop_sockets`, close 1001), and a socket can die mid-response (model
  ``die-after-<n>``: n events, then close 1011 without a terminal event);
- ``token_cost`` seconds per input token it has to process (the new input when continuing from
  the connection cache, the whole input otherwise; ~4 bytes of JSON per token) before answering,
  on both transports, as a model's prefill would.

Every upgrade attempt and every frame received is recorded (``sockets``), so tests assert what
the provider received.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson

from tests.fakes.openai_upstream import FakeOpenAI

_sockets = itertools.count(1)


def input_tokens(items: Any) -> int:
    return len(orjson.dumps(items)) // 4


class FakeOpenAIWS(FakeOpenAI):
    def __init__(self, token_cost: float = 0.0) -> None:
        super().__init__()
        self.token_cost = token_cost
        self.refuse_status: int | None = None
        self.sockets: list[dict[str, Any]] = []
        # Responses the provider stores (store not false): continuable from any socket.
        self.stored: set[str] = set()
        # (loop, event) per open socket, set by drop_sockets().
        self._kills: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.charged_tokens = 0

    # -- what tests look at -------------------------------------------------------------------

    def frames(self, marker: str | None = None) -> list[dict[str, Any]]:
        """Every response.create received over WebSocket (with ``socket``: its socket's number)."""
        with self.lock:
            out = [{**f, "socket": s["id"]} for s in self.sockets for f in s["frames"]]
        if marker is not None:
            out = [f for f in out if marker in orjson.dumps(f).decode()]
        return out

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.sockets if s["accepted"]]

    def drop_sockets(self) -> int:
        """Close every open socket with 1001 (a restart); the number closed."""
        with self.lock:
            kills, self._kills = self._kills, []
        for loop, event in kills:
            loop.call_soon_threadsafe(event.set)
        return len(kills)

    def events(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        out = super().events(body)
        if body.get("store", True) is not False:
            self.stored.add(out[0]["response"]["id"])
        return out

    async def _charge(self, items: Any) -> None:
        tokens = input_tokens(items)
        with self.lock:
            self.charged_tokens += tokens
        if self.token_cost:
            await asyncio.sleep(tokens * self.token_cost)

    # -- HTTP: the prefill is charged for the whole input -------------------------------------

    async def _play(
        self, send: Any, model: str, data: dict[str, Any], record: dict[str, Any], gone: asyncio.Event
    ) -> None:
        await self._charge(data.get("input"))
        await super()._play(send, model, data, record, gone)

    # -- WebSocket mode -----------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def _websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        sock: dict[str, Any] = {
            "id": next(_sockets),
            "path": scope["path"],
            "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            "frames": [],
            "accepted": False,
            "closed": False,
            "latest": None,
            "opened": time.monotonic(),
        }
        with self.changed:
            self.sockets.append(sock)
            self.changed.notify_all()
        if self.refuse_status is not None or scope["path"] != "/v1/responses":
            status = self.refuse_status or 404
            await send({"type": "websocket.http.response.start", "status": status, "headers": []})
            body = {"error": {"message": "no websockets here", "type": "invalid_request_error"}}
            await send({"type": "websocket.http.response.body", "body": orjson.dumps(body)})
            return
        await send({"type": "websocket.accept"})
        self._touch(sock, accepted=True)
        kill = asyncio.Event()
        entry = (asyncio.get_running_loop(), kill)
        with self.lock:
            self._kills.append(entry)
        pending: asyncio.Task[Any] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(receive())
                killed = asyncio.ensure_future(kill.wait())
                await asyncio.wait({pending, killed}, return_when=asyncio.FIRST_COMPLETED)
                killed.cancel()
                if kill.is_set():
                    await send({"type": "websocket.close", "code": 1001})
                    return
                message = pending.result()
                pending = None
                if message["type"] == "websocket.disconnect":
                    return
                body = orjson.loads(message.get("text") or message.get("bytes") or b"{}")
                with self.changed:
                    sock["frames"].append(body)
                    self.changed.notify_all()
                if not await self._answer(send, sock, body, kill):
                    return
        finally:
            if pending is not None:
                pending.cancel()
            with self.lock:
                if entry in self._kills:
                    self._kills.remove(entry)
            self._touch(sock, closed=True)

    async def _frame(self, send: Any, payload: dict[str, Any]) -> None:
        await send({"type": "websocket.send", "text": orjson.dumps(payload).decode()})

    async def _answer(
        self, send: Any, sock: dict[str, Any], body: dict[str, Any], kill: asyncio.Event
    ) -> bool:
        """One response on this socket; False when the socket was closed by it."""
        prev = body.get("previous_response_id")
        if prev and prev != sock["latest"] and prev not in self.stored:
            await self._frame(
                send,
                {
                    "type": "error",
                    "status": 400,
                    "error": {
                        "type": "invalid_request_error",
                        "code": "previous_response_not_found",
                        "message": f"Previous response with id '{prev}' not found.",
                        "param": "previous_response_id",
                    },
                },
            )
            return True
        # Continuing from this socket's cache: only the new input needs processing.
        await self._charge(body.get("input"))
        model = str(body.get("model", "fake"))
        events: Any
        if body.get("generate") is False:
            full = self.events({**body, "input": []})
            events = [full[0], {**full[-1], "response": {**full[-1]["response"], "output": []}}]
            for i, event in enumerate(events):
                event["sequence_number"] = i
        else:
            events = self._shaped(model, body)  # lazily: a flood is made as it is sent
        cut = int(model[len("die-after-") :]) if model.startswith("die-after-") else None
        rid = None
        for i, event in enumerate(events):
            rid = rid or event.get("response", {}).get("id")
            if cut is not None and i == cut:
                await send({"type": "websocket.close", "code": 1011})
                return False
            if kill.is_set():
                await send({"type": "websocket.close", "code": 1001})
                return False
            await self._frame(send, event)
            with self.changed:
                sock["sent"] = sock.get("sent", 0) + 1
                self.changed.notify_all()
        sock["latest"] = rid
        return True


def start_fake_ws(token_cost: float = 0.0) -> tuple[FakeOpenAIWS, Any]:
    """The fake under hypercorn on 127.0.0.1 (the caller stops the server)."""
    from tests.fakes.servers import HypercornThread

    fake = FakeOpenAIWS(token_cost)
    server = HypercornThread(fake).start()
    return fake, server
