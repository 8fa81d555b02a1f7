"""`privacy-gateway serve` in its own process, stopped the way an init system or a terminal stops it.

SIGTERM (systemd, docker stop, kill) and SIGINT (Ctrl-C) must stop the gateway, not end the process
under it: uvicorn takes the signal, shuts down, and raises it again for the handler before it,
which must not be Python's default (the process would die there, before the cameras stopped: the
last recording without its index, an open segment left for the next start to recover). After
either signal the command returns 0, the last recording plays to its end and is logged, and the
vault verifies with every recording it logged.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from cluster_harness import ServeNode, small_clip, wait_for
from serve_harness import FACES, add_people

from gateway.cli import main
from gateway.files import VideoTranscoder
from keys import AuditLog

pytestmark = pytest.mark.realtime

#: a generous bound for a stop (cameras, sealers and the recorder finish; nothing is slow here)
STOP_BOUND = 30


@pytest.fixture(scope="module")
def clip(tmp_path_factory, data):
    return small_clip(data / "videos" / "short_hamilton_clip.mp4", tmp_path_factory.mktemp("signals") / "small.mp4")


def _node(tmp_path, clip, openbao) -> ServeNode:
    node = ServeNode("gw", tmp_path)
    node.dir.mkdir(parents=True)
    add_people(node.dir / "data" / "keys", tmp_path / "people")  # the default policy's unmask quorum needs an investigator
    (node.dir / "faces.yaml").write_text(json.dumps(FACES))
    node.start({
        "cameras": {"cam": {"source": str(clip), "policy": "faces.yaml", "holdback_ms": 1000}},
        "storage": {"data_dir": "data", "recording_seconds": 2.0, "recording_preset": "ultrafast"},
        "listen": {"host": "127.0.0.1", "port": node.port}, "escrow": openbao.config(),
    })
    return node


def _recorded(node: ServeNode) -> list[dict]:
    log = node.dir / "data" / "vault" / "audit.log"
    return [e["details"] for e in AuditLog(log).entries() if e["action"] == "recorded"] if log.exists() else []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_gateway_whole_and_the_command_returns_0(tmp_path, clip, openbao, signum, capsys):
    node = _node(tmp_path, clip, openbao)
    try:
        def recorded_twice():
            assert node.process.poll() is None, (node.dir / "serve.log").read_text()[-3000:]
            return len(_recorded(node)) >= 2

        wait_for(recorded_twice, 120, "two finished recordings")
        node.process.send_signal(signum)
        sent = time.monotonic()
        code = node.process.wait(STOP_BOUND)
        stopped = time.monotonic() - sent
    finally:
        node.stop()
    assert code == 0, (node.dir / "serve.log").read_text()[-3000:]
    with capsys.disabled():
        print(f"\n{signal.Signals(signum).name}: serve stopped and returned 0 in {stopped:.1f} s")
    # every recording on disk was logged, the last one too (finished at the stop), and plays to its end
    files = sorted((node.dir / "data" / "recordings" / "cam").glob("*.mp4"))
    logged = {entry["file"]: entry["frames"] for entry in _recorded(node)}
    assert {f.name for f in files} == set(logged)
    last = max(files, key=lambda f: f.stat().st_mtime)
    assert sum(1 for _ in VideoTranscoder(last).frames()) == logged[last.name] > 0
    capsys.readouterr()
    assert main(["vault", "verify", "--vault", str(node.dir / "data" / "vault"), "--keys", str(node.dir / "data" / "keys"),
                 "--recordings", str(node.dir / "data" / "recordings")]) == 0, capsys.readouterr().err

