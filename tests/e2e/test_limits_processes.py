"""Limits that hold across processes: two ``wsproxy serve`` processes on 127.0.0.1 sharing one
store enforce ONE limit, not one each; with Redis (a real redis-server; the counters are charged
by a Lua script) and with SQLite (one file, as the worker processes of one host share it). Their
usage adds up in the same rows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest

from tests.faults.proc import ProxyProcess
from wsproxy.policy.auth import key_digest

LIMIT = 5


@pytest.fixture(params=["redis", "sqlite"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ProxyProcess, ProxyProcess]]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        # A database of its own: other tests' keys share the server.
        store = f'backend = "redis"\nurl = "{url[:-1]}3"'
    else:
        store = f'backend = "sqlite"\npath = "{tmp_path / "shared.db"}"'
    cfg = tmp_path / "pair.toml"
    cfg.write_text(
        f'admin_keys = ["sk-admin"]\n[keys.team]\nsha256 = "{key_digest("sk-team")}"\n'
        f"requests_per_day = {LIMIT}\n[store]\n{store}\n"
        '[providers.local]\nkind = "local"\ntoken_delay = 0.0\n'
    )
    if request.param == "redis":
        import redis

        redis.Redis.from_url(url[:-1] + "3").flushdb()
    a = ProxyProcess(cfg, tmp_path / "a.log")
    b = ProxyProcess(cfg, tmp_path / "b.log")
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


def post(proxy: ProxyProcess, key: str) -> int:
    r = httpx2.post(
        proxy.url + "/v1/responses",
        json={"model": "local", "input": "shared limit"},
        headers={"authorization": f"Bearer {key}"},
        timeout=20,
    )
    return r.status_code


def test_two_processes_enforce_one_limit(pair: tuple[ProxyProcess, ProxyProcess]) -> None:
    a, b = pair
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: post(pair[i % 2], "sk-team"), range(16)))
    assert sorted(statuses) == [200] * LIMIT + [429] * (16 - LIMIT), statuses
    # Both refuse from now on; another key is not affected.
    assert post(a, "sk-team") == 429 and post(b, "sk-team") == 429
    assert post(b, "sk-admin") == 200
    # The usage both processes recorded is in the same rows.
    for proxy in pair:
        rows: list[tuple[str, int]] = []
        deadline = time.monotonic() + 5  # rows are written just after each response ends
        while rows != [("team", LIMIT)] and time.monotonic() < deadline:
            time.sleep(0.05)
            data = httpx2.get(
                proxy.url + "/v1/usage", params={"key": "team"}, headers={"authorization": "Bearer sk-admin"}
            ).json()["data"]
            rows = [(r["key"], r["requests"]) for r in data]
        assert rows == [("team", LIMIT)]
