"""Typed, frozen settings, built once at start-up from a TOML file and ``WSPROXY_*`` variables.

Precedence: defaults < TOML file < environment. Environment names are ``WSPROXY_<FIELD>`` for
top-level fields and ``WSPROXY_<SECTION>_<FIELD>`` for the sections (``WSPROXY_STORE_BACKEND``,
``WSPROXY_LIMITS_WS_MAX_INFLIGHT``...). ``WSPROXY_API_KEYS`` is a comma-separated list.
``WSPROXY_ADMIN_KEYS`` likewise.
``[keys.NAME]`` sections (scoped keys, by digest) come only from the file.
``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` add an ``openai`` provider and ``ANTHROPIC_API_KEY`` /
``ANTHROPIC_BASE_URL`` an ``anthropic`` one, ``GEMINI_API_KEY`` (or ``GOOGLE_API_KEY``) /
``GEMINI_BASE_URL`` a ``gemini`` one, with no file at all. With no provider configured the
built-in ``local`` model serves every request.

A TOML example is in the README. This module reads files and the environment only in
:func:`load_settings`; everything else is a plain value object.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

PROVIDER_KINDS = ("openai", "chat_completions", "anthropic", "gemini", "local")
# kind = "openai": how WebSocket-mode client sessions reach the provider (README, "Upstream
# WebSocket"): "auto" tries an upstream WebSocket and falls back to HTTP when it is refused,
# "always" requires it (a refusal is an error), "never" uses HTTP.
WEBSOCKET_MODES = ("auto", "always", "never")


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    name: str
    kind: str
    base_url: str = ""
    api_key: str | None = None
    api_key_env: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # HTTP/2 negotiated by ALPN on https:// base URLs.
    http2: bool = True
    # HTTP/2 without TLS (h2c with prior knowledge), for upstreams on a private network.
    http2_prior_knowledge: bool = False
    # TLS verification: true, false, or the path of a CA bundle.
    verify: str = "true"
    connect_timeout: float = 10.0
    # No first byte within this many seconds: the attempt fails (and may fall back).
    first_byte_timeout: float = 120.0
    # Silence between two chunks of a streaming answer longer than this: the stream failed.
    idle_timeout: float = 300.0
    write_timeout: float = 30.0
    pool_timeout: float = 10.0
    # HTTP/1.1 carries one streaming response per connection: keep as many idle connections
    # as may run at once, or every response past the keepalive count pays a new connection.
    max_connections: int = 256
    max_keepalive_connections: int = 256
    keepalive_expiry: float = 60.0
    max_retries: int = 2
    retry_max_wait: float = 8.0
    # Models listed by GET /v1/models for this provider (requests may still name others).
    models: tuple[str, ...] = ()
    # Dialect knobs (wsproxy.dialects.base.DialectOptions fields).
    options: Mapping[str, Any] = field(default_factory=dict)
    # Local model only: seconds between tokens, and the first-token delay.
    token_delay: float = 0.02
    prefill_delay: float = 0.0
    # kind = "openai" only: WebSocket-mode sessions over an upstream WebSocket (WEBSOCKET_MODES).
    websocket: str = "auto"
    # A refused upgrade ("auto") sends this provider's sessions over HTTP for this many seconds.
    websocket_refusal_ttl: float = 300.0
    # An upstream socket older than this is replaced before its next response (OpenAI closes
    # sockets at 60 minutes).
    websocket_max_age: float = 3300.0

    def key(self, environ: Mapping[str, str]) -> str | None:
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return environ.get(self.api_key_env)
        return None


@dataclass(frozen=True, slots=True)
class StoreSettings:
    backend: str = "sqlite"
    path: str = "wsproxy.sqlite3"
    url: str = "redis://127.0.0.1:6379/0"
    ttl_seconds: float = 30 * 86400.0
    max_records: int = 1_000_000
    purge_interval: float = 60.0
    # Items one conversation may hold (/v1/conversations); a turn or items.create beyond it is a 400.
    conversation_max_items: int = 10_000
    # Usage rows older than this many days are dropped.
    usage_days: int = 400


@dataclass(frozen=True, slots=True)
class LimitSettings:
    max_body_bytes: int = 32 * 1024 * 1024
    max_ws_message_bytes: int = 32 * 1024 * 1024
    ws_max_inflight: int = 16
    ws_max_lanes: int = 32
    # Responses queued on one socket beyond the in-flight ones; more is a client bug or a flood.
    ws_max_queued: int = 256
    ws_connection_max_age: float = 3600.0
    # permessage-deflate for WebSocket mode when the client offers it (windows and memLevel in
    # wsproxy.server.websocket_protocol). Deltas are ~200-byte JSON frames that compress to
    # about a tenth, for a few us of CPU each; the zlib streams (~26 KB per session) are created
    # with the first compressed message. Clients work without it.
    ws_compression: bool = True
    # Messages shorter than this go out uncompressed even when deflate was negotiated (RFC 7692
    # lets the sender choose per message, as Node's ws does below 1 KB): compressing a ~200-byte
    # delta costs more CPU than anything else on the WebSocket path and saves ~180 bytes.
    # 0 compresses every message.
    ws_compression_min_bytes: int = 1024
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    # Events buffered between the upstream reader and a client writer (backpressure bound).
    event_queue_size: int = 256
    # A client that does not take an event for this long is closed (1013 / stream ended).
    slow_client_timeout: float = 30.0
    sse_keepalive_interval: float = 15.0
    sse_done_sentinel: bool = False
    # Requests per minute per principal (0 = unlimited), with a burst of the same size.
    rate_limit_rpm: int = 0
    max_concurrent_responses: int = 10_000
    # Upstream WebSockets (one per client lane, kind = "openai"): at most this many per client
    # session and in total; a lane past either bound is carried over HTTP instead.
    upstream_ws_per_session: int = 33
    upstream_ws_total: int = 4096
    shutdown_grace: float = 30.0
    # Response creations per minute per client address when auth is off (0 = unlimited).
    ip_rpm: int = 0
    # Peers (addresses or CIDR blocks) whose X-Forwarded-For names the client (a load balancer).
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeySettings:
    """A ``[keys.NAME]`` section: the SHA-256 hex digest of the key, never the key itself."""

    name: str
    sha256: str
    # Allowed model names, aliases or provider@model / provider@* patterns; None = any.
    models: tuple[str, ...] | None = None
    rpm: int = 0
    tpm: int = 0
    requests_per_day: int = 0
    tokens_per_day: int = 0
    admin: bool = False
    cache: bool = False


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The response cache (opt-in per key or per request; its entries are bounded in number like
    stored responses, by ``store.max_records``). ``ttl_seconds = 0`` turns it off."""

    ttl_seconds: float = 300.0
    # Responses larger than this (JSON bytes) are not cached.
    max_entry_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    # "text" (human) or "json" (one JSON object per line: access logs, sessions, responses).
    log_format: str = "text"
    api_keys: tuple[str, ...] = ()
    # None: only listed models and aliases route (bare unknown names are a 404).
    default_provider: str | None = "local"
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    # alias -> fallback chain of "provider@model" targets
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    store: StoreSettings = field(default_factory=StoreSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    # Unscoped keys that may read every key's usage.
    admin_keys: tuple[str, ...] = ()
    keys: Mapping[str, KeySettings] = field(default_factory=dict)
    cache: CacheSettings = field(default_factory=CacheSettings)
    # -- browser frontends (wsproxy.asgi.guards, wsproxy.asgi.client_secrets) ---------------
    # Origins ("https://app.example.com") whose pages may call the proxy (CORS, WebSocket).
    # Pages of the proxy's own origin always may; requests without Origin are not affected.
    allowed_origins: tuple[str, ...] = ()
    # Host header values accepted ("name" any port, "name:port" that port, "*" any). Empty:
    # only localhost names when bound to a loopback address (DNS rebinding), else any.
    allowed_hosts: tuple[str, ...] = ()
    # Signs client secrets (HMAC-SHA256). Unset: a random one per process, so secrets work only
    # on the replica that minted them; several replicas must share one.
    client_secret_key: str | None = field(default=None, repr=False)
    client_secret_max_seconds: int = 600
    # Processes serving the one port (``wsproxy serve --workers N``); see the README for how to
    # choose N. 1 runs the server in this process, without a supervisor.
    workers: int = 1
    # Set by the supervisor in each worker (1..N); 0 in a single-process server. Lets per-process
    # state (metrics files, logs) tell the workers apart.
    worker_id: int = 0

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


class SettingsError(ValueError):
    pass


def _coerce(value: Any, hint: Any, where: str) -> Any:
    text = str(hint)
    try:
        if hint is bool or text == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int or text == "int":
            return int(value)
        if hint is float or text == "float":
            return float(value)
        if "Mapping" in text:
            if not isinstance(value, Mapping):
                raise TypeError(value)
            return dict(value)
        if "tuple" in text:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(value)
        if "str" in text:
            return None if value is None else str(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{where}: invalid value {value!r}") from None
    return value


def _section(cls: type[Any], data: Mapping[str, Any], env: Mapping[str, str], prefix: str) -> Any:
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        where = f"{prefix}{f.name}"
        if f.name in data:
            values[f.name] = _coerce(data[f.name], hints[f.name], where)
        env_name = f"WSPROXY_{prefix.upper().replace('.', '_')}{f.name.upper()}"
        if env_name in env:
            values[f.name] = _coerce(env[env_name], hints[f.name], env_name)
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise SettingsError(f"unknown setting(s) in [{prefix.rstrip('.') or 'top level'}]: {sorted(unknown)}")
    return cls(**values)


def _provider(name: str, data: Mapping[str, Any]) -> ProviderSettings:
    data = dict(data)
    kind = data.get("kind")
    if kind not in PROVIDER_KINDS:
        raise SettingsError(f"providers.{name}.kind must be one of {PROVIDER_KINDS}, not {kind!r}")
    if kind != "local" and not data.get("base_url"):
        raise SettingsError(f"providers.{name}.base_url is required for kind {kind!r}")
    data["base_url"] = str(data.get("base_url", "")).rstrip("/")
    if data.get("websocket", "auto") not in WEBSOCKET_MODES:
        raise SettingsError(
            f"providers.{name}.websocket must be one of {WEBSOCKET_MODES}, not {data.get('websocket')!r}"
        )
    if kind == "local" and not data.get("models"):
        # The built-in model answers to its provider's name ("local") unless it lists others.
        data["models"] = [name]
    return _section(ProviderSettings, {"name": name, **data}, {}, f"providers.{name}.")  # type: ignore[no-any-return]


_KEY_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _key(name: str, data: Any) -> KeySettings:
    if not isinstance(data, Mapping):
        raise SettingsError(f"keys.{name} must be a table")
    if not _KEY_NAME.fullmatch(name) or re.fullmatch(r"key_[0-9a-f]{16}", name) or name == "anonymous":
        raise SettingsError(
            f"keys.{name}: a key name is 1-64 letters, digits, '_', '.' or '-' "
            "(and not 'anonymous' or key_<16 hex>, the names of unnamed keys)"
        )
    digest = str(data.get("sha256", "")).lower()
    if not _DIGEST.fullmatch(digest):
        raise SettingsError(
            f"keys.{name}.sha256 must be the 64-hex-digit SHA-256 of the key (wsproxy keys hash -)"
        )
    if "key" in data or "api_key" in data:
        raise SettingsError(f"keys.{name}: put the key's sha256, never the key itself")
    models = data.get("models")
    if models is not None and (
        not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)
    ):
        raise SettingsError(f"keys.{name}.models must be a list of model names or patterns")
    for field_name in ("rpm", "tpm", "requests_per_day", "tokens_per_day"):
        value = data.get(field_name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SettingsError(f"keys.{name}.{field_name} must be an integer >= 0")
    rest = {k: v for k, v in data.items() if k not in ("sha256", "models")}
    key: KeySettings = _section(
        KeySettings,
        {"name": name, "sha256": digest, **rest},
        {},
        f"keys.{name}.",
    )
    return dataclasses.replace(key, models=None if models is None else tuple(models))


def load_settings(
    path: str | None = None, environ: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    env = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    path = path or env.get("WSPROXY_CONFIG")
    if path:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)

    providers: dict[str, ProviderSettings] = {}
    for name, pdata in (data.pop("providers", None) or {}).items():
        providers[name] = _provider(name, pdata)
    if "openai" not in providers and env.get("OPENAI_API_KEY"):
        providers["openai"] = _provider(
            "openai",
            {
                "kind": "openai",
                "base_url": env.get("OPENAI_BASE_URL") or "https://api.openai.com/v1",
                "api_key_env": "OPENAI_API_KEY",
            },
        )
    if "anthropic" not in providers and env.get("ANTHROPIC_API_KEY"):
        providers["anthropic"] = _provider(
            "anthropic",
            {
                "kind": "anthropic",
                "base_url": env.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com/v1",
                "api_key_env": "ANTHROPIC_API_KEY",
            },
        )
    gemini_key_env = next((k for k in ("GEMINI_API_KEY", "GOOGLE_API_KEY") if env.get(k)), None)
    if "gemini" not in providers and gemini_key_env is not None:
        providers["gemini"] = _provider(
            "gemini",
            {
                "kind": "gemini",
                "base_url": env.get("GEMINI_BASE_URL") or "https://generativelanguage.googleapis.com/v1beta",
                "api_key_env": gemini_key_env,
            },
        )
    if "local" not in providers:
        providers["local"] = _provider("local", {"kind": "local", "models": ["local"]})

    aliases: dict[str, tuple[str, ...]] = {}
    for alias, targets in (data.pop("aliases", None) or {}).items():
        chain = (targets,) if isinstance(targets, str) else tuple(targets)
        if not chain:
            raise SettingsError(f"aliases.{alias} is empty")
        aliases[alias] = chain

    keys: dict[str, KeySettings] = {}
    for name, kdata in (data.pop("keys", None) or {}).items():
        keys[name] = _key(name, kdata)
    digests = [k.sha256 for k in keys.values()]
    if len(set(digests)) != len(digests):
        raise SettingsError("two [keys.*] sections have the same sha256")
    cache = _section(CacheSettings, data.pop("cache", None) or {}, env, "cache.")
    store = _section(StoreSettings, data.pop("store", None) or {}, env, "store.")
    limits = _section(LimitSettings, data.pop("limits", None) or {}, env, "limits.")
    for entry in limits.trusted_proxies:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise SettingsError(f"limits.trusted_proxies: {entry!r} is not an address or a CIDR") from None
    top = _section(Settings, data, env, "")
    if top.log_format not in ("text", "json"):
        raise SettingsError(f"log_format must be 'text' or 'json', not {top.log_format!r}")
    default_provider = data.get("default_provider") or env.get("WSPROXY_DEFAULT_PROVIDER")
    if not default_provider:
        # With only the local model there is no default: a mistyped model name is a 404 instead
        # of a silent answer from the local model (which still answers to 'local').
        default_provider = next((p for p in ("openai", "anthropic", "gemini") if p in providers), None)
    if default_provider is not None and default_provider not in providers:
        raise SettingsError(f"default_provider {default_provider!r} is not a configured provider")
    for alias, chain in aliases.items():
        for target in chain:
            provider = target.split("@", 1)[0] if "@" in target else default_provider
            if provider is None:
                raise SettingsError(
                    f"aliases.{alias}: {target!r} names no provider; write provider@model "
                    "(there is no default_provider)"
                )
            if provider not in providers:
                raise SettingsError(f"aliases.{alias}: unknown provider in {target!r}")
    settings: Settings = top.replace(
        providers=providers,
        aliases=aliases,
        store=store,
        limits=limits,
        default_provider=default_provider,
        keys=keys,
        cache=cache,
    )
    settings = settings.replace(**overrides) if overrides else settings
    _check_workers(settings)
    return settings


def _check_workers(settings: Settings) -> None:
    if settings.workers < 1:
        raise SettingsError(f"workers must be >= 1, not {settings.workers}")
    store = settings.store
    if settings.workers > 1 and (
        store.backend == "memory" or (store.backend == "sqlite" and store.path == ":memory:")
    ):
        # Each worker would have a store of its own: a response stored by one would be unknown
        # to the others (retrieve, previous_response_id, background runs).
        raise SettingsError(
            "workers > 1 needs a store the workers share: store.backend 'sqlite' (a file) or 'redis'"
        )
