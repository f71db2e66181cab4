"""The playground at ``GET /`` in a real headless Chromium (``tests/asgi/cdp.py``), against a real
wsproxy on 127.0.0.1 with the local model: the page loads its models, sends on Enter, streams the
reply into the page as it arrives, continues the next turn with ``previous_response_id`` (checked
in the page and in the proxy's store), stops a response (the proxy cancels it), shows a tool call
and an error. A screenshot is saved (``WSPROXY_PLAYGROUND_SCREENSHOT`` names a second copy)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.asgi.cdp import Browser, Page
from tests.conftest import proxy_settings
from tests.fakes.servers import UvicornThread
from wsproxy.asgi.app import create_app

# The last assistant bubble's text, and the state of turn N.
LAST_REPLY = "(() => { const all = document.querySelectorAll('.assistant'); return all.length ? all[all.length - 1].textContent : ''; })()"  # noqa: E501


def turn(n: int) -> str:
    return f"(window.playground.turns[{n}] || null)"


@pytest.fixture
def slow_local(tmp_path: Path) -> Iterator[UvicornThread]:
    """wsproxy with the local model slowed to 30 ms a token, so that streaming is visible."""
    settings = proxy_settings(tmp_path)
    local = dataclasses.replace(settings.providers["local"], token_delay=0.03)
    settings = settings.replace(providers={**settings.providers, "local": local})
    server = UvicornThread(create_app(settings, environ={})).start()
    try:
        yield server
    finally:
        server.stop()


async def get_json(url: str) -> Any:
    response = await asyncio.to_thread(httpx2.get, url)
    assert response.status_code == 200, response.text
    return response.json()


async def until_turn_ends(page: Page, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Samples of (status, the page's last reply) until turn ``n`` is no longer streaming."""
    samples: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        sample = await page.evaluate(f"({{ turn: {turn(n)}, reply: {LAST_REPLY} }})")
        samples.append(sample)
        if sample["turn"] is not None and sample["turn"]["status"] != "streaming":
            return samples
        await asyncio.sleep(0.01)
    raise AssertionError(f"turn {n} did not end: {samples[-1:]}")


async def cancelled_by_client(proxy: UvicornThread) -> float:
    text = (await asyncio.to_thread(httpx2.get, proxy.url + "/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("wsproxy_cancelled_responses_total") and 'reason="client_gone"' in line
    )


async def test_playground_chats_streams_continues_stops(slow_local: UvicornThread, tmp_path: Path) -> None:
    proxy = slow_local
    browser = await Browser(tmp_path / "chromium").start()
    try:
        page = await browser.page(proxy.url + "/")
        models = await page.wait_for("window.playground.models.length > 0 && window.playground.models")
        assert await page.evaluate("document.getElementById('model').value") in models

        # Turn 1: Enter sends; the reply streams into the page.
        await page.type_and_enter("#input", "hello there")
        samples = await until_turn_ends(page, 0)
        final = "Hello! This is the wsproxy local model. You said: hello there"
        assert samples[-1]["turn"]["status"] == "completed"
        assert samples[-1]["reply"] == final
        partial = [s["reply"] for s in samples if s["turn"] and s["turn"]["status"] == "streaming"]
        assert any(0 < len(text) < len(final) and final.startswith(text) for text in partial), partial
        assert await page.evaluate("document.getElementById('input').value") == ""
        first = samples[-1]["turn"]
        assert first["previousResponseId"] is None

        # Turn 2 continues from turn 1 with previous_response_id.
        await page.type_and_enter("#input", "second message")
        samples = await until_turn_ends(page, 1)
        second = samples[-1]["turn"]
        assert second["status"] == "completed"
        assert samples[-1]["reply"].endswith("You said: second message")
        assert second["previousResponseId"] == first["responseId"]
        stored_first = await get_json(f"{proxy.url}/v1/responses/{first['responseId']}")
        stored_second = await get_json(f"{proxy.url}/v1/responses/{second['responseId']}")
        assert stored_second["previous_response_id"] == first["responseId"]
        # The local model counts every input token: turn 1 was in turn 2's input.
        assert stored_second["usage"]["input_tokens"] > stored_first["usage"]["input_tokens"]

        shot = await page.screenshot(tmp_path / "playground.png")
        assert shot.startswith(b"\x89PNG") and len(shot) > 5000

        # Stop: the socket is closed, the proxy cancels the response, nothing more arrives.
        before = await cancelled_by_client(proxy)
        await page.type_and_enter("#input", " ".join(f"word{i}" for i in range(40)))
        await page.wait_for(f"{turn(2)} && {turn(2)}.text.length > 0")
        await page.click("#stop")
        stopped = await page.wait_for(f"{turn(2)}.status === 'stopped' && {turn(2)}")
        await asyncio.sleep(0.3)
        assert await page.evaluate(f"{turn(2)}.text") == stopped["text"]
        assert "word39" not in stopped["text"]
        for _ in range(100):
            if await cancelled_by_client(proxy) > before:
                break
            await asyncio.sleep(0.05)
        assert await cancelled_by_client(proxy) > before

        # The next turn opens a new socket and continues from the last completed response.
        await page.type_and_enter("#input", "after the stop")
        samples = await until_turn_ends(page, 3)
        assert samples[-1]["turn"]["status"] == "completed"
        assert samples[-1]["turn"]["previousResponseId"] == second["responseId"]

        # A tool call is shown with its arguments; its result is sent back as the next turn.
        await page.click("#tools")
        await page.type_and_enter("#input", "please use get_weather for Paris")
        samples = await until_turn_ends(page, 4)
        assert samples[-1]["turn"]["status"] == "completed"
        card = await page.wait_for(
            "document.querySelector('.tool') && document.querySelector('.tool').textContent"
        )
        assert card.startswith("Tool call: get_weather(") and '"city"' in card
        await page.evaluate("document.querySelector('.tool input').value = 'sunny'")
        await page.click(".tool button")
        samples = await until_turn_ends(page, 5)
        assert samples[-1]["reply"].endswith("The tool returned: sunny")

        # An error is shown readably, and the page keeps working.
        await page.evaluate(
            "(() => { const s = document.getElementById('model');"
            " s.add(new Option('nowhere@model', 'nowhere@model')); s.value = 'nowhere@model'; })()"
        )
        await page.type_and_enter("#input", "x")
        samples = await until_turn_ends(page, 6)
        assert samples[-1]["turn"]["status"] == "error"
        error = await page.evaluate("document.querySelector('.error').textContent")
        assert error.startswith("404 model_not_found:")
        shot = await page.screenshot(tmp_path / "playground-end.png")
        copy = os.environ.get("WSPROXY_PLAYGROUND_SCREENSHOT")
        if copy:
            await asyncio.to_thread(Path(copy).write_bytes, shot)
    finally:
        browser.stop()
    assert browser.proc is not None and browser.proc.poll() is not None


def test_playground_is_served_with_a_strict_policy(proxy) -> None:
    r = httpx2.get(proxy.url + "/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp.split("style-src")[0]
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    # Self-contained: nothing is loaded from anywhere else.
    assert b"http://" not in r.content and b"https://" not in r.content
