"""Settings parsing (defaults < TOML < environment, typed, refused when wrong) and the command
line (``wsproxy.cli``: argv only; bad arguments and bad settings exit with status 2 before any
server starts)."""

from __future__ import annotations

from pathlib import Path

import pytest

import wsproxy.cli as cli
from wsproxy.settings import SettingsError, load_settings


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "wsproxy.toml"
    path.write_text(text)
    return str(path)


def test_defaults_with_nothing_configured() -> None:
    s = load_settings(None, environ={})
    # No default provider: with only the local model a mistyped model name is a 404.
    assert (s.host, s.port, s.default_provider, s.store.backend) == ("127.0.0.1", 8080, None, "sqlite")
    assert "local" in s.providers and s.api_keys == ()


def test_the_environment_overrides_the_file_and_is_typed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "port = 9000\n[limits]\nws_max_inflight = 4\nsse_done_sentinel = false\n"
        '[store]\nbackend = "memory"\n',
    )
    s = load_settings(
        path,
        environ={
            "WSPROXY_PORT": "9100",
            "WSPROXY_LIMITS_WS_MAX_INFLIGHT": "8",
            "WSPROXY_LIMITS_SSE_DONE_SENTINEL": "yes",
            "WSPROXY_LIMITS_SLOW_CLIENT_TIMEOUT": "2.5",
            "WSPROXY_API_KEYS": "sk-a, sk-b,",
            "WSPROXY_STORE_BACKEND": "redis",
        },
    )
    assert s.port == 9100 and s.limits.ws_max_inflight == 8 and s.limits.sse_done_sentinel is True
    assert s.limits.slow_client_timeout == 2.5 and s.api_keys == ("sk-a", "sk-b")
    assert s.store.backend == "redis"
    # WSPROXY_CONFIG names the file when no path is given.
    assert load_settings(None, environ={"WSPROXY_CONFIG": path}).port == 9000


def test_provider_keys_from_the_environment_are_read_at_wiring_not_stored(tmp_path: Path) -> None:
    s = load_settings(None, environ={"OPENAI_API_KEY": "sk-up"})
    assert s.default_provider == "openai" and s.providers["openai"].api_key is None
    assert s.providers["openai"].key({"OPENAI_API_KEY": "sk-up"}) == "sk-up"


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("port = 'eighty'\n", {}, "port"),
        ("", {"WSPROXY_LIMITS_WS_MAX_INFLIGHT": "many"}, "WSPROXY_LIMITS_WS_MAX_INFLIGHT"),
        ("", {"WSPROXY_LIMITS_SSE_DONE_SENTINEL": "maybe"}, "SSE_DONE_SENTINEL"),
        ("colour = 'blue'\n", {}, "unknown setting"),
        ("[limits]\nnope = 1\n", {}, "unknown setting"),
        ("[providers.x]\nkind = 'carrier-pigeon'\n", {}, "kind"),
        ("[providers.x]\nkind = 'openai'\n", {}, "base_url"),
        ("default_provider = 'ghost'\n", {}, "default_provider"),
        ("[aliases]\nfast = ['ghost@m']\n", {}, "unknown provider"),
        ("[aliases]\nfast = []\n", {}, "empty"),
    ],
)
def test_bad_settings_are_refused_with_where_they_are(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(write(tmp_path, toml), environ=env)


def test_the_parser_knows_serve_and_its_options() -> None:
    args = cli.build_parser().parse_args(
        ["serve", "--host", "0.0.0.0", "--port", "9", "--log-level", "debug"]
    )
    assert (args.command, args.host, args.port, args.log_level) == ("serve", "0.0.0.0", 9, "debug")


def test_bad_arguments_exit_2_and_start_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[object] = []
    monkeypatch.setattr(cli, "serve", started.append)
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--port", "not-a-port"])
    assert exc.value.code == 2 and "invalid int value" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--frobnicate"])
    assert exc.value.code == 2
    assert cli.main([]) == 2  # no command: the help, and status 2
    assert started == []


def test_bad_settings_exit_2_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[object] = []
    monkeypatch.setattr(cli, "serve", started.append)
    assert cli.main(["serve", "--config", write(tmp_path, "port = 'x'\n")]) == 2
    assert "wsproxy: port: invalid value" in capsys.readouterr().err
    assert cli.main(["serve", "--config", str(tmp_path / "missing.toml")]) == 2
    assert started == []


def test_command_line_options_override_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = []

    def serve(settings: object) -> int:
        started.append(settings)
        return 0

    monkeypatch.setattr(cli, "serve", serve)
    monkeypatch.setenv("WSPROXY_PORT", "9100")
    monkeypatch.setenv("WSPROXY_HOST", "10.0.0.1")
    assert cli.main(["serve", "--config", write(tmp_path, "port = 9000\n"), "--port", "9200"]) == 0
    (settings,) = started
    assert settings.port == 9200 and settings.host == "10.0.0.1"  # type: ignore[attr-defined]
