"""Who is calling and what they may do: :class:`Principal`, model scopes, client addresses.

A principal is what a key authenticates as. Its ``name`` owns stored responses and names its
usage rows and limit counters: ``NAME`` for a ``[keys.NAME]`` key (so rotating the key under the
same name keeps its responses and usage), ``key_<16 hex>`` for a key in ``api_keys``/``admin_keys``.

Model scopes. A principal's ``scopes`` is a tuple of pattern lists; a model is allowed when every
list allows it (a key's own ``models`` is one list; a short-lived client secret minted from that
key adds its own subset as another, see :meth:`Principal.narrowed`). A pattern list allows a
request when

- the requested name is in it literally (a bare name, an alias, or ``provider@model``), or
- every target the request routes to (each step of an alias's fallback chain) is allowed by a
  pattern: ``provider@*`` allows any model of that provider, ``provider@model`` that target, and
  a bare name or alias allows the targets it routes to itself. So allowing ``fast`` (an alias of
  ``local@local``) also allows asking for ``local@local``, and allowing ``gpt-4o`` (routed to the
  default provider) also allows ``openai@gpt-4o``; allowing ``openai@*`` does not allow an alias
  whose chain falls back to another provider.

Pure: no I/O, no clock. Routing is passed in as a function.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from wsproxy.errors import ProxyError
from wsproxy.policy.routing import Target

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-principal limits; 0 means unlimited."""

    rpm: int = 0
    tpm: int = 0
    requests_per_day: int = 0
    tokens_per_day: int = 0

    @property
    def any(self) -> bool:
        return bool(self.rpm or self.tpm or self.requests_per_day or self.tokens_per_day)

    @property
    def tokens(self) -> bool:
        return bool(self.tpm or self.tokens_per_day)


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    # Each tuple is one list of allowed model patterns; all must allow a model. () = any model.
    scopes: tuple[tuple[str, ...], ...] = ()
    limits: Limits = field(default_factory=Limits)
    admin: bool = False
    # Responses of deterministic requests are served from the response cache by default.
    cache: bool = False

    @property
    def models(self) -> tuple[str, ...] | None:
        """The key's own model list (None: any model)."""
        return self.scopes[0] if self.scopes else None

    def narrowed(self, models: Sequence[str]) -> Principal:
        """The same principal restricted to ``models`` as well (e.g. a short-lived client
        secret): never more than the principal itself may use. Never admin."""
        return replace(self, scopes=(*self.scopes, tuple(models)), admin=False)

    def allows(self, model: str, targets: Sequence[Target], route: Callable[[str], Sequence[Target]]) -> bool:
        return all(_scope_allows(scope, model, targets, route) for scope in self.scopes)


def _scope_allows(
    patterns: tuple[str, ...], model: str, targets: Sequence[Target], route: Callable[[str], Sequence[Target]]
) -> bool:
    if model in patterns:
        return True
    providers: set[str] = set()
    allowed: set[Target] = set()
    for pattern in patterns:
        provider, sep, name = pattern.partition("@")
        if sep and name == "*":
            providers.add(provider)
            continue
        try:
            allowed.update(route(pattern))
        except ProxyError:
            continue  # a pattern naming an unknown provider allows nothing
    return bool(targets) and all(t.provider in providers or t in allowed for t in targets)


def model_not_allowed(model: str) -> ProxyError:
    return ProxyError(
        f"This API key is not allowed to use the model '{model}'.",
        status=403,
        type="invalid_request_error",
        code="model_not_allowed",
        param="model",
    )


# -- client addresses ----------------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """``trusted_proxies`` entries: addresses or CIDR blocks. Raises ValueError on a bad one."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The address a request came from. ``X-Forwarded-For`` is believed only when the peer is a
    trusted proxy, and then only as far as the chain is made of trusted proxies: the rightmost
    address that is not one is the client (the leftmost entries are whatever the client wrote)."""
    address = peer or "unknown"
    if not forwarded_for or not trusted or not _trusted(address, trusted):
        return address
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        address = hop
        if not _trusted(hop, trusted):
            break
    return address
