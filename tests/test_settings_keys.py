"""``[keys.NAME]`` sections, ``admin_keys``, the trusted proxies, and ``wsproxy keys hash``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wsproxy.policy.auth import key_digest
from wsproxy.settings import SettingsError, load_settings

DIGEST = key_digest("sk-alice")


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "k.toml"
    cfg.write_text(text)
    return load_settings(str(cfg), environ={})


def test_keys_sections(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        f'admin_keys = ["sk-root"]\n[keys.alice]\nsha256 = "{DIGEST.upper()}"\n'
        'models = ["local", "openai@*"]\n'
        "rpm = 3\ntpm = 1000\nrequests_per_day = 100\ntokens_per_day = 10000\ncache = true\n"
        f'[keys.ops]\nsha256 = "{key_digest("sk-ops")}"\nadmin = true\n'
        '[limits]\nip_rpm = 5\ntrusted_proxies = ["10.0.0.0/8", "::1"]\n',
    )
    alice = s.keys["alice"]
    assert alice.sha256 == DIGEST and alice.models == ("local", "openai@*")
    assert (alice.rpm, alice.tpm, alice.requests_per_day, alice.tokens_per_day) == (3, 1000, 100, 10000)
    assert alice.cache and not alice.admin and s.keys["ops"].admin and s.keys["ops"].models is None
    assert s.admin_keys == ("sk-root",) and s.limits.ip_rpm == 5


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('[keys.alice]\nsha256 = "abc"\n', "64-hex-digit"),
        (f'[keys.alice]\nsha256 = "{DIGEST}"\nkey = "sk-alice"\n', "never the key itself"),
        (f'[keys."bad name"]\nsha256 = "{DIGEST}"\n', "key name"),
        (f'[keys.anonymous]\nsha256 = "{DIGEST}"\n', "key name"),
        (f'[keys.alice]\nsha256 = "{DIGEST}"\nrpm = -1\n', "rpm"),
        (f'[keys.alice]\nsha256 = "{DIGEST}"\nmodels = "local"\n', "models"),
        (f'[keys.alice]\nsha256 = "{DIGEST}"\nlimit = 3\n', "unknown setting"),
        (f'[keys.a]\nsha256 = "{DIGEST}"\n[keys.b]\nsha256 = "{DIGEST}"\n', "same sha256"),
        ('[limits]\ntrusted_proxies = ["10.0.0.0/33"]\n', "trusted_proxies"),
    ],
)
def test_bad_keys_sections_are_refused(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load(tmp_path, section)


def test_keys_hash_cli_reads_the_key_from_stdin() -> None:
    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wsproxy", "keys", "hash", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )

    line = f'sha256 = "{DIGEST}"\n'
    from_stdin = run("-", stdin="sk-alice\n")
    assert from_stdin.returncode == 0 and from_stdin.stdout == line and "sk-alice" not in from_stdin.stdout
    assert run("sk-alice").stdout == line
    empty = run("-", stdin="")
    assert empty.returncode == 2 and empty.stdout == ""
