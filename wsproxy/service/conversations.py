"""Conversations: the service behind ``/v1/conversations`` and the ``conversation`` parameter.

The endpoints (``wsproxy.asgi.conversations``) call :class:`Conversations` for every operation; the
engine calls it at three points of a ``conversation`` turn (``conversations.md`` section 5):

    prepare   history(request, principal)   the conversation's items, oldest first, go before the
                                            request's input (404 if unknown or someone else's)
    stream    tag_conversation(events, id)  every Response snapshot says ``conversation: {"id"}``,
                                            whatever provider produced it
    terminal  record_turn(run, terminal)    the turn's input then output items are appended in one
                                            atomic store call *before* the terminal event is sent

Rules kept here:

- a turn is appended when it ends ``completed`` or ``incomplete`` (its output is what the model
  produced, as a ``previous_response_id`` chain would continue from it); a ``failed`` or
  ``cancelled`` turn adds nothing, so a client can retry it without duplicating its input;
- ``store: false`` does not make a turn ephemeral: it is still appended (OpenAI does the same);
- if the append cannot happen (the conversation was deleted meanwhile, it is full, or an item id
  collided with a concurrent turn), the terminal event becomes ``response.failed`` with an error
  saying so: the client never believes a turn was recorded when it was not;
- ownership as for responses: another principal's conversation does not exist (404).

Validation and the objects answered are pure (``wsproxy.core.conversations``); this module adds
the clock, ids and the store. It must not import asgi or server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from wsproxy.core.conversations import (
    APPEND_DUPLICATE,
    APPEND_FULL,
    APPEND_NOT_FOUND,
    APPEND_OK,
    ItemPage,
    ListParams,
    StoredConversation,
    conversation_full,
    conversation_not_found,
    item_already_in_conversation,
    item_not_found,
    turn_items,
    validate_items,
)
from wsproxy.core.events import TERMINAL_TYPES, Event
from wsproxy.core.ids import random_id
from wsproxy.core.params import validate_metadata
from wsproxy.core.request import CreateRequest
from wsproxy.errors import ProxyError, StoreError
from wsproxy.store.base import ResponseStore

# How many history items a turn read before its input (in ResponseRun.extra).
HISTORY_LEN = "conversation_history"

_SNAPSHOT_TYPES = TERMINAL_TYPES | {"response.created", "response.in_progress", "response.queued"}


class Conversations:
    def __init__(self, store: ResponseStore, *, max_items: int = 10_000) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.store = store
        self.max_items = max_items

    # -- CRUD -----------------------------------------------------------------------------------

    async def create(self, principal: str | None, items: Any, metadata: Any) -> StoredConversation:
        meta = validate_metadata(metadata)
        canonical = validate_items(items, random_id, required=False)
        if len(canonical) > self.max_items:
            raise conversation_full(self.max_items)
        now = time.time()
        conv = StoredConversation(
            id=random_id("conv"), owner=principal, created_at=now, updated_at=now, metadata=meta
        )
        await self.store.create_conversation(conv, canonical)
        return conv

    async def owned(self, conversation_id: str, principal: str | None) -> StoredConversation:
        conv = await self.store.get_conversation(conversation_id)
        if conv is None or conv.owner != principal:
            raise conversation_not_found(conversation_id)
        return conv

    async def update(self, conversation_id: str, principal: str | None, metadata: Any) -> StoredConversation:
        meta = validate_metadata(metadata)
        await self.owned(conversation_id, principal)
        conv = await self.store.update_conversation(conversation_id, meta, time.time())
        if conv is None:
            raise conversation_not_found(conversation_id)
        return conv

    async def delete(self, conversation_id: str, principal: str | None) -> None:
        await self.owned(conversation_id, principal)
        if not await self.store.delete_conversation(conversation_id):
            raise conversation_not_found(conversation_id)

    async def add_items(
        self, conversation_id: str, principal: str | None, items: Any
    ) -> list[dict[str, Any]]:
        canonical = validate_items(items, random_id, required=True)
        await self.owned(conversation_id, principal)
        outcome = await self.store.append_items(conversation_id, canonical, time.time(), self.max_items)
        self._raise_for(outcome, conversation_id, "items")
        return canonical

    async def list_items(self, conversation_id: str, principal: str | None, params: ListParams) -> ItemPage:
        await self.owned(conversation_id, principal)
        page = await self.store.list_items(conversation_id, params)
        if page is None:
            if params.after is not None and await self.store.get_conversation(conversation_id) is not None:
                raise item_not_found(params.after, param="after")
            raise conversation_not_found(conversation_id)
        return page

    async def get_item(self, conversation_id: str, principal: str | None, item_id: str) -> dict[str, Any]:
        await self.owned(conversation_id, principal)
        item = await self.store.get_item(conversation_id, item_id)
        if item is None:
            raise item_not_found(item_id)
        return item

    async def delete_item(
        self, conversation_id: str, principal: str | None, item_id: str
    ) -> StoredConversation:
        await self.owned(conversation_id, principal)
        if not await self.store.delete_item(conversation_id, item_id, time.time()):
            raise item_not_found(item_id)
        return await self.owned(conversation_id, principal)

    def _raise_for(self, outcome: str, conversation_id: str, param: str) -> None:
        if outcome == APPEND_OK:
            return
        if outcome == APPEND_NOT_FOUND:
            raise conversation_not_found(conversation_id)
        if outcome == APPEND_DUPLICATE:
            raise item_already_in_conversation(param)
        if outcome == APPEND_FULL:
            raise conversation_full(self.max_items, param)
        raise StoreError(f"The store answered an unknown append outcome {outcome!r}.")

    # -- a turn of POST /v1/responses -------------------------------------------------------------

    async def history(self, request: CreateRequest, principal: str | None) -> list[dict[str, Any]]:
        """The items a turn reads, oldest first. Raises before anything runs when the turn could
        not be recorded: unknown conversation, an input id already in it, no room left."""
        assert request.conversation is not None
        cid = request.conversation
        await self.owned(cid, principal)
        page = await self.store.list_items(cid, ListParams(limit=self.max_items, order="asc"))
        if page is None:
            raise conversation_not_found(cid)
        present = {item.get("id") for item in page.items}
        if any(isinstance(item.get("id"), str) and item["id"] in present for item in request.input):
            raise item_already_in_conversation("input")
        # Room for the input and at least one output item.
        if len(page.items) + len(request.input) >= self.max_items:
            raise conversation_full(self.max_items, "conversation")
        return page.items

    async def record_turn(
        self, conversation_id: str, turn_input: list[dict[str, Any]], terminal: Event
    ) -> Event:
        """Append the turn to its conversation; returns the terminal event to send (a failure if
        the turn could not be recorded)."""
        payload = terminal.json()
        response = payload.get("response")
        if not isinstance(response, dict) or response.get("status") not in ("completed", "incomplete"):
            return terminal
        output = [item for item in response.get("output") or [] if isinstance(item, dict)]
        items = turn_items(turn_input, output, random_id)
        try:
            outcome = await self.store.append_items(conversation_id, items, time.time(), self.max_items)
            self._raise_for(outcome, conversation_id, "conversation")
        except ProxyError as exc:
            message = exc.message
            response.update(
                status="failed",
                error={
                    "code": "conversation_not_updated",
                    "message": f"This turn was not added to the conversation: {message}",
                },
                incomplete_details=None,
            )
            payload["type"] = "response.failed"
            payload["response"] = response
            failed = Event("response.failed", orjson.dumps(payload), terminal.seq)
            failed.more = terminal.more
            return failed
        return terminal


async def tag_conversation(
    stream: AsyncGenerator[Event, None], conversation_id: str
) -> AsyncGenerator[Event, None]:
    """Set ``response.conversation`` on every Response snapshot of ``stream``. Only those few
    events are re-encoded; deltas pass through untouched."""
    ref = {"id": conversation_id}
    try:
        async for event in stream:
            if event.type in _SNAPSHOT_TYPES:
                payload = event.json()
                response = payload.get("response")
                if isinstance(response, dict) and response.get("conversation") != ref:
                    response["conversation"] = ref
                    patched = Event(event.type, orjson.dumps(payload), event.seq)
                    patched.more = event.more
                    event = patched
            yield event
    finally:
        await stream.aclose()
