"""The provider interface shared by HTTP upstreams and the built-in local model."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from wsproxy.core.events import Event
from wsproxy.dialects.base import UpstreamCall


class Provider(Protocol):
    name: str
    kind: str
    # Provider-specific create parameters it honours (see wsproxy.core.params.check_supported).
    supported_params: frozenset[str]

    def stream(self, call: UpstreamCall, response_id: str, created_at: int) -> AsyncGenerator[Event, None]:
        """Run one response. Raise ``ProxyError`` only before the first event is yielded."""
        ...

    async def aclose(self) -> None: ...
