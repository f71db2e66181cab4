"""``GET /v1/usage``: usage per key, model and UTC day, from the store.

A key sees its own rows. An admin key (``admin_keys``, or ``admin = true`` in ``[keys.NAME]``)
sees every key's rows, or one key's with ``?key=NAME``; with auth off every caller is the
operator and may do the same. ``start_date``/``end_date`` (``YYYY-MM-DD``, inclusive) default to
the last 31 days.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wsproxy.asgi.admission import identity_of, runtime_of
from wsproxy.asgi.render import error_response, json_response
from wsproxy.errors import ProxyError, unknown_parameter
from wsproxy.policy.usage import date_range, utc_date

_PARAMS = frozenset({"start_date", "end_date", "key"})


async def usage(request: Request) -> Response:
    runtime = runtime_of(request)
    try:
        principal = identity_of(request)  # admitted already (wsproxy.asgi.admission)
        params = request.query_params
        unknown = next((k for k in params if k not in _PARAMS), None)
        if unknown is not None:
            raise unknown_parameter(unknown)
        start, end = date_range(params.get("start_date"), params.get("end_date"), utc_date(time.time()))
        asked = params.get("key")
        admin = principal is None or principal.admin
        if admin:
            key = asked or None
        else:
            assert principal is not None
            if asked is not None and asked != principal.name:
                raise ProxyError(
                    "Only an admin key may read the usage of another key.",
                    status=403,
                    type="invalid_request_error",
                    code="forbidden",
                    param="key",
                )
            key = principal.name
        rows = await runtime.tenancy.usage(key, start, end)
    except ProxyError as exc:
        return error_response(exc)
    return json_response({"object": "list", "data": rows, "start_date": start, "end_date": end})


def routes() -> list[Route]:
    return [Route("/v1/usage", usage, methods=["GET"])]
