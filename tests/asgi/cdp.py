"""A headless Chromium for tests, driven over the DevTools protocol with the ``websockets`` library.

``Browser.start`` runs Debian's ``chromium`` (``scripts/test.sh`` installs it) with a throwaway
profile, every host name but 127.0.0.1 unresolvable and its background services off, and reads
the DevTools URL it prints on stderr. ``Browser.page`` opens a tab; ``Page.evaluate`` runs
JavaScript in it. ``Browser.stop`` ends the process it started, by PID. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

_DEVTOOLS_URL = re.compile(rb"DevTools listening on (ws://\S+)")


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        # Fails, does not skip: an untested playground is not tested. scripts/test.sh installs it.
        pytest.fail("chromium is not installed: run scripts/test.sh, or apt-get install -y chromium")
    return path


def _launch(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    # Its own session: the helpers it forks can be found (and ended) by its PID as group id.
    with log.open("wb") as err:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


class Browser:
    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: ClientConnection | None = None
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> Browser:
        self.profile.mkdir(parents=True, exist_ok=True)
        log = self.profile / "chromium.log"
        args = [
            chromium_path(),
            "--headless",
            "--no-sandbox",  # the test may run as root, where the sandbox cannot start
            "--disable-gpu",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={self.profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--window-size=1000,760",
            "about:blank",
        ]
        self.proc = _launch(args, log)
        deadline = time.monotonic() + timeout
        url = None
        while url is None:
            found = _DEVTOOLS_URL.search(log.read_bytes())
            if found:
                url = found.group(1).decode()
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start:\n" + log.read_text(errors="replace")[-2000:])
            else:
                await asyncio.sleep(0.05)
        self.conn = await connect(url, max_size=None, open_timeout=10)
        self.reader = asyncio.get_running_loop().create_task(self._read(self.conn))
        return self

    async def _read(self, conn: ClientConnection) -> None:
        async for raw in conn:
            message = orjson.loads(raw)
            future = self.pending.pop(message.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(message)

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 15,
    ) -> Any:
        assert self.conn is not None
        ident = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[ident] = future
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self.conn.send(orjson.dumps(message).decode())
        async with asyncio.timeout(timeout):
            answer = await future
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def page(self, url: str) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Page.navigate", {"url": url})
        await page.wait_for("document.readyState === 'complete'")
        return page

    def stop(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        # Its helpers (renderer, zygote) are in the session it leads: end any left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.browser.send(method, params, self.session)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0, interval: float = 0.02) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for: {expression}")

    async def type_and_enter(self, selector: str, text: str) -> None:
        await self.evaluate(f"document.querySelector({orjson.dumps(selector).decode()}).focus()")
        await self.send("Input.insertText", {"text": text})
        for kind in ("keyDown", "keyUp"):
            await self.send(
                "Input.dispatchKeyEvent",
                {"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13},
            )

    async def click(self, selector: str) -> None:
        # A real mouse click at the element's centre (not element.click()).
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({orjson.dumps(selector).decode()});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1},
            )

    async def screenshot(self, path: Path) -> bytes:
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        data = base64.b64decode(shot["data"])
        await asyncio.to_thread(path.write_bytes, data)
        return data
