"""Drive the real RTSP camera (``tests/rtsp_camera.py``, GStreamer under the system python) from tests.

    with rtsp_camera(clip, loop=True) as camera:
        source = RtspSource("lobby", camera.url)
        ...
        camera.pause()     # SIGSTOP: the server freezes mid-stream, sockets stay open
        camera.resume()    # SIGCONT
        camera.kill()      # SIGKILL: connections reset
        camera.restart()   # a new server on the same port
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ports import free_port

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).with_name("rtsp_camera.py")


def gstreamer_missing() -> str | None:
    """Why the camera cannot run here (for ``pytest.skip``), or None if it can."""
    return gstreamer_elements_missing({"qtdemux": "gstreamer1.0-plugins-good", "rtph264pay": "gstreamer1.0-plugins-good",
                                       "appsrc": "gstreamer1.0-plugins-base"}, rtsp_server=True)


def gstreamer_elements_missing(elements: dict[str, str], rtsp_server: bool = False) -> str | None:
    """Why the system python3's GStreamer lacks some of ``elements`` (name -> Debian package), or
    None if it has them all (and, with ``rtsp_server``, GstRtspServer too)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found"
    server = "gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer;" if rtsp_server else ""
    probe = (f"import gi; gi.require_version('Gst', '1.0'); {server} from gi.repository import Gst; Gst.init(None);"
             f"print(' '.join(e for e in {sorted(elements)!r} if not Gst.ElementFactory.find(e)))")
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {SYSTEM_PYTHON}: {exc}"
    if result.returncode != 0:
        return f"GStreamer{' RTSP server' if rtsp_server else ''} not importable: {result.stderr.strip().splitlines()[-1:]}"
    if result.stdout.strip():
        missing = result.stdout.split()
        packages = " ".join(sorted({elements[element] for element in missing}))
        return f"GStreamer elements missing: {' '.join(missing)} (Debian: {packages})"
    return None


class RtspCamera:
    """One ``rtsp_camera.py`` server process on a fixed port, which can be paused, killed and restarted."""

    def __init__(self, clip: Path, port: int | None = None, mount: str = "/cam", loop: bool = True,
                 host: str = "127.0.0.1"):
        self.clip, self.mount, self.loop, self.host = Path(clip), mount, loop, host
        self.port = port or free_port()
        self.url = f"rtsp://{host}:{self.port}{mount}"
        self._process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 20.0) -> None:
        if self._process is not None:
            raise RuntimeError("camera already running")
        command = [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), "--clip", str(self.clip),
                   "--mount", self.mount, "--host", self.host]
        if self.loop:
            command.append("--loop")
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        line = ""  # "ready URL" once listening; nothing if it hangs, "" at EOF if it died
        if select.select([self._process.stdout], [], [], timeout)[0]:
            line = self._process.stdout.readline().decode(errors="replace")
        if not line.startswith("ready "):
            self.kill()
            raise RuntimeError(f"RTSP camera did not start: {self._stderr()}")
        while True:  # ready means listening; check it really accepts before handing out the URL
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"RTSP camera not accepting on {self.port}: {exc}") from None
                time.sleep(0.05)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): its sockets stay open but nothing is sent or answered."""
        os.kill(self._running().pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._running().pid, signal.SIGCONT)

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL, so a paused one goes too) and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=10)
        process.stdout.close()

    def restart(self, timeout: float = 20.0) -> None:
        """Kill the server if running, then start a new one on the same port."""
        self.kill()
        self.start(timeout)

    def close(self) -> None:
        self.kill()
        self._log.close()

    def _running(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError(f"RTSP camera not running: {self._stderr()}")
        return self._process

    def _stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()[-2000:] or "(no output)"

    def __enter__(self) -> RtspCamera:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@contextlib.contextmanager
def rtsp_camera(clip: Path, **options) -> Iterator[RtspCamera]:
    """A started :class:`RtspCamera` serving ``clip`` on a free port, killed on exit."""
    camera = RtspCamera(clip, **options)
    try:
        camera.start()
        yield camera
    finally:
        camera.close()
