"""The upstream WebSocket's settings and URL (the behaviour is in tests/e2e/test_ws_upstream.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsproxy.settings import SettingsError, load_settings
from wsproxy.upstream.websocket import websocket_url


def test_websocket_url_from_base_url() -> None:
    assert websocket_url("https://api.openai.com/v1") == "wss://api.openai.com/v1/responses"
    assert websocket_url("http://10.0.0.5:8000/v1/") == "ws://10.0.0.5:8000/v1/responses"
    assert websocket_url("https://gw.example/v1?tenant=a") == "wss://gw.example/v1/responses?tenant=a"


def test_websocket_setting_defaults_to_auto_and_is_validated(tmp_path: Path) -> None:
    settings = load_settings(environ={"OPENAI_API_KEY": "sk-x"})
    assert settings.providers["openai"].websocket == "auto"
    assert settings.limits.upstream_ws_per_session >= 33
    path = tmp_path / "bad.toml"
    path.write_text('[providers.up]\nkind = "openai"\nbase_url = "http://x/v1"\nwebsocket = "sometimes"\n')
    with pytest.raises(SettingsError, match="websocket must be one of"):
        load_settings(str(path), environ={})
    path.write_text('[providers.up]\nkind = "openai"\nbase_url = "http://x/v1"\nwebsocket = "never"\n')
    assert load_settings(str(path), environ={}).providers["up"].websocket == "never"
