"""`serve` end to end against real peers: a GStreamer RTSP camera in, headless Chromium (WHEP)
out, recordings unmasked with the demo investigator's key. Nothing raw may come out."""

import base64
import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import yaml
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

    def __init__(self, tmp_path, cameras: dict, holdback_ms=1500, recording_seconds=2.0, **settings):
        (tmp_path / "faces.yaml").write_text(json.dumps({**FACES, "unmask": {"watermark": "optional"}}))
        config = {"cameras": {name: {**(url if isinstance(url, dict) else {"source": url}), "policy": "faces.yaml",
                                     "holdback_ms": holdback_ms, "renditions": ["h264"]} for name, url in cameras.items()},
                  "storage": {"data_dir": "data", "recording_seconds": recording_seconds},
                  "listen": {"host": "127.0.0.1", "port": 0}, "demo_identities": True, **settings}
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
            # an officer's token, as `POST /api/tokens` would issue it, for /metrics and the detailed /health
            self.token, _ = gateway.access.store.issue("demo-officer", None, 3600.0, "test")
            self.viewer_token = next(line.split("#token=")[1] for line in self.lines if "#token=" in line)
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

    def get(self, path, token: str | None = ""):
        """GET with the officer's token ("": the default; None: none)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token or self.token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def call(self, method, path, body=None, content_type="application/json"):
        """An API request with the officer's token: (status, decoded JSON or text)."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text.decode()

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


def assert_faces_redacted(images, frames, faces) -> int:
    """Each image (half size) that is one of the sampled camera frames has lost the detail of that
    frame's confident, visible faces; returns how many faces were checked.

    Detail (variance of the Laplacian) rather than a plain difference: blurring a dark face
    changes its pixels little, and a lossy hop (VP8 from a publisher, H.264 to a VMS) smooths
    everything a little. Marginal faces (score < 0.7) may fall under the threshold after such
    a hop, and nearly flat ones carry no detail to lose: the detector's recall is measured
    elsewhere, this checks the path through the pipeline.
    """
    sources = [half(f) for f in frames[::5]]
    detail = lambda image: cv2.Laplacian(image.mean(axis=2), cv2.CV_32F).var()
    checked = 0
    for image in images:
        nearest = int(np.argmin([np.abs(image - s).mean() for s in sources]))
        if np.abs(image - sources[nearest]).mean() > 5:
            continue  # not one of the sampled frames (only those have known faces), just near one
        for face in (f for f in faces[nearest] if f.score >= 0.7):
            x, y, w, h = (v / 2 for v in face.box)  # its middle: the live boxes come from tracking, not this detection
            box = (slice(round(y + h / 5), round(y + 4 * h / 5)), slice(round(x + w / 5), round(x + 4 * w / 5)))
            before = detail(sources[nearest][box])
            if before < 50:
                continue
            assert detail(image[box]) < 0.3 * before, f"face {face.box} not redacted"
            checked += 1
    return checked


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
            page = browser.new_page(f"http://127.0.0.1:{running.port}/view/cam#token={running.viewer_token}")
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
        request = urllib.request.Request(f"https://localhost:{running.port}/health",
                                         headers={"Authorization": f"Bearer {running.token}"})
        try:  # 200 once warm, 503 before: either is an answer over TLS
            with urllib.request.urlopen(request, context=context, timeout=30) as reply:
                report = json.loads(reply.read())
        except urllib.error.HTTPError as error:
            assert error.code == 503
            report = json.loads(error.read())
        assert "cam" in report["cameras"]
        assert any(line.startswith("privacy-gateway serving") and "https://" in line for line in running.lines)
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plain HTTP on the TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{running.port}/health", timeout=5).read()


