"""Router: provider@model, aliases with fallback chains, listed models, the default provider."""

from __future__ import annotations

import pytest

from wsproxy.errors import NotFound
from wsproxy.policy.routing import Router, Target


def router() -> Router:
    return Router(
        providers={"openai": (), "anthropic": ("claude-x", "claude-y"), "local": ("local",)},
        aliases={
            "fast": ("anthropic@claude-x", "gpt-5-mini"),
            "best": ("openai@gpt-5.5",),
            "claude-y": ("local@local",),  # an alias wins over a listed model of the same name
        },
        default_provider="openai",
    )


def test_alias_chain_is_returned_in_order_with_the_default_provider_for_bare_names() -> None:
    assert router().route("fast") == (Target("anthropic", "claude-x"), Target("openai", "gpt-5-mini"))
    assert router().route("best") == (Target("openai", "gpt-5.5"),)


def test_alias_wins_over_a_listed_model() -> None:
    assert router().route("claude-y") == (Target("local", "local"),)


def test_provider_at_model() -> None:
    assert router().route("anthropic@claude-z") == (Target("anthropic", "claude-z"),)
    assert router().route("openai@gpt-4o") == (Target("openai", "gpt-4o"),)
    # Only the first '@' separates the provider.
    assert router().route("local@a@b") == (Target("local", "a@b"),)


@pytest.mark.parametrize("model", ["nope@gpt-5", "anthropic@", "@gpt-5"])
def test_unknown_provider_is_model_not_found(model: str) -> None:
    with pytest.raises(NotFound) as info:
        router().route(model)
    err = info.value
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert model in err.message


def test_listed_models_go_to_their_provider() -> None:
    assert router().route("claude-x") == (Target("anthropic", "claude-x"),)
    assert router().route("local") == (Target("local", "local"),)


def test_other_bare_names_go_to_the_default_provider() -> None:
    assert router().route("gpt-5.5") == (Target("openai", "gpt-5.5"),)
    other = Router(providers={"local": ("local",)}, aliases={}, default_provider="local")
    assert other.route("whatever") == (Target("local", "whatever"),)


def test_without_a_default_provider_an_unknown_bare_name_is_model_not_found() -> None:
    only_local = Router(providers={"local": ("local",)}, aliases={}, default_provider=None)
    assert only_local.route("local") == (Target("local", "local"),)
    assert only_local.route("local@anything") == (Target("local", "anything"),)
    with pytest.raises(NotFound) as info:
        only_local.route("gpt-5-typo")
    err = info.value
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert "'gpt-5-typo'" in err.message and "OPENAI_API_KEY" in err.message


def test_target_str() -> None:
    assert str(Target("anthropic", "claude-x")) == "anthropic@claude-x"


def test_models_lists_every_routable_name_once() -> None:
    names = router().models()
    assert len(names) == len(set(names))
    assert set(names) == {
        "fast",
        "best",
        "claude-y",
        "anthropic@claude-x",
        "anthropic@claude-y",
        "claude-x",
        "local@local",
        "local",
    }
    assert names[:3] == ["fast", "best", "claude-y"]  # aliases first
    r = router()
    for name in names:
        assert r.route(name)  # every listed name routes
