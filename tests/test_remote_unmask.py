"""Remote unmask: a running gateway sends a recording and its sealed records over its API and logs the
request; the investigator's machine holds the identity, asks OpenBao for the shares and restores
the pixels itself. Against a real `serve` (file camera, 2 s recordings) and a real OpenBao."""

import base64
import json
import time

import numpy as np
import pytest
from serve_harness import Running

from gateway.cli import main
from gateway.files import VideoTranscoder, copy_excerpt

pytestmark = pytest.mark.realtime


def _audit(tmp_path):
    return [json.loads(line) for line in (tmp_path / "data" / "vault" / "audit.log").read_text().splitlines()]


def test_an_investigator_unmasks_on_their_own_machine_and_the_gateway_logs_it(camera_clip, tmp_path, capsys,
                                                                               openbao, monkeypatch):
    clip, frames, faces = camera_clip
    with Running(tmp_path, openbao, {"cam": str(clip)}, recording_seconds=2.0) as running:
        running.wait_healthy()
        deadline = time.monotonic() + 90
        while not [e for e in _audit(tmp_path) if e["action"] == "seal"] if (
                tmp_path / "data" / "vault" / "audit.log").exists() else True:
            assert time.monotonic() < deadline, "no recording was sealed"
            time.sleep(0.5)
        recording = next(e for e in _audit(tmp_path) if e["action"] == "seal")["details"]["recording"]
        investigator, viewer = running.people["investigator"], running.people["viewer"]
        monkeypatch.setenv(investigator.variable, investigator.passphrase)
        monkeypatch.setenv(viewer.variable, viewer.passphrase)
        # an officer grants the investigator the camera (unmask is camera-scoped, like feeds)
        assert running.call("PUT", "/api/identities/investigator/cameras", {"cameras": ["cam"]})[0] == 200
        away = tmp_path / "investigator"  # another machine: its own directory, no vault, no key directory
        away.mkdir()
        before = len(openbao.decrypts())
        args = ["unmask", "--gateway", f"http://127.0.0.1:{running.port}", "--camera", "cam", "--recording", recording,
                "--identity", str(investigator.file), "--case", "C-11", "--reason", "remote",
                "--no-watermark", "-o", str(away / "out.mp4")]
        code = main(args)
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "fingerprint" in out and (away / "out.mp4").is_file() and (away / "out.mp4.evidence.json").is_file()
        assert not list(away.glob(".*.part"))  # the downloaded redacted video is gone
        entries = _audit(tmp_path)
        fetched = next(e for e in entries if e["action"] == "fetch-sealed")
        unmasked = next(e for e in entries if e["action"] == "unmask")
        assert fetched["details"]["by"] == "investigator" and unmasked["actor"] == "gateway"
        assert unmasked["details"]["case"] == "C-11" and "investigator" in unmasked["details"]["approvals"]
        # OpenBao was asked once per restored track (and segment), by the investigator's machine
        asked = openbao.decrypts()[before:]
        assert len(asked) == len(unmasked["details"]["tracks"]) >= 1
        assert {json.loads(base64.b64decode(r["data"]["context"]))["track"] for r in asked} == {
            t for _, t in unmasked["details"]["tracks"]}
        # the output restored faces: frames differ from the redacted recording where the faces are
        redacted = [f.image for f in VideoTranscoder(tmp_path / "data" / "recordings" / "cam" / f"{recording}.mp4")
                    .frames()]
        restored = [f.image for f in VideoTranscoder(away / "out.mp4").frames()]
        assert len(restored) == len(redacted)
        assert any(np.abs(a.astype(int) - b.astype(int)).mean() > 0.5 for a, b in zip(redacted, restored))
        # the evidence manifest checks against the gateway's vault
        code = main(["evidence", "verify", str(away / "out.mp4.evidence.json"), "--vault",
                     str(tmp_path / "data" / "vault")])
        assert code == 0, capsys.readouterr().err
        # a viewer may not fetch sealed records: refused, and nothing logged as an unmask
        args[args.index(str(investigator.file))] = str(viewer.file)
        args[-1] = str(away / "viewer.mp4")
        assert main(args) == 2 and "lacks the unmask permission" in capsys.readouterr().err
        assert not (away / "viewer.mp4").exists()
        assert [e["action"] for e in _audit(tmp_path)].count("unmask") == 1
        # every finished recording holds the frames the gateway logged for it; a cut one fails
        verify = ["vault", "verify", "--vault", str(tmp_path / "data" / "vault"), "--recordings",
                  str(tmp_path / "data" / "recordings")]
        assert main(verify) == 0, capsys.readouterr().err
        logged = next(e for e in _audit(tmp_path) if e["action"] == "recorded")["details"]
        path = tmp_path / "data" / "recordings" / "cam" / logged["file"]
        copy_excerpt(path, tmp_path / "cut.mp4", 0.5)
        (tmp_path / "cut.mp4").replace(path)
        assert main(verify) == 1 and f"recording cam/{logged['file']} holds" in capsys.readouterr().err
