"""The command line end to end on real images and clips: redact, detect, and its errors."""

import json
import os
import socket
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from ports import free_port

from gateway.cli import main
from gateway.files import copy_excerpt
from redaction.regions import Region, coverage_mask


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def regions_of(record):
    return [Region(r["class"], *r["box"], r["score"], r["shape"], r["track"]) for r in record["regions"]]


@pytest.fixture(scope="module")
def group_photo(data):
    return sorted((data / "faces_dlib_examples" / "images").glob("*.jpg"))[0]


def test_detect_json_lines_have_the_documented_form(capsys, group_photo, faces_only):
    code, out, err = run(capsys, "detect", group_photo, "--json", "--policy", faces_only)
    assert code == 0, err
    (line,) = out.splitlines()
    record = json.loads(line)
    assert list(record) == ["path", "frame", "pts", "width", "height", "regions", "zones"]
    assert record["zones"] == []  # the policy has none (tests/test_zones.py has them)
    assert record["path"] == str(group_photo) and record["frame"] is None and record["pts"] is None
    assert (record["height"], record["width"]) == cv2.imread(str(group_photo)).shape[:2]
    assert len(record["regions"]) >= 5
    for region in record["regions"]:
        assert list(region) == ["class", "box", "score", "shape", "track"]
        assert region["class"] == "face" and region["shape"] in ("box", "ellipse") and region["track"] is None
        x, y, w, h = region["box"]
        assert all(isinstance(v, int) for v in region["box"]) and w > 0 and h > 0
        assert 0 <= x and x + w <= record["width"] and 0 <= y and y + h <= record["height"]
        assert 0 < region["score"] <= 1


def test_png_redaction_is_lossless_outside_regions_and_changes_every_region(capsys, tmp_path, group_photo, faces_only):
    source = tmp_path / "group.png"
    cv2.imwrite(str(source), cv2.imread(str(group_photo)))
    target = tmp_path / "out.png"
    code, out, err = run(capsys, "detect", source, "--json", "--policy", faces_only)
    regions = regions_of(json.loads(out))
    code, _, err = run(capsys, "redact", source, "-o", target, "--policy", faces_only)
    assert code == 0, err
    before, after = cv2.imread(str(source)), cv2.imread(str(target))
    assert after.shape == before.shape
    mask = coverage_mask(regions, before.shape[1], before.shape[0])
    assert np.array_equal(after[~mask], before[~mask])  # PNG in, PNG out: untouched pixels identical
    for region in regions:
        x, y, w, h = (int(v) for v in region.box)
        changed = np.abs(after[y:y + h, x:x + w].astype(int) - before[y:y + h, x:x + w]).sum(axis=2) > 0
        assert changed.mean() > 0.3, region


def test_redact_video_keeps_size_rate_frames_and_audio(capsys, tmp_path, short_clip, faces_only):
    target = tmp_path / "out.mp4"
    code, _, err = run(capsys, "redact", short_clip, "-o", target, "--policy", faces_only)
    assert code == 0, err
    with av.open(str(short_clip)) as a, av.open(str(target)) as b:
        va, vb = a.streams.video[0], b.streams.video[0]
        assert (vb.codec_context.width, vb.codec_context.height) == (va.codec_context.width, va.codec_context.height)
        assert Fraction(vb.average_rate) == pytest.approx(Fraction(va.average_rate), rel=0.01)
        assert len(b.streams.audio) == 1
        frames_in = sum(1 for _ in a.decode(video=0))
    with av.open(str(target)) as b:
        frames_out = sum(1 for _ in b.decode(video=0))
    with av.open(str(target)) as b:
        audio_packets = sum(1 for p in b.demux(audio=0) if p.size)
    assert frames_out == frames_in
    assert audio_packets > 50


def test_video_detect_reports_every_frame_with_tracks(capsys, tmp_path, short_clip):
    # every frame detected whole: this clip is hand-held and zooms, so motion-gated detection
    # reads it whole at five frames a second, and its background faces flicker between those
    every_frame = tmp_path / "every-frame.yaml"
    every_frame.write_text("classes: {plate: {enabled: false}}\ndetection: {stride: 1, motion: {enabled: false}}\n")
    code, out, err = run(capsys, "detect", short_clip, "--json", "--policy", every_frame)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["frame"] for r in records] == list(range(len(records)))
    assert all(isinstance(r["pts"], float) for r in records)
    assert records[1]["pts"] > records[0]["pts"] == 0.0
    tracks = [reg["track"] for r in records for reg in r["regions"]]
    assert tracks and all(isinstance(t, int) for t in tracks)
    # one performer per shot: nearly every frame of a shot shows the same track; the clip cuts from
    # the stage to a close-up at 0.67 s (frame 20), and no track goes on across a cut
    leading = []
    for shot in (records[:20], records[20:]):
        tracks = [reg["track"] for r in shot for reg in r["regions"]]
        most = max(set(tracks), key=tracks.count)
        assert tracks.count(most) >= 0.8 * len(shot)
        leading.append(most)
    assert leading[0] != leading[1]


