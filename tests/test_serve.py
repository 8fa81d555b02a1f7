"""`serve` end to end against real peers: a GStreamer RTSP camera in, headless Chromium (WHEP)
out, recordings unmasked with the demo investigator's key. Nothing raw may come out."""

import base64
import hashlib
import json
import os
import re
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest
from rtsp_support import gstreamer_missing, rtsp_camera

from gateway.cli import main
from gateway.config import load_config
from gateway.media import VideoTranscoder, copy_excerpt, read_image
from gateway.server import serve
from redaction.engine import Analyzer
from redaction.policy import parse_policy

CHROMIUM = "/usr/bin/chromium"
FACES = {"classes": {"plate": {"enabled": False}}, "detection": {"stride": 2, "threads": 1}}


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory, data):
    """6 s of a clip with one large face, and its decoded frames (what the camera sends)."""
    missing = gstreamer_missing()
    if missing:
        pytest.skip(missing)
    clip = copy_excerpt(data / "videos" / "short_hamilton_clip.mp4", tmp_path_factory.mktemp("cam") / "cam.mp4", 6.0)
    frames = [f.image for f in VideoTranscoder(clip).frames()]
    analyzer = Analyzer(parse_policy(FACES))
    faces = [[r for r in analyzer.regions(f) if r.score >= 0.5] for f in frames[::5]]
    return clip, frames, faces


class Running:
    """`serve` on its own thread and event loop, like the command line runs it."""

    def __init__(self, tmp_path, cameras: dict, holdback_ms=1500, recording_seconds=2.0):
        (tmp_path / "faces.yaml").write_text(json.dumps({**FACES, "unmask": {"watermark": "optional"}}))
        config = {"cameras": {name: {"source": url, "policy": "faces.yaml", "holdback_ms": holdback_ms,
                                     "renditions": ["h264"]} for name, url in cameras.items()},
                  "storage": {"data_dir": "data", "recording_seconds": recording_seconds},
                  "listen": {"host": "127.0.0.1", "port": 0}, "demo_identities": True}
        (tmp_path / "gateway.yaml").write_text(json.dumps(config))
        self.config, self.policies = load_config(tmp_path / "gateway.yaml")
        self.lines: list[str] = []
        self.stop = threading.Event()
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import asyncio

        def ready(gateway, port):
            self.gateway, self.port = gateway, port
            self.started.set()

        try:
            asyncio.run(serve(self.config, self.policies, announce=self.lines.append, ready=ready, stop=self.stop))
        except BaseException as exc:  # surfaced by the test
            self.error = exc
            self.started.set()

    def __enter__(self):
        self.thread.start()
        assert self.started.wait(60)
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def wait_healthy(self, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.get("/health")
            if status == 200:
                return json.loads(body)
            time.sleep(0.5)
        raise AssertionError(f"never healthy: {body!r}")

    def metric(self, name, **labels):
        _, body = self.get("/metrics")
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        match = re.search(rf"^{name}{{{re.escape(want)}}} (\S+)$", body.decode(), re.M)
        return float(match.group(1)) if match else None

    def wait_metric(self, name, above, timeout=60, **labels):
        """Wait until a counter passes ``above``: progress is asserted, never a rate (CI machines are loaded)."""
        deadline = time.monotonic() + timeout
        while (value := self.metric(name, **labels) or 0.0) <= above:
            assert time.monotonic() < deadline, f"{name}{labels} stayed at {value}, not above {above}"
            time.sleep(0.25)
        return value


def collect_released(running, camera, keep_images=False):
    """Every frame the pipeline releases, as the sinks see them: (state, index, hash[, half-size image])."""
    seen = []

    def sink(item):
        digest = None if item.image is None else hashlib.blake2b(item.image.tobytes()).digest()
        small = half(item.image) if keep_images and item.image is not None else None
        seen.append((item.state, item.index, digest, small))

    running.gateway.cameras[camera].pipeline.sinks.append(sink)
    return seen


def half(image):
    return cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA).astype(np.float32)


def grab(page):
    """The frame the browser shows now, decoded from a canvas snapshot (PNG, lossless)."""
    url = page.evaluate("""(() => { const v = document.getElementById('video');
        if (!v.videoWidth) return null;
        const c = document.createElement('canvas'); c.width = v.videoWidth; c.height = v.videoHeight;
        c.getContext('2d').drawImage(v, 0, 0); return c.toDataURL('image/png'); })()""")
    if not url:
        return None
    data = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), dtype=np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="Debian chromium not installed")
