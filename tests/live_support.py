"""Shared harness for the live-media tests: an ASGI app served by uvicorn on a thread, and a
thread that feeds frames in real time."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import uvicorn


class ThreadedServer:
    """``app`` served on 127.0.0.1 (a free port) by uvicorn on its own thread; ``url`` is its base,
    ``port`` its port; ``settings``: more ``uvicorn.Config`` arguments."""

    def __init__(self, app, **settings) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **settings))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="uvicorn")
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


class Feeder(threading.Thread):
    """Calls ``push(i)`` for frame i = 0, 1, 2 ... at media time ``i / fps``, in real time."""

    def __init__(self, push: Callable[[int], None], fps: float) -> None:
        super().__init__(name="feeder", daemon=True)
        self._push, self.fps = push, fps
        self.pushed = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        try:
            while not self._halt.is_set():
                self._push(self.pushed)
                self.pushed += 1
                self._halt.wait(max(0.0, start + self.pushed / self.fps - time.monotonic()))
        except BaseException as exc:  # surfaced by the fixture
            self.error = exc

    def stop(self) -> None:
        self._halt.set()
        self.join()
