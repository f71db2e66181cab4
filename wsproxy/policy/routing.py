"""Model routing: ``provider@model``, aliases with fallback chains, and the default provider.

``route(model)`` returns the ordered targets to try. A bare model name that no alias or listed
model matches goes to the default provider unchanged, so ``gpt-5.5`` works against OpenAI with no
configuration at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wsproxy.errors import model_not_found


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}@{self.model}"


class Router:
    def __init__(
        self,
        providers: Mapping[str, tuple[str, ...]],
        aliases: Mapping[str, tuple[str, ...]],
        default_provider: str,
    ) -> None:
        """``providers`` maps each provider name to the models it lists."""
        self.providers = providers
        self.default_provider = default_provider
        self.aliases = {name: tuple(self._parse(t) for t in chain) for name, chain in aliases.items()}
        self._listed = {m: p for p, models in providers.items() for m in models}

    def _parse(self, target: str) -> Target:
        provider, sep, model = target.partition("@")
        if not sep:
            return Target(self.default_provider, target)
        return Target(provider, model)

    def route(self, model: str) -> tuple[Target, ...]:
        chain = self.aliases.get(model)
        if chain is not None:
            return chain
        provider, sep, name = model.partition("@")
        if sep:
            if provider not in self.providers or not name:
                raise model_not_found(model)
            return (Target(provider, name),)
        listed = self._listed.get(model)
        if listed is not None:
            return (Target(listed, model),)
        return (Target(self.default_provider, model),)

    def models(self) -> list[str]:
        """Every routable model name, for GET /v1/models."""
        names = list(self.aliases)
        for provider, models in self.providers.items():
            names.extend(f"{provider}@{m}" for m in models)
            names.extend(m for m in models if self._listed.get(m) == provider)
        return list(dict.fromkeys(names))
