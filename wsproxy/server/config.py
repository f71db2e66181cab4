"""The uvicorn configuration ``wsproxy serve`` runs (protocol classes, limits, deflate)."""

from __future__ import annotations

import os
from typing import Any

import uvicorn

from wsproxy.server.http_protocol import MAX_HEAD_BYTES, BoundedHttpToolsProtocol
from wsproxy.server.websocket_protocol import LeanWebSocketProtocol, deflate_factory
from wsproxy.settings import Settings


def build_config(settings: Settings, app: Any = None) -> uvicorn.Config:
    """The uvicorn configuration ``wsproxy serve`` runs (``app`` defaults to ``create_app``)."""
    if app is None:
        from wsproxy.asgi.app import create_app

        app = create_app(settings)
    limits = settings.limits
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=BoundedHttpToolsProtocol,
        ws=LeanWebSocketProtocol,
        ws_max_size=limits.max_ws_message_bytes,
        ws_ping_interval=limits.ws_ping_interval,
        ws_ping_timeout=limits.ws_ping_timeout,
        ws_per_message_deflate=limits.ws_compression,
        lifespan="on",
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(limits.shutdown_grace) + 5,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        # X-Forwarded-For is read by wsproxy itself, from limits.trusted_proxies only (uvicorn
        # would otherwise believe it from 127.0.0.1, and the ASGI client would be whatever a
        # local client wrote in it).
        proxy_headers=False,
        # Which worker answered (``--workers N``): a default header uvicorn adds to every
        # response head, so it costs nothing per event.
        headers=[("x-wsproxy-worker", f"{settings.worker_id}; pid={os.getpid()}")]
        if settings.worker_id
        else None,
    )
    # Read by LeanWebSocketProtocol (uvicorn builds protocols from the config alone).
    config.wsproxy_deflate = deflate_factory(limits.ws_compression_min_bytes)  # type: ignore[attr-defined]
    return config
