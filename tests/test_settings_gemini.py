"""Settings: ``kind = "gemini"`` providers, and the ``gemini`` provider the environment adds."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsproxy.dialects.gemini_stream import GeminiDialect
from wsproxy.service.wiring import dialect_for
from wsproxy.settings import SettingsError, load_settings

GOOGLE = "https://generativelanguage.googleapis.com/v1beta"


@pytest.mark.parametrize("var", ["GEMINI_API_KEY", "GOOGLE_API_KEY"])
def test_a_google_key_in_the_environment_adds_a_default_gemini_provider(var: str) -> None:
    env = {var: "g-key"}
    settings = load_settings(environ=env)
    gemini = settings.providers["gemini"]
    assert (gemini.kind, gemini.base_url, gemini.api_key_env) == ("gemini", GOOGLE, var)
    assert gemini.key(env) == "g-key"
    assert settings.default_provider == "gemini"


def test_gemini_key_wins_over_google_key_and_base_url_is_configurable() -> None:
    env = {"GOOGLE_API_KEY": "g", "GEMINI_API_KEY": "m", "GEMINI_BASE_URL": "http://127.0.0.1:9/v1beta/"}
    gemini = load_settings(environ=env).providers["gemini"]
    assert gemini.key(env) == "m" and gemini.base_url == "http://127.0.0.1:9/v1beta"


def test_openai_and_anthropic_stay_ahead_as_default() -> None:
    env = {"ANTHROPIC_API_KEY": "a", "GEMINI_API_KEY": "g"}
    assert load_settings(environ=env).default_provider == "anthropic"
    assert "gemini" not in load_settings(environ={}).providers


def test_gemini_kind_in_a_file(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text(f'[providers.g]\nkind = "gemini"\nbase_url = "{GOOGLE}"\napi_key_env = "K"\n')
    assert load_settings(str(cfg), environ={}).providers["g"].kind == "gemini"
    assert isinstance(dialect_for("gemini"), GeminiDialect)
    cfg.write_text('[providers.g]\nkind = "gemini"\n')
    with pytest.raises(SettingsError, match="base_url is required"):
        load_settings(str(cfg), environ={})
