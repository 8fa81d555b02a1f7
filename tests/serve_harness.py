"""`serve` under test (shared by tests/test_serve*.py): the gateway on its own thread and event loop as
the command line runs it, a 6 s clip with one large face as the camera, and checks on what leaves.

A site configuration creates nobody: :func:`add_people` makes the site's officer, viewer and
investigator with the real commands (`keys init`, `keys add-identity`), each under a passphrase of
their own, their private keys outside the data directory, before the gateway starts."""

import base64
import hashlib
import json
import os
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from peers import require
from rtsp_support import gstreamer_missing

from gateway.api import Demo, serve
from gateway.cli import main
from gateway.cli.prompt import variable
from gateway.config import Escrow, GatewayConfig, Listen, RtspEgress, load_config
from gateway.files import VideoTranscoder, copy_excerpt
from redaction import Analyzer, parse_policy

FACES = {"classes": {"plate": {"enabled": False}}, "detection": {"stride": 2, "threads": 1}}
#: the site's people: their role -> (name, role given to `keys add-identity`)
ROLES = {"officer": "privacy-officer", "viewer": "viewer", "investigator": "investigator"}


@dataclass(frozen=True)
class Person:
    name: str
    file: Path
    passphrase: str

    @property
    def variable(self) -> str:
        """The environment variable the commands read this person's passphrase from."""
        return variable(self.name)


def add_people(keys: Path, away: Path) -> dict[str, Person]:
    """A new key directory with an officer, a viewer and an investigator (named after their role),
    made by the commands an operator runs; their identity files go to ``away`` (their own
    machines), each under its own passphrase. Passphrase variables are set only while the
    commands run."""
    assert main(["keys", "init", str(keys)]) == 0
    away.mkdir(parents=True, exist_ok=True)
    people = {}
    for name, role in ROLES.items():
        person = Person(name, away / f"{name}.identity", secrets.token_urlsafe(15))
        os.environ[person.variable] = person.passphrase
        try:
            assert main(["keys", "add-identity", str(keys), name, "--role", role, "--out", str(person.file)]) == 0
        finally:
            del os.environ[person.variable]
        people[name] = person
    return people


def faces_clip(directory: Path, data: Path) -> tuple[Path, list[np.ndarray], list[list]]:
    """6 s of a clip with one large face in ``directory``, its decoded frames (what the camera
    sends) and the confident faces of every fifth one (the ``camera_clip`` fixture, conftest.py)."""
    require(gstreamer_missing())
    clip = copy_excerpt(data / "videos" / "short_hamilton_clip.mp4", directory / "cam.mp4", 6.0)
    frames = [f.image for f in VideoTranscoder(clip).frames()]
    analyzer = Analyzer(parse_policy(FACES))
    faces = [[r for r in analyzer.regions(f) if r.score >= 0.5] for f in frames[::5]]
    return clip, frames, faces


def demo_config(tmp_path, openbao, cameras: dict[str, str]) -> tuple[GatewayConfig, dict]:
    """The embedded default (the demo) as the command line loads it without --config, data in
    ``tmp_path/data``, with the test's changes only: the session's co-signer instead of an embedded
    OpenBao, ports the system picks, and ``cameras`` (id -> source) beside its own."""
    config, policies = load_config(None, tmp_path / "data")
    extra = {name: config.cameras["demo"].model_copy(update={"source": source}) for name, source in cameras.items()}
    config = config.model_copy(update={
        "cameras": {**config.cameras, **extra}, "escrow": Escrow.model_validate(openbao.config()),
        "listen": Listen(port=0), "rtsp": RtspEgress(port=0)})
    return config, {**policies, **{name: policies["demo"] for name in extra}}


