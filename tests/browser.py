"""Headless Chromium driven through the DevTools protocol, standard library only.

CDP runs over ``--remote-debugging-pipe`` (JSON messages separated by NUL bytes on file
descriptors 3 and 4), so no websocket client is needed. The API is synchronous and
thread-safe: async tests call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
    # WebRTC on one host: gather 127.0.0.1 and plain host addresses (not mDNS *.local names).
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
]


_CHILD_FDS_FROM = 10  # Chromium's pipe ends are duplicated to descriptors from here (bash redirects any)


def _above(fd: int) -> int:
    """``fd`` moved to a descriptor >= _CHILD_FDS_FROM (close-on-exec; ``pass_fds`` hands it on)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _CHILD_FDS_FROM)
    os.close(fd)
    return moved


class BrowserError(Exception):
    """Chromium failed, answered a command with an error, or a page script threw."""


class Browser:
    """One headless Chromium process; ``close()`` ends it and removes its profile."""

    def __init__(self, executable: str = CHROMIUM, flags: list[str] | None = None) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-")
        self.log_path = Path(self._profile.name) / "chromium.log"
        # Chromium's ends of the pipes are moved above the descriptors the redirect writes (3, 4):
        # a fresh process's os.pipe() returns 3 and 4 themselves, and "3<&3 ... 3<&-" would then
        # close the very descriptor Chromium reads ("Remote debugging pipe file descriptors are not open")
        commands_r, commands_w = os.pipe()
        replies_r, replies_w = os.pipe()
        commands_r, replies_w = _above(commands_r), _above(replies_w)
        argv = [
            executable,
            *(FLAGS if flags is None else flags),
            f"--user-data-dir={self._profile.name}/profile",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # Chromium reads commands from fd 3 and writes replies to fd 4; the shell puts them there
        # (dash cannot redirect fds above 9; a preexec_fn would be unsafe: the test process runs threads).
        redirect = f'exec "$0" "$@" 3<&{commands_r} 4>&{replies_w} {commands_r}<&- {replies_w}>&-'
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                ["/bin/bash", "-c", redirect, *argv],
                pass_fds=(commands_r, replies_w),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        os.close(commands_r)
        os.close(replies_w)
        self._commands = commands_w
        self._replies = replies_r
        self._ids = itertools.count(1)
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._lock = threading.Lock()
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()
        try:
            self.version = self.send("Browser.getVersion", timeout=30)["product"]
        except BaseException:
            self.close()
            raise

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 10) -> dict:
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._process.poll() is not None:
                raise BrowserError(f"chromium has exited: {self.log_tail()}")
            self._pending[message["id"]] = future
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._commands, data) :]
        try:
            reply = future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise BrowserError(f"{method}: no reply within {timeout} s") from None
        finally:
            with self._lock:
                self._pending.pop(message["id"], None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def new_page(self, url: str) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        page.send("Runtime.enable")
        page.navigate(url)
        return page

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self.send("Browser.close", timeout=5)
            except BrowserError:
                pass
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        os.close(self._commands)
        self._reader.join(10)
        os.close(self._replies)
        self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._replies, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        future = self._pending.get(message["id"])
                    if future is not None:
                        future.set_result(message)
                elif len(self.events) < 10_000:
                    self.events.append(message)
        with self._lock:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(BrowserError(f"chromium closed the pipe: {self.log_tail()}"))


class Page:
    """A tab attached with a flat CDP session."""

    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser = browser
        self.target = target
        self.session = session

    def send(self, method: str, params: dict | None = None, timeout: float = 10) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def navigate(self, url: str, timeout: float = 10) -> None:
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url}: {result['errorText']}")
        self.wait_for("document.readyState === 'complete'", timeout)

    def evaluate(self, expression: str, timeout: float = 10) -> Any:
        """The JSON value of ``expression`` (promises are awaited); ``BrowserError`` if it throws."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True, "timeout": timeout * 1000},
            timeout=timeout + 5,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression[:80]!r} threw: {text}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10, interval: float = 0.1) -> Any:
        """Poll ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout} s waiting for {expression!r} (last value {value!r})")
            time.sleep(interval)

    def screenshot(self, path: Path, width: int = 1280, height: int = 800) -> Path:
        """A PNG of the page laid out at ``width`` x ``height`` CSS pixels (the whole page's height if taller)."""
        import base64

        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 700})
        try:
            full = self.evaluate("Math.max(document.documentElement.scrollHeight, innerHeight)")
            shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                        "clip": {"x": 0, "y": 0, "width": width,
                                                                 "height": min(int(full), 4000), "scale": 1}})
        finally:
            self.send("Emulation.clearDeviceMetricsOverride")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def console(self) -> list[str]:
        """Console messages this page logged so far (for failure messages)."""
        return [
            " ".join(str(arg.get("value", arg.get("description", ""))) for arg in event["params"]["args"])
            for event in self.browser.events
            if event.get("sessionId") == self.session and event.get("method") == "Runtime.consoleAPICalled"
        ]

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})
