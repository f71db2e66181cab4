"""Conversations API rules, pure: records, validation, the objects the endpoints answer with.

``conversations.md`` is the digest this follows. What lives here (no I/O, no clock, no awaits):

- :class:`StoredConversation`, the record every store backend keeps (items are kept next to it,
  in order, by the store);
- (the ``conversation`` parameter of ``POST /v1/responses`` is parsed in ``core.request``);
- validation of ``metadata`` (16 pairs, 64-char keys, 512-char string values), of ``items``
  (at most 20 per call, Responses input items, client ids with the right prefix) and of the
  ``items.list`` query (``limit`` 1-100 default 20, ``order`` default ``desc``, ``after``,
  ``include``);
- the canonical form of a stored item (``type``, ``id``, ``status``, message content as parts) and
  the ``conversation``, ``conversation.deleted`` and list objects.

Ids are made by an injected :data:`~wsproxy.core.ids.IdFactory`; times are passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from wsproxy.core.ids import IdFactory
from wsproxy.core.request import normalize_input
from wsproxy.errors import InvalidRequest, NotFound, invalid_param

MAX_ITEMS_PER_CALL = 20
LIST_DEFAULT_LIMIT = 20
LIST_MAX_LIMIT = 100

# The prefixes OpenAI checks on client-supplied ids (conversations.md section 4), and the ones
# wsproxy gives items it names itself.
REQUIRED_ID_PREFIX = {"message": "msg", "function_call": "fc"}
ITEM_PREFIX = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
    "item_reference": "ref",
}

INCLUDABLE = frozenset(
    {
        "web_search_call.action.sources",
        "code_interpreter_call.outputs",
        "computer_call_output.output.image_url",
        "file_search_call.results",
        "message.input_image.image_url",
        "message.output_text.logprobs",
        "reasoning.encrypted_content",
    }
)

CREATE_FIELDS = frozenset({"items", "metadata"})
UPDATE_FIELDS = frozenset({"metadata"})


@dataclass(slots=True)
class StoredConversation:
    """A conversation as stored; its items are kept by the store, in order, next to it."""

    id: str
    owner: str | None = None
    created_at: float = 0.0
    # Last write (creation, metadata update, items added or deleted): the TTL counts from here,
    # so a conversation in use does not expire under its user.
    updated_at: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)

    def dumps(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "owner": self.owner,
                "created_at": self.created_at,
                "updated_at": self.updated_at,
                "metadata": self.metadata,
            }
        )

    @classmethod
    def loads(cls, data: bytes | str) -> StoredConversation:
        obj = orjson.loads(data)
        return cls(
            id=obj["id"],
            owner=obj.get("owner"),
            created_at=float(obj.get("created_at", 0.0)),
            updated_at=float(obj.get("updated_at", obj.get("created_at", 0.0))),
            metadata=dict(obj.get("metadata") or {}),
        )


# Outcomes of an atomic append, as the stores report them.
APPEND_OK = "ok"
APPEND_NOT_FOUND = "not_found"
APPEND_DUPLICATE = "duplicate"
APPEND_FULL = "full"


@dataclass(slots=True)
class ItemPage:
    items: list[dict[str, Any]]
    has_more: bool


@dataclass(frozen=True, slots=True)
class ListParams:
    limit: int = LIST_DEFAULT_LIMIT
    order: str = "desc"
    after: str | None = None
    include: tuple[str, ...] = ()


# -- errors -----------------------------------------------------------------------------------


class _NullCodeNotFound(NotFound):
    code = None  # type: ignore[assignment]  # OpenAI answers these 404s with code null


def conversation_not_found(conversation_id: str, param: str | None = None) -> NotFound:
    return _NullCodeNotFound(f"Conversation with id '{conversation_id}' not found.", param=param)


def item_not_found(item_id: str, param: str | None = None) -> NotFound:
    return _NullCodeNotFound(f"No item found with id '{item_id}'.", param=param)


def item_already_in_conversation(param: str = "items") -> InvalidRequest:
    return InvalidRequest("Item already in conversation", param=param, code="item_already_in_conversation")


def conversation_full(max_items: int, param: str = "items") -> InvalidRequest:
    return InvalidRequest(
        f"This conversation holds at most {max_items} items on this server; "
        "delete items or start a new conversation.",
        param=param,
        code="conversation_too_long",
    )


# -- request parsing --------------------------------------------------------------------------


def check_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for key in body:
        if key not in allowed:
            raise InvalidRequest(f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")


def canonical_item(item: dict[str, Any], make_id: IdFactory) -> dict[str, Any]:
    """An item as a conversation keeps and lists it: with ``type``, ``id`` and ``status``, and a
    message's string content as the equivalent one-part list."""
    kind = item.get("type", "message")
    out = {"type": kind, **item}
    if kind == "message":
        content = out.get("content")
        if isinstance(content, str):
            part = "output_text" if out.get("role") == "assistant" else "input_text"
            text_part: dict[str, Any] = {"type": part, "text": content}
            if part == "output_text":
                text_part.update(annotations=[], logprobs=[])
            out["content"] = [text_part]
    if not isinstance(out.get("id"), str) or not out["id"]:
        out["id"] = make_id(ITEM_PREFIX.get(kind, "item"))
    out.setdefault("status", "completed")
    return out


