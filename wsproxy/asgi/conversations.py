"""HTTP endpoints of the Conversations API, as the official SDK's ``client.conversations`` calls them.

    POST   /v1/conversations                              create (items, metadata)
    GET    /v1/conversations/{id}                         retrieve
    POST   /v1/conversations/{id}                         update metadata (replaces the map)
    DELETE /v1/conversations/{id}                         delete -> conversation.deleted
    POST   /v1/conversations/{id}/items                   add items (include in the query) -> list
    GET    /v1/conversations/{id}/items                   list (limit, order, after, include[])
    GET    /v1/conversations/{id}/items/{item_id}         retrieve an item
    DELETE /v1/conversations/{id}/items/{item_id}         delete an item -> the conversation

Only the edge lives here: authentication (the same helper as the stored-response endpoints), body
and query reading, rendering. The rules are in ``wsproxy.service.conversations`` and the pure
``wsproxy.core.conversations``. Another principal's conversation answers 404, like an unknown id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wsproxy.asgi.admission import owner_of, runtime_of
from wsproxy.asgi.render import error_response, json_response, read_body
from wsproxy.core.conversations import (
    CREATE_FIELDS,
    UPDATE_FIELDS,
    check_fields,
    conversation_object,
    deleted_object,
    item_list,
    parse_include,
    parse_list_params,
)
from wsproxy.core.request import loads_object
from wsproxy.errors import ProxyError, invalid_param
from wsproxy.service.conversations import Conversations

Handler = Callable[[Request, Conversations, str | None], Awaitable[Any]]


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Run ``handler`` for the admitted caller; render its JSON or its error."""

    async def endpoint(request: Request) -> Response:
        runtime = runtime_of(request)
        try:
            principal = owner_of(request)
            return json_response(await handler(request, runtime.engine.conversations, principal))
        except ProxyError as exc:
            return error_response(exc)

    return endpoint


async def _body(request: Request) -> dict[str, Any]:
    raw = await read_body(request, runtime_of(request).settings.limits.max_body_bytes)
    return loads_object(raw) if raw.strip() else {}


def _include(request: Request) -> list[str]:
    # The SDK sends arrays in brackets form (include[]=a&include[]=b); accept the plain form too.
    return request.query_params.getlist("include[]") + request.query_params.getlist("include")


async def create(request: Request, convs: Conversations, principal: str | None) -> Any:
    body = await _body(request)
    check_fields(body, CREATE_FIELDS)
    conv = await convs.create(principal, body.get("items"), body.get("metadata"))
    return conversation_object(conv)


async def retrieve(request: Request, convs: Conversations, principal: str | None) -> Any:
    return conversation_object(await convs.owned(request.path_params["conversation_id"], principal))


async def update(request: Request, convs: Conversations, principal: str | None) -> Any:
    body = await _body(request)
    check_fields(body, UPDATE_FIELDS)
    if "metadata" not in body:
        raise invalid_param(
            "metadata", "Missing required parameter: 'metadata'.", "missing_required_parameter"
        )
    conv = await convs.update(request.path_params["conversation_id"], principal, body["metadata"])
    return conversation_object(conv)


async def delete(request: Request, convs: Conversations, principal: str | None) -> Any:
    conversation_id = request.path_params["conversation_id"]
    await convs.delete(conversation_id, principal)
    return deleted_object(conversation_id)


async def items_create(request: Request, convs: Conversations, principal: str | None) -> Any:
    parse_include(_include(request))
    body = await _body(request)
    check_fields(body, frozenset({"items"}))
    items = await convs.add_items(request.path_params["conversation_id"], principal, body.get("items"))
    return item_list(items, has_more=False)


async def items_list(request: Request, convs: Conversations, principal: str | None) -> Any:
    params = parse_list_params(request.query_params, _include(request))
    page = await convs.list_items(request.path_params["conversation_id"], principal, params)
    return item_list(page.items, page.has_more)


async def item_retrieve(request: Request, convs: Conversations, principal: str | None) -> Any:
    parse_include(_include(request))
    path = request.path_params
    return await convs.get_item(path["conversation_id"], principal, path["item_id"])


async def item_delete(request: Request, convs: Conversations, principal: str | None) -> Any:
    path = request.path_params
    return conversation_object(await convs.delete_item(path["conversation_id"], principal, path["item_id"]))


def routes() -> list[Route]:
    base = "/v1/conversations"
    return [
        Route(base, _endpoint(create), methods=["POST"]),
        Route(base + "/{conversation_id}", _endpoint(retrieve), methods=["GET"]),
        Route(base + "/{conversation_id}", _endpoint(update), methods=["POST"]),
        Route(base + "/{conversation_id}", _endpoint(delete), methods=["DELETE"]),
        Route(base + "/{conversation_id}/items", _endpoint(items_create), methods=["POST"]),
        Route(base + "/{conversation_id}/items", _endpoint(items_list), methods=["GET"]),
        Route(base + "/{conversation_id}/items/{item_id}", _endpoint(item_retrieve), methods=["GET"]),
        Route(base + "/{conversation_id}/items/{item_id}", _endpoint(item_delete), methods=["DELETE"]),
    ]