def test_directories_are_walked_sorted(capsys, tmp_path, group_photo, faces_only):
    (tmp_path / "b").mkdir()
    image = cv2.imread(str(group_photo))
    for name in ("b/2.png", "a.jpg", "b/1.png"):
        cv2.imwrite(str(tmp_path / name), image)
    (tmp_path / "notes.txt").write_text("not an image")
    code, out, err = run(capsys, "detect", tmp_path, "--json", "--policy", faces_only)
    assert code == 0, err
    assert [json.loads(line)["path"] for line in out.splitlines()] == [
        str(tmp_path / "a.jpg"), str(tmp_path / "b" / "1.png"), str(tmp_path / "b" / "2.png")]


def test_unreadable_input_is_a_clear_error(capsys, tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"not a jpeg at all")
    code, _, err = run(capsys, "redact", fake, "-o", tmp_path / "out.jpg")
    assert code == 2 and f"cannot read {fake}: not a decodable image" in err
    assert not (tmp_path / "out.jpg").exists()
    code, _, err = run(capsys, "redact", tmp_path / "missing.mp4", "-o", tmp_path / "out.mp4")
    assert code == 2 and "no such file or directory" in err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    code, _, err = run(capsys, "redact", broken, "-o", tmp_path / "out.mp4")
    assert code == 2 and f"cannot read {broken}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4", "fake.jpg"]


def test_unwritable_output_fails_before_any_work(capsys, tmp_path, group_photo):
    code, _, err = run(capsys, "redact", group_photo, "-o", tmp_path / "nowhere" / "out.jpg")
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "redact", group_photo, "-o", tmp_path)
    assert code == 2 and "is a directory" in err


def test_bad_policy_names_the_field(capsys, tmp_path, group_photo):
    policy = tmp_path / "p.yaml"
    policy.write_text("classes:\n  face:\n    method: blurr\n")
    code, _, err = run(capsys, "redact", group_photo, "-o", tmp_path / "out.jpg", "--policy", policy)
    assert code == 2
    assert "classes.face.method: Input should be 'blur', 'pixelate' or 'solid'" in err
    assert not (tmp_path / "out.jpg").exists()


