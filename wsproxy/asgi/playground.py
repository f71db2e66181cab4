"""``GET /``: the playground, one self-contained page that chats with the proxy in WebSocket mode.

The page (``static/playground.html``) is package data: no build step, nothing from a CDN. It is
read once, when the route is made, and served with a Content-Security-Policy that allows its own
inline script (by hash) and connections to this origin only, and forbids framing.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


def load_page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy."""
    page = resources.files("wsproxy.asgi").joinpath("static/playground.html").read_bytes()
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
        for body in _SCRIPT.findall(page)
    )
    csp = (
        "default-src 'none'; "
        f"script-src {hashes}; "
        "style-src 'unsafe-inline'; "
        "connect-src 'self'; "
        "img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return page, csp


def route() -> Route:
    page, csp = load_page()
    headers = {
        "content-security-policy": csp,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-cache",
    }

    async def playground(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    return Route("/", playground, methods=["GET"])
