"""Browser guards: pure ASGI middleware in front of every route (HTTP and WebSocket).

A proxy on 127.0.0.1 with a provider key and no client keys must not serve whatever web page the
user happens to open. In order, before anything else runs:

1. Host. Bound to a loopback address with ``allowed_hosts`` unset, only ``localhost``,
   ``127.0.0.1`` and ``[::1]`` (any port) are accepted: a page on evil.example whose name was
   rebound to 127.0.0.1 (DNS rebinding) sends ``Host: evil.example`` and is refused. Bound
   elsewhere any Host is accepted unless ``allowed_hosts`` lists some. ``/healthz`` and
   ``/readyz`` are exempt (probes address the pod by IP); a request without Host (HTTP/1.0,
   no browser) is not refused.
2. Origin. A request or WebSocket handshake whose ``Origin`` is neither the proxy's own (its
   host and port equal the Host header's) nor in ``allowed_origins`` gets 403 before any
   handler runs (for a WebSocket: before the upgrade). Requests without Origin (SDKs, Codex,
   curl) are not affected: browsers always send it on cross-origin requests and handshakes.
3. CORS, for the listed origins only: a preflight (``OPTIONS`` + ``Access-Control-Request-
   Method``) is answered here; every other answer, JSON or SSE, gets ``Access-Control-Allow-
   Origin`` for that origin, ``Vary: Origin`` and the headers clients read exposed.
4. No simple cross-site requests: a POST with a body that is not ``application/json`` gets 415
   (a form or a text/plain ``fetch`` needs no preflight; JSON does).

Refusals are OpenAI-shaped errors rendered by ``wsproxy.asgi.render``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from wsproxy.asgi.render import error_response
from wsproxy.errors import ClientError, ProxyError
from wsproxy.settings import Settings

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Paths probes call by IP: never refused for their Host.
_HOST_EXEMPT = frozenset({"/healthz", "/readyz"})

CORS_METHODS = "GET, POST, DELETE, OPTIONS"
# What the openai SDKs and browser frontends send. The JS SDK in a browser adds X-Stainless-Lang,
# -Package-Version, -OS, -Arch, -Runtime, -Runtime-Version, -Retry-Count and -Timeout (and helper
# headers in some calls): any requested ``x-stainless-*`` header is allowed too.
CORS_HEADERS = (
    "accept",
    "authorization",
    "content-type",
    "idempotency-key",
    "openai-beta",
    "openai-organization",
    "openai-project",
    "x-request-id",
)
CORS_EXPOSE = "x-request-id, x-should-retry, retry-after, retry-after-ms, idempotent-replayed"
CORS_MAX_AGE = "600"


# -- pure rules ---------------------------------------------------------------------------------


def split_host(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` or ``[v6][:port]`` -> (lower-case name without brackets, port); None when
    it is not a host."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        name, _, port_text = value.partition(":")
    if not name:
        return None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        return name, int(port_text)
    return name, None


def parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` -> (scheme, host, port with the scheme's default); None for
    ``null`` and anything else that is not an origin."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme, parts.hostname
    if scheme not in ("http", "https") or not host or parts.path not in ("", "/") or parts.query:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def canonical_origin(origin: str) -> str | None:
    parsed = parse_origin(origin)
    if parsed is None:
        return None
    scheme, host, port = parsed
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def same_origin(origin: tuple[str, str, int], host_header: str | None) -> bool:
    """The page comes from this server: its host and port equal the request's Host (a Host
    without a port has the default port of the Origin's scheme)."""
    if not host_header:
        return False
    host = split_host(host_header)
    if host is None:
        return False
    scheme, name, port = origin
    return name == host[0] and port == (host[1] if host[1] is not None else _DEFAULT_PORTS[scheme])


def is_loopback_bind(address: str) -> bool:
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


class HostRule:
    """Which Host headers are served (see the module docstring)."""

    def __init__(self, allowed: Iterable[str], bind: str) -> None:
        self.any = False
        self.names: set[str] = set()
        self.exact: set[tuple[str, int]] = set()
        entries = [a for a in allowed if a.strip()]
        if not entries:
            if is_loopback_bind(bind):
                self.names = set(LOOPBACK_HOSTS)
            else:
                self.any = True
        for entry in entries:
            if entry.strip() == "*":
                self.any = True
                continue
            host = split_host(entry)
            if host is None:
                raise ValueError(f"allowed_hosts: not a host: {entry!r}")
            if host[1] is None:
                self.names.add(host[0])
            else:
                self.exact.add((host[0], host[1]))

    def allows(self, host_header: str | None) -> bool:
        if self.any or host_header is None:
            return True
        host = split_host(host_header)
        if host is None:
            return False
        return host[0] in self.names or (host[1] is not None and (host[0], host[1]) in self.exact)