def test_corrupt_video_midway_leaves_no_partial_output(capsys, tmp_path, short_clip, faces_only):
    data = bytearray(short_clip.read_bytes())
    # keep the header, destroy the rest of the media data
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(bytes(data[: len(data) // 3]))
    target = tmp_path / "out.mp4"
    code, _, err = run(capsys, "redact", corrupt, "-o", target, "--policy", faces_only)
    # a truncated file either decodes what it has or fails with a clear message; never a half file
    assert code in (0, 2), err
    if code == 2:
        assert "cannot" in err and not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_avi_with_packed_b_frames_and_ac3_audio(capsys, tmp_path, data, faces_only, suffix):
    """AVI timestamps repeat and go backwards; output must still be complete and ordered."""
    source = copy_excerpt(data / "videos" / "opencv_Megamind.avi", tmp_path / "mega.avi", 1.0)
    target = tmp_path / f"out{suffix}"
    code, _, err = run(capsys, "redact", source, "-o", target, "--policy", faces_only)
    assert code == 0, err
    with av.open(str(source)) as a:
        frames_in = sum(1 for _ in a.decode(video=0))
    with av.open(str(target)) as b:
        pts = [f.pts for f in b.decode(video=0)]
    assert len(pts) == frames_in and pts == sorted(pts) and len(set(pts)) == len(pts)
    with av.open(str(target)) as b:
        assert sum(1 for p in b.demux(audio=0) if p.size) > 10


def test_serve_reports_configuration_problems_in_one_line_and_keeps_bugs_loud(capsys, tmp_path, monkeypatch):
    """A configuration that cannot be used is a clear message and exit 2; a bug (here a ValueError raised while
    building the gateway) keeps its traceback instead of passing for a configuration error."""
    import gateway.api.server

    config = tmp_path / "gateway.yaml"
    config.write_text("cameras: {cam: {source: nowhere.mp4, holdback_ms: 5}}\n")
    code, _, err = run(capsys, "serve", "--config", config, "--data", tmp_path / "data")
    assert code == 2 and err.startswith("privacy-gateway: error: ") and "cameras.cam.holdback_ms" in err
    assert "Traceback" not in err

    sample = Path(__file__).resolve().parents[1] / "config" / "samples" / "vtest-10s.mp4"
    config.write_text(f"cameras: {{cam: {{source: {sample}}}}}\n")

    def broken(*args, **kwargs):
        raise ValueError("a bug, not a configuration problem")

    monkeypatch.setattr(gateway.api.server, "Gateway", broken)
    with pytest.raises(ValueError, match="a bug, not a configuration problem"):
        main(["serve", "--config", str(config), "--data", str(tmp_path / "data")])


@pytest.mark.parametrize("section", ["listen", "rtsp"])
def test_serve_on_a_port_another_program_listens_on_says_so_in_one_line_before_any_camera_starts(
        capsys, caplog, tmp_path, openbao, section):
    """uvicorn, left to bind the port, logs the error and exits the process from inside the event loop (a
    traceback, once the cameras had started); the RTSP server, left to bind its port, failed after the
    cameras had started, with asyncio's message. serve binds both first and names the address it cannot take."""
    from serve_harness import add_people

    add_people(tmp_path / "data" / "keys", tmp_path / "people")  # the default policy's quorum needs an investigator
    sample = Path(__file__).resolve().parents[1] / "config" / "samples" / "vtest-10s.mp4"
    config = tmp_path / "gateway.yaml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = free_port()
        listen, rtsp = (port, other) if section == "listen" else (other, port)
        config.write_text(json.dumps({"cameras": {"cam": {"source": str(sample)}}, "escrow": openbao.config(),
                                      "listen": {"host": "127.0.0.1", "port": listen},
                                      "rtsp": {"host": "127.0.0.1", "port": rtsp}}))
        code, _, err = run(capsys, "serve", "--config", config, "--data", tmp_path / "data")
    assert code == 2, err
    assert err == f"privacy-gateway: error: cannot serve: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert "camera cam: playing" not in caplog.text
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["keys"]  # no vault, no co-signer: nothing began
    with socket.socket() as again:  # the port serve did bind was let go
        again.bind(("127.0.0.1", other))


def test_a_clip_whose_frames_are_closer_than_its_average_rate_keeps_every_timestamp(capsys, tmp_path, data, faces_only):
    """Half a second of MOT17-13 (25 fps, first frame at 0.04 s) averages 21.7 fps over its length: the
    encoder must not count in ticks of 1/21.7 s, where two frames fall on one tick and the muxer refuses
    the output (it did: "Invalid argument")."""
    source = copy_excerpt(data / "videos" / "MOT17-13-SDP_raw_h264.mp4", tmp_path / "excerpt.mp4", 0.5)
    with av.open(str(source)) as a:
        stream = a.streams.video[0]
        assert stream.average_rate < 24  # the case at hand
        pts_in = [f.pts for f in a.decode(video=0)]
    target = tmp_path / "out.mp4"
    code, _, err = run(capsys, "redact", source, "-o", target, "--policy", faces_only)
    assert code == 0, err
    with av.open(str(target)) as b:
        assert [f.pts for f in b.decode(video=0)] == pts_in


@pytest.mark.parametrize("policy_text", [None, "classes:\n  face:\n    method: blurr\n"])
def test_redact_waits_for_the_kernels_it_warms_beside_the_models(capsys, tmp_path, group_photo, faces_only,
                                                                 monkeypatch, policy_text):
    """The kernels are loaded on a thread of their own while the models load; the command returns
    only after that thread, on success and on a bad policy alike (a thread still loading kernels
    while the interpreter shuts down can crash it)."""
    import time

    import gateway.cli.files as files

    done = []
    monkeypatch.setattr(files, "warmup_kernels", lambda: (time.sleep(0.5), done.append(True)))
    policy = faces_only
    if policy_text is not None:
        policy = tmp_path / "bad.yaml"
        policy.write_text(policy_text)
    code, _, err = run(capsys, "redact", group_photo, "-o", tmp_path / "out.jpg", "--policy", policy)
    assert code == (0 if policy_text is None else 2), err
    assert done == [True]
