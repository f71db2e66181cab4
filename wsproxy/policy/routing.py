"""Model routing: ``provider@model``, aliases with fallback chains, and the default provider.

``route(model)`` returns the ordered targets to try. A bare model name that no alias or listed
model matches goes to the default provider unchanged, so ``gpt-5.5`` works against OpenAI with no
configuration at all. Without a default provider (only the built-in local model is configured
and ``default_provider`` was not set) such a name is a 404 ``model_not_found`` naming it and
saying how to configure a provider: a typo never silently reaches the local model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wsproxy.errors import NotFound, model_not_found

CONFIGURE_HINT = (
    "No provider serves it: set OPENAI_API_KEY, ANTHROPIC_API_KEY or GEMINI_API_KEY (or configure "
    "a provider in wsproxy.toml, or set default_provider) to reach real models, or use model 'local'."
)


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
        default_provider: str | None,
    ) -> None:
        """``providers`` maps each provider name to the models it lists; ``default_provider``
        None: bare names that are neither aliases nor listed models are unknown (404)."""
        self.providers = providers
        self.default_provider = default_provider
        self.aliases = {name: tuple(self._parse(t) for t in chain) for name, chain in aliases.items()}
        self._listed = {m: p for p, models in providers.items() for m in models}

    def _parse(self, target: str) -> Target:
        provider, sep, model = target.partition("@")
        if not sep:
            if self.default_provider is None:
                raise ValueError(f"alias target {target!r} names no provider and there is no default")
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
        if self.default_provider is None:
            error = model_not_found(model)
            raise NotFound(f"{error.message} {CONFIGURE_HINT}", param="model", code="model_not_found")
        return (Target(self.default_provider, model),)

    def models(self) -> list[str]:
        """Every routable model name, for GET /v1/models."""
        names = list(self.aliases)
        for provider, models in self.providers.items():
            names.extend(f"{provider}@{m}" for m in models)
            names.extend(m for m in models if self._listed.get(m) == provider)
        return list(dict.fromkeys(names))