def cors_allow_headers(requested: str | None) -> str:
    """The fixed list, plus the ``x-stainless-*`` headers the preflight asks for."""
    names = list(CORS_HEADERS)
    for raw in (requested or "").split(","):
        name = raw.strip().lower()
        if name.startswith("x-stainless-") and name.replace("-", "").isalnum() and name not in names:
            names.append(name)
    return ", ".join(names)


def is_json_media_type(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


# -- the middleware -----------------------------------------------------------------------------


def _forbidden(message: str, code: str) -> ProxyError:
    return ClientError(message, status=403, code=code)


class BrowserGuards:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.hosts = HostRule(settings.allowed_hosts, settings.host)
        origins = {}
        for entry in settings.allowed_origins:
            canonical = canonical_origin(entry)
            if canonical is None:
                raise ValueError(f"allowed_origins: not an origin (scheme://host[:port]): {entry!r}")
            origins[canonical] = entry
        self.origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = headers.get("host")
        if scope.get("path") not in _HOST_EXEMPT and not self.hosts.allows(host):
            err = _forbidden(
                "This host name is not served here (allowed_hosts).",
                "host_not_allowed",
            )
            await self._refuse(scope, receive, send, err)
            return
        origin = headers.get("origin")
        listed: str | None = None
        if origin is not None:
            parsed = parse_origin(origin)
            canonical = canonical_origin(origin) if parsed is not None else None
            if canonical is not None and canonical in self.origins:
                listed = origin
            elif parsed is None or not same_origin(parsed, host):
                err = _forbidden(
                    "Requests from this origin are not allowed (allowed_origins).",
                    "origin_not_allowed",
                )
                await self._refuse(scope, receive, send, err)
                return
        if kind == "websocket":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if listed is not None:
            if method == "OPTIONS" and "access-control-request-method" in headers:
                await _preflight(listed, headers)(scope, receive, send)
                return
            send = _with_cors(send, listed)
        if method == "POST" and not _json_or_empty(headers):
            err = ClientError(
                "Request bodies must be JSON: send Content-Type: application/json.",
                status=415,
                code="unsupported_media_type",
            )
            await error_response(err)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, err: ProxyError) -> None:
        response = error_response(err)
        if scope["type"] == "http":
            await response(scope, receive, send)
            return
        websocket = WebSocket(scope, receive, send)
        if "websocket.http.response" in scope.get("extensions", {}):
            await websocket.send_denial_response(response)  # an HTTP 403 instead of the upgrade
        else:
            await websocket.close(1008)  # servers without the extension answer 403


# The only headers the guards read: the others are not decoded (this runs for every request).
_READ = frozenset(
    {
        b"host",
        b"origin",
        b"content-type",
        b"content-length",
        b"transfer-encoding",
        b"access-control-request-method",
        b"access-control-request-headers",
    }
)


def _headers(scope: Scope) -> dict[str, str]:
    # ASGI header names are lower-case. Latin-1 as the wire has it; a repeated header keeps its
    # first value (Host, Origin and Content-Type are not lists).
    out: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        if name in _READ:
            out.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return out


def _json_or_empty(headers: dict[str, str]) -> bool:
    content_type = headers.get("content-type")
    if content_type is not None:
        return is_json_media_type(content_type)
    # No Content-Type: only a POST without a body (the JS SDK's POST .../cancel) passes.
    length = headers.get("content-length")
    return "transfer-encoding" not in headers and (length is None or length.strip() == "0")


def _preflight(origin: str, headers: dict[str, str]) -> Response:
    return Response(
        status_code=204,
        headers={
            "access-control-allow-origin": origin,
            "access-control-allow-methods": CORS_METHODS,
            "access-control-allow-headers": cors_allow_headers(headers.get("access-control-request-headers")),
            "access-control-max-age": CORS_MAX_AGE,
            "vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        },
    )


def _with_cors(send: Send, origin: str) -> Send:
    extra = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", CORS_EXPOSE.encode()),
        (b"vary", b"Origin"),
    ]

    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return cors_send


__all__ = ["BrowserGuards", "HostRule", "canonical_origin", "parse_origin", "same_origin", "split_host"]