def test_rtsp_camera_to_browser_is_redacted_and_recordings_unmask(camera_clip, tmp_path, capsys):
    from browser import Browser

    clip, frames, faces = camera_clip
    raw = {hashlib.blake2b(f.tobytes()).digest() for f in frames}
    with rtsp_camera(clip, loop=True) as camera, Running(tmp_path, {"cam": camera.url}) as running:
        released = collect_released(running, "cam", keep_images=True)
        health = running.wait_healthy()
        assert health["cameras"]["cam"]["warm"] and health["cameras"]["cam"]["connected"]
        assert any("passphrase" in line for line in running.lines)
        with Browser() as browser:
            page = browser.new_page(f"http://127.0.0.1:{running.port}/view/cam")
            page.wait_for("document.getElementById('video').videoWidth > 0", timeout=60)
            shots = []
            for _ in range(12):
                shot = grab(page)
                if shot is not None:
                    shots.append(shot)
                time.sleep(0.25)
            decoded = page.evaluate("document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames")
        assert decoded >= 10 and len(shots) >= 8
        time.sleep(1.0)
        assert running.metric("privacy_gateway_viewers", camera="cam") is not None
        assert running.metric("privacy_gateway_frames_total", camera="cam", state="released") > 0
    # no released frame is a raw camera frame (the camera's frames decode identically here)
    assert len(released) > 30
    assert not [i for state, i, digest, _ in released if digest in raw]
    # what the browser decoded is the redacted frame, not the raw one: on every face, the shot is
    # closer to the nearest released (redacted) frame than to the nearest raw frame
    sources = [half(f) for f in frames[::5]]
    redacted = [small for state, _, _, small in released if state == "redacted" and small is not None]
    masked = 0
    for shot in shots:
        if shot.shape != frames[0].shape or (np.abs(shot.astype(int) - 48) < 3).all():
            continue  # a blanked frame
        probe = half(shot)
        nearest = int(np.argmin([np.abs(probe - s).mean() for s in sources]))
        shown = redacted[int(np.argmin([np.abs(probe - r).mean() for r in redacted]))]
        for face in faces[nearest]:
            x, y, w, h = (v // 2 for v in face.box)
            box = (slice(y, y + h), slice(x, x + w))
            to_redacted = np.abs(probe[box] - shown[box]).mean()
            to_raw = np.abs(probe[box] - sources[nearest][box]).mean()
            assert to_redacted < to_raw, f"face {face.box}: the browser shows the raw face ({to_raw:.1f} vs {to_redacted:.1f})"
            masked += 1
    assert masked >= 3
    # the recordings unmask with the demo investigator (passphrase printed once at first start)
    passphrase = next(line.rsplit(" ", 1)[1] for line in running.lines if "passphrase" in line)
    recordings = sorted((tmp_path / "data" / "recordings" / "cam").glob("*.mp4"))
    assert len(recordings) >= 2
    os.environ["PRIVACY_GATEWAY_PASSPHRASE"] = passphrase
    try:
        out = tmp_path / "unmasked"
        code = main(["unmask", str(recordings[0]), "--vault", str(tmp_path / "data" / "vault"),
                     "--keys", str(tmp_path / "data" / "keys"),
                     "--identity", str(tmp_path / "data" / "identities" / "demo-investigator.identity"),
                     "--case", "C-7", "--reason", "test", "-o", str(out), "--no-watermark"])
        assert code == 0, capsys.readouterr().err
        assert main(["vault", "verify", "--vault", str(tmp_path / "data" / "vault")]) == 0
    finally:
        del os.environ["PRIVACY_GATEWAY_PASSPHRASE"]
    assert len(list(out.iterdir())) > 0 and read_image(sorted(out.iterdir())[0]).shape == frames[0].shape


def test_camera_disconnect_and_reconnect_releases_nothing_raw_and_keeps_recordings(camera_clip, tmp_path):
    clip, frames, _ = camera_clip
    raw = {hashlib.blake2b(f.tobytes()).digest() for f in frames}
    with rtsp_camera(clip, loop=True) as camera, Running(tmp_path, {"cam": camera.url}) as running:
        released = collect_released(running, "cam")
        running.wait_healthy()
        time.sleep(1.0)
        camera.kill()
        time.sleep(2.0)
        status, _ = running.get("/health")
        assert status == 503  # degraded while the camera is gone
        camera.restart()
        deadline = time.monotonic() + 30
        while running.metric("privacy_gateway_source_reconnects_total", camera="cam") in (None, 0.0):
            assert time.monotonic() < deadline, "no reconnect"
            time.sleep(0.5)
        running.wait_healthy()
        time.sleep(1.0)
    assert released and not [i for state, i, digest, _ in released if digest in raw]
    assert [i for _, i, _, _ in released] == list(range(released[0][1], released[0][1] + len(released)))
    assert main(["vault", "verify", "--vault", str(tmp_path / "data" / "vault")]) == 0
    for recording in (tmp_path / "data" / "recordings" / "cam").glob("*.mp4"):
        assert len(list(VideoTranscoder(recording).frames())) > 0


def test_overload_blanks_or_drops_and_releases_nothing_raw(camera_clip, tmp_path):
    """Three cameras at once on two cores with a short hold-back: more than the machine can redact."""
    clip, frames, _ = camera_clip
    raw = {hashlib.blake2b(f.tobytes()).digest() for f in frames}
    with rtsp_camera(clip, loop=True) as camera:
        cameras = {f"cam{i}": camera.url for i in range(3)}
        with Running(tmp_path, cameras, holdback_ms=250) as running:
            seen = {name: collect_released(running, name) for name in cameras}
            time.sleep(12)
            blanked = sum(running.metric("privacy_gateway_frames_total", camera=n, state=s) or 0
                          for n in cameras for s in ("blanked", "dropped"))
    assert blanked > 0
    for name, released in seen.items():
        assert released and not [i for state, i, digest, _ in released if digest in raw], name
    assert main(["vault", "verify", "--vault", str(tmp_path / "data" / "vault")]) == 0


def test_detector_crash_and_stall_are_blanked_counted_and_recordings_stay_intact(camera_clip, tmp_path, monkeypatch):
    from redaction.faces import CenterFaceDetector

    clip, frames, _ = camera_clip
    raw = {hashlib.blake2b(f.tobytes()).digest() for f in frames}
    real = CenterFaceDetector.detect
    fault = {"now": None}

    def detect(self, image):  # the real model, with a crash or a stall switched on from the test
        if fault["now"] == "crash":
            raise RuntimeError("injected detector crash")
        if fault["now"] == "stall":
            time.sleep(2.5)
        return real(self, image)

    monkeypatch.setattr(CenterFaceDetector, "detect", detect)
    with rtsp_camera(clip, loop=True) as camera, Running(tmp_path, {"cam": camera.url}, holdback_ms=800) as running:
        released = collect_released(running, "cam")
        running.wait_healthy()
        fault["now"] = "crash"
        time.sleep(2.0)
        fault["now"] = None
        time.sleep(2.0)
        errors = running.metric("privacy_gateway_detector_errors_total", camera="cam")
        lost = lambda: sum(running.metric("privacy_gateway_frames_total", camera="cam", state=s) for s in ("blanked", "dropped"))
        before = lost()
        fault["now"] = "stall"
        time.sleep(2.0)
        fault["now"] = None
        time.sleep(4.0)
        blanked = lost()
        redacted_after = running.metric("privacy_gateway_frames_total", camera="cam", state="released")
        running.wait_metric("privacy_gateway_frames_total", redacted_after, camera="cam", state="released")
    assert errors >= 1 and blanked >= before + 20  # the stall: ~2.5 s of a 30 fps camera blanked or dropped
    states = [s for s, *_ in released]
    assert "blanked" in states and "redacted" in states[-20:]  # faults show as blanked frames, then recovery
    assert not [i for state, i, digest, _ in released if digest in raw]
    assert main(["vault", "verify", "--vault", str(tmp_path / "data" / "vault")]) == 0
    total = sum(len(list(VideoTranscoder(r).frames())) for r in (tmp_path / "data" / "recordings" / "cam").glob("*.mp4"))
    assert total == len(released)  # every released frame recorded, blanked ones included


def test_corrupt_camera_bitstream_is_counted_and_nothing_raw_leaves(camera_clip, tmp_path):
    from test_sources import damage_video_data

    clip, frames, _ = camera_clip
    damaged = tmp_path / "damaged.mp4"
    assert damage_video_data(clip, damaged, every=6) > 10
    raw = {hashlib.blake2b(f.image.tobytes()).digest() for f in VideoTranscoder(damaged).frames()}
    with rtsp_camera(damaged, loop=True) as camera, Running(tmp_path, {"cam": camera.url}) as running:
        released = collect_released(running, "cam")
        running.wait_healthy()
        running.wait_metric("privacy_gateway_frames_total", 30, camera="cam", state="released")
        running.wait_metric("privacy_gateway_source_errors_total", 0, camera="cam")
    assert released and not [i for state, i, digest, _ in released if digest in raw]
    assert main(["vault", "verify", "--vault", str(tmp_path / "data" / "vault")]) == 0


def test_tls_listener_serves_health_over_https(tmp_path, camera_clip):
    import datetime as dt
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    from gateway.config import Tls

    running = Running(tmp_path, {"cam": str(camera_clip[0])})
    running.config = running.config.model_copy(update={"tls": Tls(cert=tmp_path / "cert.pem", key=tmp_path / "key.pem")})
    with running:
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        try:  # 200 once warm, 503 before: either is an answer over TLS
            with urllib.request.urlopen(f"https://localhost:{running.port}/health", context=context, timeout=30) as reply:
                report = json.loads(reply.read())
        except urllib.error.HTTPError as error:
            assert error.code == 503
            report = json.loads(error.read())
        assert "cam" in report["cameras"]
        assert any(line.startswith("privacy-gateway serving") and "https://" in line for line in running.lines)
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plain HTTP on the TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{running.port}/health", timeout=5).read()
