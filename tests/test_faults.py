"""Faults inside a running gateway: the sealer raising, the audit log refusing writes, the recorder's
disk full, the process out of file descriptors. Each is injected into a real `serve` (RTSP camera,
real detector, real vault and co-signer) and must show: no raw frame leaves, the fault counted,
`/health` degraded (503) saying why, the log not flooded, and recovery once the fault clears, with a
vault that still verifies and recordings that still decode."""

import errno
import hashlib
import json
import logging
import os
import resource
import threading
import time

import pytest
from rtsp_support import rtsp_camera
from serve_harness import Running, collect_released

import gateway.egress.recorder
import keys.seal
from gateway.cli import main
from gateway.files import VideoTranscoder
from keys import AuditError
from keys.audit import AuditLog

pytestmark = pytest.mark.realtime


def camera_health(running) -> dict:
    """The camera's health as the runtime reports it (in process: during fd exhaustion HTTP cannot answer)."""
    return running.gateway.runtime.health()["cameras"]["cam"]


def wait_for(condition, what, timeout: float = 60.0):
    """``what``: the awaited state, for the failure message (a callable: asked only then)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(0.2)
    return value


def run_fault(camera_clip, tmp_path, openbao, caplog, inject, clear, reason: str, part: str | tuple[str, ...],
              over_http: bool = True, blanks: bool = True):
    """Start a gateway, let it settle, inject a fault for a while, clear it; check everything the module
    docstring promises (``blanks`` False: a fault only the recording suffers, viewers keep their
    redacted frames). ``part``: the part that must fail and recover, or parts of which at least one
    must (each that failed recovering). Returns the degraded health report seen during the fault."""
    clip, frames, _ = camera_clip
    raw = {hashlib.blake2b(f.tobytes()).digest() for f in frames}
    caplog.set_level(logging.ERROR)
    with rtsp_camera(clip, loop=True) as camera, Running(tmp_path, openbao, {"cam": camera.url}, holdback_ms=800) as running:
        released = collect_released(running, "cam")
        running.wait_healthy()
        running.wait_metric("privacy_gateway_frames_total", 10, camera="cam", state="released")
        inject()
        try:
            degraded = wait_for(lambda: (h := camera_health(running))["status"] == "degraded"
                                and any(reason in r for r in h["reasons"]) and h,
                                lambda: f"health to say {reason!r}: {camera_health(running)}")
            if over_http:
                status, body = running.get("/health")
                assert status == 503
                assert any(reason in r for r in json.loads(body)["cameras"]["cam"]["reasons"])
                assert running.get("/health", token=None)[0] == 503  # anyone: degraded, without the details
            time.sleep(3.0)  # the fault persists: retries back off, the log stays quiet
            logged = len([r for r in caplog.records if r.levelno >= logging.ERROR])
        finally:
            clear()
        wait_for(lambda: camera_health(running)["status"] == "ok", "recovery", timeout=90)
        redacted = running.metric("privacy_gateway_frames_total", camera="cam", state="released")
        running.wait_metric("privacy_gateway_frames_total", redacted + 10, camera="cam", state="released")
        parts = (part,) if isinstance(part, str) else part
        failed = [p for p in parts if running.metric("privacy_gateway_faults_total", camera="cam", part=p) >= 1]
        assert failed, f"none of {parts} counted a fault"
        for p in failed:
            assert running.metric("privacy_gateway_recoveries_total", camera="cam", part=p) >= 1, f"{p} did not recover"
        assert running.get("/health")[0] == 200
    assert logged <= 12, f"{logged} error lines in a few seconds of one fault"  # once per burst and part, not per frame
    assert released and not released.raw(raw)
    if blanks:  # (without: frames may still be blanked, by a loaded machine's detector falling behind)
        assert "blanked" in {state for state, *_ in released}
    assert [i for _, i, _, _ in released] == list(range(released[0][1], released[0][1] + len(released)))
    assert main(["vault", "verify", "--vault", str(tmp_path / "data" / "vault")]) == 0
    recordings = sorted((tmp_path / "data" / "recordings" / "cam").glob("*.mp4"))
    assert len(recordings) >= 2
    for recording in recordings:
        assert len(list(VideoTranscoder(recording).frames())) > 0
    return degraded


def test_a_sealer_that_raises_blanks_frames_until_a_new_one_is_opened(camera_clip, tmp_path, monkeypatch, openbao, caplog):
    fault = {"on": False}
    real = keys.seal.Sealer._add

    def add(self, *args):
        if fault["on"]:
            raise OSError(errno.EIO, "injected: the vault's disk failed")
        return real(self, *args)

    monkeypatch.setattr(keys.seal.Sealer, "_add", add)
    report = run_fault(camera_clip, tmp_path, openbao, caplog, lambda: fault.update(on=True),
                       lambda: fault.update(on=False), "sealing failed", "sealing")
    assert report["seal_errors"] >= 1


def test_an_audit_log_that_refuses_writes_stops_sealing_until_it_takes_them_again(camera_clip, tmp_path, monkeypatch,
                                                                                   openbao, caplog):
    """Recordings roll over every 2 s here: each rollover is an audit entry, which fails while the fault lasts."""
    fault = {"on": False}
    real = AuditLog.append

    def append(self, *args, **kwargs):
        if fault["on"]:
            raise AuditError(f"cannot write the audit log {self.path}: injected")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AuditLog, "append", append)
    run_fault(camera_clip, tmp_path, openbao, caplog, lambda: fault.update(on=True), lambda: fault.update(on=False),
              "sealing failed", "sealing")


class _FullDisk:
    """PyAV as the recorder sees it, with writes failing (ENOSPC) while ``on``."""

    def __init__(self, av):
        self.av, self.on = av, False

    def open(self, *args, **kwargs):
        if self.on:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return _Container(self.av.open(*args, **kwargs), self)

    def __getattr__(self, name):
        return getattr(self.av, name)


class _Container:
    def __init__(self, out, disk):
        self._out, self._disk = out, disk

    def mux(self, packet):
        if self._disk.on:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return self._out.mux(packet)

    def __getattr__(self, name):
        return getattr(self._out, name)


def test_a_full_disk_cuts_the_recording_and_a_new_one_starts_once_there_is_room(camera_clip, tmp_path, monkeypatch,
                                                                                openbao, caplog):
    disk = _FullDisk(gateway.egress.recorder.av)
    monkeypatch.setattr(gateway.egress.recorder, "av", disk)
    run_fault(camera_clip, tmp_path, openbao, caplog, lambda: setattr(disk, "on", True),
              lambda: setattr(disk, "on", False), "recording failed", "recording", blanks=False)
    # the file the fault cut is kept, its frame count logged as written: it unmasks up to its end
    recorded = [e["details"] for e in AuditLog(tmp_path / "data" / "vault" / "audit.log").entries()
                if e["action"] == "recorded"]
    for details in recorded:
        path = tmp_path / "data" / "recordings" / "cam" / details["file"]
        assert len(list(VideoTranscoder(path).frames())) == details["frames"]


def test_file_descriptors_exhausted_blank_frames_and_the_camera_recovers(camera_clip, tmp_path, openbao, caplog):
    """A leak elsewhere in the process: the descriptor limit lowered to what is open, and a thread
    taking every descriptor the moment it is free, so that every open() fails (the vault, the audit
    log, the recorder, connections to the co-signer) until they are given back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    leaking = threading.Event()

    def leak():
        while leaking.is_set():
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                time.sleep(0.0005)

    thief = threading.Thread(target=leak, daemon=True)

    def exhaust():
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        leaking.set()
        thief.start()

    def give_back():
        leaking.clear()
        if thief.is_alive():
            thief.join()
        while held:
            os.close(held.pop())
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    try:
        # every part that opens files fails, the first in whichever order the race gives: the sealer
        # (its vault, its co-signer) or the recorder (at its next file, which a down sealer, starting
        # no recording, never asks for)
        report = run_fault(camera_clip, tmp_path, openbao, caplog, exhaust, give_back, "failed", ("recording", "sealing"),
                           over_http=False)
    finally:
        give_back()
    assert report["status"] == "degraded"


@pytest.fixture(autouse=True)
def _no_leaked_limit():
    """A failed test must not leave the process short of descriptors for the next."""
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)
