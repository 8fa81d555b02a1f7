"""Cluster nodes for the tests: `privacy-gateway serve` of one node in its own process, the small
clips six cameras can share two cores with, and polling until a condition holds."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]


def small_clip(source: Path, target: Path, seconds=4.0, width=320, height=180, fps=10) -> Path:
    """A short, small, slow H.264 clip: six of them must run on two cores beside two other nodes."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream = dst.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        step, kept = src.streams.video[0].average_rate / fps, 0
        for index, frame in enumerate(src.decode(video=0)):
            if index >= kept * step:
                if kept >= seconds * fps:
                    break
                small = frame.reformat(width=width, height=height, format="yuv420p")
                small.pts, small.time_base = kept, Fraction(1, fps)  # else every pts is 0: played at ~400 fps
                dst.mux(stream.encode(small))
                kept += 1
        dst.mux(stream.encode(None))
    return target


def wait_for(condition, timeout, what, step=0.2):
    """``condition()``'s first true value, polled every ``step`` seconds; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)
    return result


class ServeNode:
    """One node's `serve` in its own process: its directory ``tmp/name``, a free port, its URL."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name, self.dir, self.port = name, tmp / name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, config: dict) -> None:
        """Write ``config`` as the node's gateway.yaml and start `serve` on it (this checkout's code)."""
        (self.dir / "gateway.yaml").write_text(json.dumps(config))
        self.log = open(self.dir / "serve.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.dir / "gateway.yaml")],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir,
            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})

    def wait_serving(self, timeout: float) -> None:
        """Until the node accepts connections on its port; fails at once, with its log's end, if it exited."""
        def serving() -> bool:
            assert self.process.poll() is None, (
                f"node {self.name} exited ({self.process.returncode}): {(self.dir / 'serve.log').read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return False
            return True
        wait_for(serving, timeout, f"node {self.name} serving on port {self.port}")

    def stop(self) -> None:
        stop_all([self])


def stop_all(nodes) -> None:
    """Stop ``nodes`` (``ServeNode``s) together: SIGTERM to each still running, then wait for each.
    Stopped one after another, each would hand its cameras to the next, which would start them only
    to stop them too, and the waits would add up. One SIGTERM each: a second cuts a gateway's stop short."""
    running = [node for node in nodes if node.process.poll() is None]
    for node in running:
        node.process.send_signal(signal.SIGTERM)
    for node in running:
        try:
            node.process.wait(30)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait(10)
    for node in nodes:
        node.log.close()


def unmask_one(config: Path | str, node: str, investigator, out: Path, capsys, files: set[str] | None = None) -> bool:
    """Unmask (the command line, ``--config`` and ``--node``) the first recording that ``node`` logged
    (of ``files``, if given) in which a region was sealed, as ``investigator`` (a serve_harness
    ``Person``); whether one was restored. Exits other than "nothing sealed in it" fail the test."""
    from gateway.cli import main
    from gateway.config import load_config
    from gateway.storage import open_vault

    log = open_vault(load_config(Path(config))[0], node=node).audit.entries()
    recorded = [e["details"] for e in log if e["action"] == "recorded" and (files is None or e["details"]["file"] in files)]
    out.mkdir(parents=True, exist_ok=True)
    os.environ[investigator.variable] = investigator.passphrase
    try:
        for index, entry in enumerate(recorded):
            target = out / str(index)
            code = main(["unmask", "--config", str(config), "--node", node, "--camera", entry["camera"],
                         "--recording", entry["recording"], "--identity", str(investigator.file),
                         "--case", "C-9", "--reason", "node lost", "-o", str(target), "--no-watermark"])
            result = capsys.readouterr()
            if code != 0 and ("no sealed region matches" in result.err or "no sealed records" in result.err):
                continue  # a recording in which no face was found: nothing to restore
            assert code == 0, result.err
            return any(target.iterdir())
    finally:
        del os.environ[investigator.variable]
    return False


def kill_and_follow(victim, survivors, cameras, timeout) -> tuple[dict, float]:
    """``kill -9`` ``victim`` (a node with ``owns()`` and ``released(camera)``) and wait until each of
    ``cameras`` releases frames on one of ``survivors``: (camera -> the node running it, seconds taken)."""
    victim.process.kill()
    killed = time.monotonic()
    victim.process.wait(10)

    def running_again():
        where = {c: next((n for n in survivors if c in n.owns()), None) for c in cameras}
        return all(n is not None and n.released(c) > 0 for c, n in where.items()) and where

    where = wait_for(running_again, timeout, "the killed node's cameras to run again elsewhere")
    return where, time.monotonic() - killed