def validate_items(value: Any, make_id: IdFactory, *, required: bool) -> list[dict[str, Any]]:
    """``items`` of a create call: Responses input items, at most 20, in canonical form."""
    if value is None:
        if required:
            raise invalid_param("items", "Missing required parameter: 'items'.", "missing_required_parameter")
        return []
    if not isinstance(value, list):
        raise invalid_param("items", "Invalid type for 'items': expected an array.", "invalid_type")
    if len(value) > MAX_ITEMS_PER_CALL:
        raise invalid_param(
            "items",
            f"Invalid 'items': array too long. Expected an array with maximum length "
            f"{MAX_ITEMS_PER_CALL}, but got an array with length {len(value)} instead.",
            "array_above_max_length",
        )
    try:
        normalize_input(value)
    except InvalidRequest as exc:
        # The same rules as Responses input, named as this endpoint's parameter.
        exc.param = exc.param.replace("input", "items", 1) if exc.param else "items"
        exc.message = exc.message.replace("'input", "'items")
        exc.args = (exc.message,)
        raise
    items = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        kind = item.get("type", "message")
        given = item.get("id")
        if given is not None:
            prefix = REQUIRED_ID_PREFIX.get(kind)
            if not isinstance(given, str) or not given or (prefix and not given.startswith(prefix)):
                raise invalid_param(
                    f"items[{i}].id",
                    f"Invalid 'items[{i}].id': '{given}'. Expected an ID that begins with '{prefix or ''}'.",
                )
            if given in seen:
                raise item_already_in_conversation()
            seen.add(given)
        items.append(canonical_item(item, make_id))
    return items


def parse_list_params(query: Mapping[str, Any], include: list[str]) -> ListParams:
    """The ``items.list`` query. ``include`` arrives as ``include[]=a&include[]=b`` from the SDK."""
    raw_limit = query.get("limit")
    limit = LIST_DEFAULT_LIMIT
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise invalid_param("limit", "Invalid 'limit': expected an integer.", "invalid_type") from None
        if not 1 <= limit <= LIST_MAX_LIMIT:
            raise invalid_param(
                "limit", f"Invalid 'limit': expected an integer between 1 and {LIST_MAX_LIMIT}, got {limit}."
            )
    order = query.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise invalid_param("order", f"Invalid 'order': expected 'asc' or 'desc', got '{order}'.")
    after = query.get("after") or None
    return ListParams(limit=limit, order=order, after=after, include=parse_include(include))


def parse_include(values: list[str]) -> tuple[str, ...]:
    for value in values:
        if value not in INCLUDABLE:
            raise invalid_param("include", f"Invalid 'include' value: '{value}'.")
    return tuple(values)


# -- objects ----------------------------------------------------------------------------------


def conversation_object(conv: StoredConversation) -> dict[str, Any]:
    return {
        "id": conv.id,
        "object": "conversation",
        "created_at": int(conv.created_at),
        "metadata": dict(conv.metadata),
    }


def deleted_object(conversation_id: str) -> dict[str, Any]:
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


def item_list(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """The list envelope; ``first_id``/``last_id`` are null when empty, as OpenAI sends them."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0].get("id") if items else None,
        "last_id": items[-1].get("id") if items else None,
        "has_more": has_more,
    }


def page_of(ordered: list[dict[str, Any]], params: ListParams) -> ItemPage | None:
    """One page of ``ordered`` (oldest first); ``None`` when ``after`` is not among them. The
    memory backend pages with this; the others do the same in their own query language."""
    seq = ordered if params.order == "asc" else ordered[::-1]
    start = 0
    if params.after is not None:
        for index, item in enumerate(seq):
            if item.get("id") == params.after:
                start = index + 1
                break
        else:
            return None
    window = seq[start : start + params.limit + 1]
    return ItemPage(items=window[: params.limit], has_more=len(window) > params.limit)


def turn_items(
    request_input: list[dict[str, Any]], output: list[dict[str, Any]], make_id: IdFactory
) -> list[dict[str, Any]]:
    """What one response adds to its conversation: its input items, then its output items."""
    return [canonical_item(item, make_id) for item in [*request_input, *output]]
