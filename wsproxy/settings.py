"""Typed, frozen settings, built once at start-up from a TOML file and ``WSPROXY_*`` variables.

Precedence: defaults < TOML file < environment. Environment names are ``WSPROXY_<FIELD>`` for
top-level fields and ``WSPROXY_<SECTION>_<FIELD>`` for the sections (``WSPROXY_STORE_BACKEND``,
``WSPROXY_LIMITS_WS_MAX_INFLIGHT``...). ``WSPROXY_API_KEYS`` is a comma-separated list.
``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` add an ``openai`` provider and ``ANTHROPIC_API_KEY`` /
``ANTHROPIC_BASE_URL`` an ``anthropic`` one, with no file at all. With no provider configured the
built-in ``local`` model serves every request.

A TOML example is in the README. This module reads files and the environment only in
:func:`load_settings`; everything else is a plain value object.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

PROVIDER_KINDS = ("openai", "chat_completions", "anthropic", "local")


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
    # wsproxy.cli). Deltas are ~200-byte JSON frames that compress to about a tenth, for a few us
    # of CPU each; the zlib streams (~26 KB per session) are created with the first compressed
    # message. Clients work without it.
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
    shutdown_grace: float = 30.0


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    api_keys: tuple[str, ...] = ()
    # None: only listed models and aliases route (bare unknown names are a 404).
    default_provider: str | None = "local"
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    # alias -> fallback chain of "provider@model" targets
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    store: StoreSettings = field(default_factory=StoreSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)

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
    if kind == "local" and not data.get("models"):
        # The built-in model answers to its provider's name ("local") unless it lists others.
        data["models"] = [name]
    return _section(ProviderSettings, {"name": name, **data}, {}, f"providers.{name}.")  # type: ignore[no-any-return]


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
    if "local" not in providers:
        providers["local"] = _provider("local", {"kind": "local", "models": ["local"]})

    aliases: dict[str, tuple[str, ...]] = {}
    for alias, targets in (data.pop("aliases", None) or {}).items():
        chain = (targets,) if isinstance(targets, str) else tuple(targets)
        if not chain:
            raise SettingsError(f"aliases.{alias} is empty")
        aliases[alias] = chain

    store = _section(StoreSettings, data.pop("store", None) or {}, env, "store.")
    limits = _section(LimitSettings, data.pop("limits", None) or {}, env, "limits.")
    top = _section(Settings, data, env, "")
    default_provider = data.get("default_provider") or env.get("WSPROXY_DEFAULT_PROVIDER")
    if not default_provider:
        # With only the local model there is no default: a mistyped model name is a 404 instead
        # of a silent answer from the local model (which still answers to 'local').
        default_provider = next((p for p in ("openai", "anthropic") if p in providers), None)
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
    )
    return settings.replace(**overrides) if overrides else settings
