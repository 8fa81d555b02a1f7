"""`GET /api/cameras/<id>/snapshot` against a real `serve` (RTSP camera, real detector): officers only,
the latest *released* frame (never a raw one: compared with the camera's decoded frames, its faces
redacted), JPEG or PNG, 503 with Retry-After before a camera has released anything."""

import hashlib
import json
import time

import cv2
import numpy as np
import pytest
from rtsp_support import rtsp_camera
from serve_harness import Running, assert_faces_redacted, half

pytestmark = pytest.mark.realtime


@pytest.fixture(scope="module")
def gateway(camera_clip, tmp_path_factory, openbao):
    """`serve` with one RTSP camera (a clip with a large face) and one WHIP camera nobody publishes."""
    clip, _, _ = camera_clip
    tmp = tmp_path_factory.mktemp("snapshot")
    with rtsp_camera(clip, loop=True) as camera, \
            Running(tmp, openbao, {"lobby": camera.url, "idle": {"protocol": "whip"}}) as running:
        running.wait_metric("privacy_gateway_frames_total", 20, camera="lobby", state="released")
        yield running


def test_viewers_and_strangers_get_no_snapshot(gateway):
    status, body = gateway.get("/api/cameras/lobby/snapshot", token=gateway.viewer_token)
    assert status == 403 and "lacks the policies permission" in json.loads(body)["error"]
    assert gateway.get("/api/cameras/lobby/snapshot", token=None)[0] == 401
    assert gateway.get("/api/cameras/lobby/snapshot?held=1", token=gateway.viewer_token)[0] == 403
    assert gateway.get("/api/cameras/nowhere/snapshot")[0] == 404
    status, body = gateway.get("/api/cameras/lobby/snapshot?format=gif")
    assert status == 400 and "format" in json.loads(body)["error"]


def test_a_camera_that_released_nothing_yet_answers_503_with_retry_after(gateway):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{gateway.port}/api/cameras/idle/snapshot",
                                     headers={"Authorization": f"Bearer {gateway.token}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 503 and int(refused.value.headers["Retry-After"]) > 0
    assert "has released no frame yet" in json.loads(refused.value.read())["error"]


def test_the_snapshot_is_a_released_redacted_frame_never_a_raw_one(gateway, camera_clip):
    import urllib.request

    _, frames, faces = camera_clip
    raw = {hashlib.blake2b(f.tobytes()).digest() for f in frames}
    states, taken, checked = set(), 0, 0
    for _ in range(300):  # PNG: lossless, so a raw frame would hash as one
        request = urllib.request.Request(f"http://127.0.0.1:{gateway.port}/api/cameras/lobby/snapshot?format=png",
                                         headers={"Authorization": f"Bearer {gateway.token}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.headers["Content-Type"] == "image/png" and reply.headers["Cache-Control"] == "no-store"
            states.add(reply.headers["X-Frame-State"])
            image = cv2.imdecode(np.frombuffer(reply.read(), np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == frames[0].shape
        assert hashlib.blake2b(image.tobytes()).digest() not in raw
        taken += 1
        # a snapshot that is one of the clip's sampled frames has its confident faces redacted
        checked += assert_faces_redacted([half(image)], frames, faces)
        if checked >= 3:
            break
        time.sleep(0.03)
    print(f"{taken} snapshots, {checked} faces checked")
    assert "redacted" in states and checked >= 3
    # JPEG is the default
    status, body = gateway.get("/api/cameras/lobby/snapshot")
    assert status == 200 and body[:3] == b"\xff\xd8\xff"


def test_the_held_view_is_refused_while_the_camera_is_not_held(gateway):
    status, body = gateway.get("/api/cameras/lobby/snapshot?held=1")
    assert status == 409 and "not held" in json.loads(body)["error"]
    status, view = gateway.call("GET", "/api/cameras/lobby/view")
    assert status == 200 and view["watched"] is False and view["held"] is None  # no zones: not watched
    status, answer = gateway.call("POST", "/api/cameras/lobby/view/confirm")
    assert status == 409 and "not watched" in answer["error"]