def test_policy_activated_over_http_switches_live_binds_new_records_and_outlives_a_restart(camera_clip, tmp_path):
    from keys.store import VaultStore
    from keys.vault import read_segment

    clip, frames, _ = camera_clip
    raw = {hashlib.blake2b(f.tobytes()).digest() for f in frames}
    pixelate = {**FACES, "name": "pixelated", "classes": {"plate": {"enabled": False}, "face": {"method": "pixelate"}},
                "unmask": {"face": {"roles": ["investigator"], "quorum": 1}, "watermark": "optional"}}
    with rtsp_camera(clip, loop=True) as camera:
        with Running(tmp_path, {"cam": camera.url, "side": str(clip)}) as running:
            released = collect_released(running, "cam")
            running.wait_healthy()
            status, before = running.call("GET", "/api/cameras/cam/policy")
            assert status == 200
            # an invalid version is refused with field paths, and changes nothing
            bad = {**pixelate, "classes": {"face": {"method": "smudge", "strength": -1}}}
            status, answer = running.call("POST", "/api/policies", bad)
            assert status == 422 and any(e.startswith("classes.face.method:") for e in answer["errors"]), answer
            status, stored = running.call("POST", "/api/policies", yaml.safe_dump(pixelate).encode(), "application/yaml")
            assert status == 201
            version = stored["version"]
            status, diff = running.call("GET", f"/api/policies/{before['version']}/diff/{version}")
            assert status == 200 and "+    method: pixelate" in diff and "-    method: blur" in diff
            # a version that cannot run here (no auditor holds keys for its grant): 409, the old one stays
            impossible = {**pixelate, "name": "impossible", "unmask": {"face": {"roles": ["auditor"], "quorum": 1}}}
            status, stored_bad = running.call("POST", "/api/policies", impossible)
            status, answer = running.call("PUT", "/api/cameras/cam/policy", {"version": stored_bad["version"]})
            assert status == 409 and "stays in force" in answer["error"], answer
            assert running.call("GET", "/api/cameras/cam/policy")[1]["version"] == before["version"]
            switch_at = running.metric("privacy_gateway_frames_total", camera="cam", state="in")
            status, answer = running.call("PUT", "/api/cameras/cam/policy", {"version": version})
            assert status == 200 and answer["switched"] is True and answer["previous"] == before["version"]
            running.wait_metric("privacy_gateway_frames_total", switch_at + 60, camera="cam", state="released")
            assert running.call("GET", "/api/cameras/cam/policy")[1]["version"] == version
            # only what was activated is kept: the side camera still follows its configured file
            assert json.loads((tmp_path / "data" / "active-policies.json").read_text()) == {"cam": version}
            actions = [e["action"] for e in running.call("GET", "/api/audit")[1]["entries"]]
            assert actions.count("store-policy") == 2 and actions.count("activate-policy") == 2
            assert actions.count("activate-policy-failed") == 1
        # no raw frame around the switch, and the frames after it still redacted
        assert not [i for state, i, digest, _ in released if digest in raw]
        assert "redacted" in [state for state, *_ in released[-30:]]
        store = VaultStore.open(tmp_path / "data" / "vault")
        bound = [read_segment(p, store.gateway).header.policy_sha256
                 for p in sorted((tmp_path / "data" / "vault" / "segments" / "cam").glob("*.pgv"))]
        assert bound[0] == before["version"] and bound[-1] == version and sorted(set(bound)) == sorted({before["version"], version})
        assert main(["vault", "verify", "--vault", str(tmp_path / "data" / "vault")]) == 0
        assert main(["audit", "verify", "--vault", str(tmp_path / "data" / "vault")]) == 0

        with Running(tmp_path, {"cam": camera.url, "side": str(clip)}) as again:  # a restart keeps what was activated
            assert again.call("GET", "/api/cameras/cam/policy")[1]["version"] == version
            assert again.call("GET", "/api/cameras/side/policy")[1]["version"] == before["version"]  # its file's
            assert [line for line in again.lines if "activated over HTTP" in line] == [
                f"camera cam: policy {version[:12]} (activated over HTTP) is in force, not its configured file"]


def test_token_command_gets_a_token_with_a_signed_request_and_it_opens_only_its_camera(camera_clip, tmp_path, capsys,
                                                                                       monkeypatch):
    with Running(tmp_path, {"cam": str(camera_clip[0]), "other": str(camera_clip[0])}) as running:
        passphrase = next(line.rsplit(": ", 1)[1] for line in running.lines if "passphrase" in line)
        monkeypatch.setenv("PRIVACY_GATEWAY_PASSPHRASE", passphrase)
        identity = tmp_path / "data" / "identities" / "demo-officer.identity"
        url = f"http://127.0.0.1:{running.port}"
        capsys.readouterr()
        assert main(["token", "--gateway", url, "--identity", str(identity), "--for", "demo-viewer",
                     "--camera", "cam", "--ttl", "600"]) == 0
        token = capsys.readouterr().out.strip()
        assert running.get("/api/whoami", token=token)[0] == 200
        status, body = running.get("/api/cameras", token=token)
        assert status == 200 and json.loads(body) == {"cameras": [{"id": "cam"}]}
        if os.access(CHROMIUM, os.X_OK):  # the viewer page lists the token's cameras, and only them
            from browser import Browser

            with Browser() as browser:
                page = browser.new_page(f"{url}/#token={token}")
                page.wait_for("document.querySelectorAll('#cameras a').length > 0", timeout=30)
                assert page.evaluate("[...document.querySelectorAll('#cameras a')].map(a => a.textContent)") == ["cam"]
                assert "token" not in page.evaluate("location.href")  # taken out of the address bar
                bare = browser.new_page(f"{url}/view")
                bare.wait_for("document.getElementById('status').textContent.length > 0", timeout=30)
                assert bare.evaluate("document.getElementById('status').textContent") == "A viewer token is needed."
        # the wrong passphrase, an unreachable gateway: one clear line each, exit 2
        monkeypatch.setenv("PRIVACY_GATEWAY_PASSPHRASE", "not it")
        assert main(["token", "--gateway", url, "--identity", str(identity)]) == 2
        monkeypatch.setenv("PRIVACY_GATEWAY_PASSPHRASE", passphrase)
        assert main(["token", "--gateway", "http://127.0.0.1:9", "--identity", str(identity)]) == 2
        # a viewer may not issue tokens to others
        viewer = tmp_path / "data" / "identities" / "demo-viewer.identity"
        assert main(["token", "--gateway", url, "--identity", str(viewer), "--for", "demo-officer"]) == 2
        errors = capsys.readouterr().err
        assert "cannot open identity" in errors and "cannot reach" in errors and "refused (403)" in errors