class Running:
    """`serve` on its own thread and event loop, like the command line runs it."""

    def __init__(self, tmp_path, openbao, cameras: dict, holdback_ms=1500, recording_seconds=2.0,
                 demo: Demo | None = None, **settings):
        """``openbao``: the session's co-signer (conftest.py), configured as the gateway's external one.
        A site configuration: the site's people (:func:`add_people`) are made before the first start
        in ``tmp_path`` and found again at the next (``people.json`` beside the data directory, a
        test's notebook). With ``demo``: the embedded demo (:func:`demo_config`, ``cameras`` added to
        its own), which makes its own people."""
        self.demo, self.viewer_token = demo, None
        self.lines: list[str] = []
        self.stop = threading.Event()
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        if demo is not None:
            self.people = {}
            self.config, self.policies = demo_config(tmp_path, openbao, cameras)
            return
        (tmp_path / "faces.yaml").write_text(json.dumps({**FACES, "unmask": {"watermark": "optional"}}))
        config = {"cameras": {name: {**(url if isinstance(url, dict) else {"source": url}), "policy": "faces.yaml",
                                     "holdback_ms": holdback_ms, "renditions": ["h264"]} for name, url in cameras.items()},
                  "storage": {"data_dir": "data", "recording_seconds": recording_seconds},
                  "listen": {"host": "127.0.0.1", "port": 0}, "escrow": openbao.config(), **settings}
        (tmp_path / "gateway.yaml").write_text(json.dumps(config))
        notebook = tmp_path / "people.json"
        if notebook.exists():
            self.people = {k: Person(v["name"], Path(v["file"]), v["passphrase"])
                           for k, v in json.loads(notebook.read_text()).items()}
        else:
            self.people = add_people(tmp_path / "data" / "keys", tmp_path / "people")
            notebook.write_text(json.dumps({k: {"name": p.name, "file": str(p.file), "passphrase": p.passphrase}
                                            for k, p in self.people.items()}))
        self.config, self.policies = load_config(tmp_path / "gateway.yaml")

    def _run(self):
        import asyncio

        def ready(gateway, port):
            self.gateway, self.port = gateway, port
            # an officer's token, as `POST /api/tokens` would issue it, for /metrics and the detailed /health;
            # and the viewer granted every camera, with a token, as an officer would do over the API
            # (the demo prints its viewer's token)
            store = gateway.access.store
            if self.demo is not None:
                self.token, _ = store.issue("demo-officer", None, 3600.0, "test")
                self.viewer_token = next((line.split("#token=")[1] for line in self.lines if "#token=" in line), None)
            else:
                self.token, _ = store.issue("officer", None, 3600.0, "test")
                if not store.granted("viewer"):
                    store.grant("viewer", list(gateway.cameras))
                self.viewer_token, _ = store.issue("viewer", None, 3600.0, "test")
            self.started.set()

        try:
            asyncio.run(serve(self.config, self.policies, announce=self.lines.append, ready=ready, stop=self.stop,
                              demo=self.demo))
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

    def call(self, method, path, body=None, content_type="application/json", token=None):
        """An API request with the officer's token (or ``token``): (status, decoded JSON or text)."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Authorization": f"Bearer {token or self.token}", "Content-Type": content_type})
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


class ReleasedLog(list):
    """Every frame a camera's pipeline released, as its sinks see them: (state, index, hash[, half-size
    image]); and the regions each frame was redacted with, so that a raw frame, if one ever leaves,
    comes with what the pipeline decided for it."""

    def __init__(self) -> None:
        super().__init__()
        self.regions: dict[int, list] = {}

    def raw(self, raw: set[bytes]) -> list[str]:
        """The released frames whose pixels are a raw camera frame's (``raw``: their hashes), each
        described by its state, its regions and the states of the frames before it; empty if none."""
        found = []
        for place, (state, index, digest, _) in enumerate(self):
            if digest in raw:
                before = " ".join(f"{s[0]}{i}" for s, i, *_ in self[max(0, place - 12):place])
                found.append(f"frame {index} ({state}; regions {self.regions.get(index)}; before it: {before})")
        return found


def collect_released(running, camera, keep_images=False) -> ReleasedLog:
    """Every frame the pipeline releases, as the sinks see them (see :class:`ReleasedLog`)."""
    seen = ReleasedLog()
    pipeline = running.gateway.cameras[camera].pipeline
    apply = pipeline.step.apply

    def noted(index, time, image, regions):
        seen.regions[index] = [(r.cls, r.track, round(r.score, 2), (int(r.x), int(r.y), int(r.w), int(r.h)))
                               for r in regions]
        return apply(index, time, image, regions)

    def sink(item):
        digest = None if item.image is None else hashlib.blake2b(item.image.tobytes()).digest()
        small = half(item.image) if keep_images and item.image is not None else None
        seen.append((item.state, item.index, digest, small))

    pipeline.step.apply = noted
    pipeline.sinks.append(sink)
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