def test_whip_publisher_goes_through_the_same_pipeline_and_only_redacted_frames_leave(camera_clip, tmp_path):
    """An aiortc publisher with a publisher identity's token: its frames are redacted like a camera's."""
    import asyncio
    from fractions import Fraction

    import av
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamTrack

    from keys.directory import KeyDirectory
    from keys.identity import PrivateIdentity

    clip, frames, faces = camera_clip

    class Clip(MediaStreamTrack):
        kind = "video"

        def __init__(self):
            super().__init__()
            self.sent, self.start = 0, None

        async def recv(self):
            self.start = self.start or time.monotonic()
            await asyncio.sleep(max(0.0, self.start + self.sent / 25 - time.monotonic()))
            frame = av.VideoFrame.from_ndarray(frames[self.sent % len(frames)], format="bgr24")
            frame.pts, frame.time_base = self.sent * 3600, Fraction(1, 90_000)
            self.sent += 1
            return frame

    async def publish(url, token, seconds):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(Clip(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        request = urllib.request.Request(url, data=pc.localDescription.sdp.encode(), method="POST", headers={
            "Content-Type": "application/sdp", "Authorization": f"Bearer {token}"})
        try:
            answer = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=30).read().decode())
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            await asyncio.sleep(seconds)
            # revoking the publisher's token ends its session while it is still sending
            assert running.gateway.whip.publishers("door") == 1
            running.gateway.access.store.revoke(token.split("_")[1])
            deadline = time.monotonic() + 15
            while running.gateway.whip.publishers("door"):
                assert time.monotonic() < deadline, "the WHIP session outlived its token"
                await asyncio.sleep(0.2)
        finally:
            await pc.close()

    with Running(tmp_path, {"door": {"protocol": "whip"}}) as running:
        released = collect_released(running, "door", keep_images=True)
        directory = KeyDirectory.open(tmp_path / "data" / "keys")
        directory.add(PrivateIdentity.generate("door-encoder", ["publisher"]).public)
        running.gateway.access.store.grant("door-encoder", ["door"])
        token, _ = running.gateway.access.store.issue("door-encoder", ["door"], 600.0, "test")
        url = f"http://127.0.0.1:{running.port}/whip/door"
        # a viewer's token may watch, not publish
        viewer = urllib.request.Request(url, data=b"v=0", method="POST", headers={
            "Content-Type": "application/sdp", "Authorization": f"Bearer {running.viewer_token}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(viewer, timeout=10)
        assert refused.value.code == 403
        asyncio.run(publish(url, token, 8.0))
        assert running.metric("privacy_gateway_frames_total", camera="door", state="released") > 0
    redacted = [(i, small) for state, i, _, small in released if state == "redacted"]
    assert len(redacted) >= 20
    assert assert_faces_redacted([image for _, image in redacted[::2]], frames, faces) >= 3
    assert main(["vault", "verify", "--vault", str(tmp_path / "data" / "vault")]) == 0


def test_rtsp_egress_serves_vms_clients_the_redacted_stream_with_digest_auth(camera_clip, tmp_path):
    import av

    clip, frames, faces = camera_clip
    with rtsp_camera(clip, loop=True) as camera, Running(tmp_path, {"cam": camera.url, "other": camera.url},
                                                         rtsp={"port": 0}) as running:
        running.wait_healthy()
        deadline = time.monotonic() + 30
        while "h264" not in running.gateway.cameras["cam"].renditions:  # until then RTSP answers 503, retry
            assert time.monotonic() < deadline, "no rendition"
            time.sleep(0.1)
        store = running.gateway.access.store
        store.grant("demo-viewer", ["cam"])
        token, record = store.issue("demo-viewer", ["cam"], 600.0, "test")
        secret = token.split("_", 2)[2]
        base = f"rtsp://127.0.0.1:{running.gateway.rtsp_port}"
        assert any(line.startswith("  RTSP:   rtsp://127.0.0.1:") for line in running.lines)
        decoded = []
        for transport in ("tcp", "udp"):
            with av.open(f"rtsp://{record.id}:{secret}@127.0.0.1:{running.gateway.rtsp_port}/cam",
                         options={"rtsp_transport": transport, "timeout": "20000000"}, timeout=30) as client:
                for frame in client.decode(video=0):
                    decoded.append(frame.to_ndarray(format="bgr24"))
                    if len(decoded) % 40 == 0:
                        break
        for url in (f"{base}/cam", f"rtsp://{record.id}:wrong@127.0.0.1:{running.gateway.rtsp_port}/cam",
                    f"rtsp://{record.id}:{secret}@127.0.0.1:{running.gateway.rtsp_port}/other"):
            with pytest.raises(av.error.FFmpegError):  # 401, 401, 403
                av.open(url, options={"rtsp_transport": "tcp"}, timeout=20)
        assert running.metric("privacy_gateway_auth_failures_total", reason="wrong password") >= 1
    assert len(decoded) == 80 and decoded[0].shape == frames[0].shape
    # what the VMS decodes is the redacted stream: wherever a sampled frame has a face, its detail is gone
    assert assert_faces_redacted([half(d) for d in decoded], frames, faces) >= 3


def test_revoking_a_token_ends_the_live_sessions_it_opened(camera_clip, tmp_path):
    """A viewer watching over WHEP and a VMS pulling RTSP are cut off once their token is revoked."""
    import asyncio

    import av
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    with Running(tmp_path, {"cam": str(camera_clip[0])}, rtsp={"port": 0}) as running:
        running.wait_healthy()
        deadline = time.monotonic() + 30
        while "h264" not in running.gateway.cameras["cam"].renditions:
            assert time.monotonic() < deadline, "no rendition"
            time.sleep(0.1)
        store = running.gateway.access.store
        store.grant("demo-viewer", ["cam"])
        web, _ = store.issue("demo-viewer", ["cam"], 600.0, "test")
        vms, record = store.issue("demo-viewer", ["cam"], 600.0, "test")

        async def watch():
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            transceiver = pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            request = urllib.request.Request(f"http://127.0.0.1:{running.port}/whep/cam", method="POST",
                                             data=pc.localDescription.sdp.encode(), headers={
                                                 "Content-Type": "application/sdp", "Authorization": f"Bearer {web}"})
            answer = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=30).read().decode())
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            track = transceiver.receiver.track
            for _ in range(5):
                await asyncio.wait_for(track.recv(), 30)
            assert running.gateway.whep.viewers("cam") == 1
            status, _ = await asyncio.to_thread(running.call, "DELETE", f"/api/tokens/{web.split('_')[1]}")
            assert status == 200
            deadline = time.monotonic() + 15
            while running.gateway.whep.viewers("cam") or pc.connectionState not in ("closed", "failed"):
                assert time.monotonic() < deadline, "the WHEP session outlived its token"
                await asyncio.sleep(0.2)
            await pc.close()

        asyncio.run(watch())

        secret = vms.split("_", 2)[2]
        frames = 0
        with av.open(f"rtsp://{record.id}:{secret}@127.0.0.1:{running.gateway.rtsp_port}/cam",
                     options={"rtsp_transport": "tcp", "timeout": "10000000"}, timeout=20) as client:
            try:
                for _ in client.decode(video=0):
                    frames += 1
                    if frames == 10:
                        store.revoke(record.id)
                    assert frames < 10 + 25 * 15, "the RTSP session outlived its token"
            except av.error.FFmpegError:
                pass  # the server ended the session: the demuxer may report the closed connection
        assert frames >= 10
        assert running.gateway.rtsp.sessions("cam") == 0


def test_live_frames_released_in_a_burst_leave_at_the_cameras_own_pace():
    """A detection group is released at once; the live renditions get it at the camera's rate."""
    from gateway.server import CameraRuntime

    runtime = CameraRuntime("cam", None, None, None, None, None, [])
    start = time.monotonic()
    for n in range(7):  # first a frame released 0.2 s after its media time, then six at once with it
        runtime._wait_for_turn(10 + n / 30, start)
    paced = time.monotonic() - start
    assert paced >= 0.9 * 6 / 30  # spread over their own 200 ms, not sent in one go
    # a frame of the same burst whose turn has passed (the sink fell behind) is not held at all
    time.sleep(0.3)
    before = time.monotonic()
    runtime._wait_for_turn(10 + 7 / 30, start)
    assert time.monotonic() - before < 0.1
