"""Key escrow end to end through the command line: redact --vault, unmask, audit, shred.

Real identities, real HPKE/AES-GCM, real images and clips; every refusal must leave no
output behind and the vault exactly as it was.
"""

import hashlib
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from vault_files import key_file

from gateway.cli import main
from gateway.openbao import write_credentials
from gateway.files import VideoTranscoder, read_image
from keys import Grant, KeyDirectory, Sealed, Sealer, VaultRef, VaultStore
from keys.clips import MIN_PSNR, ClipCoder, psnr, restored_psnr
from keys.cosigner import segment_key, share_context
from keys.record import Placement
from keys.vault import SegmentHeader

PEOPLE = {"ivan": ["investigator"], "iris": ["investigator"], "olga": ["privacy-officer"],
          "omar": ["privacy-officer"], "otto": ["privacy-officer"], "vera": ["viewer"]}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module", autouse=True)
def passphrase():
    old = os.environ.get("PRIVACY_GATEWAY_PASSPHRASE")
    os.environ["PRIVACY_GATEWAY_PASSPHRASE"] = "correct horse"
    yield
    if old is None:
        del os.environ["PRIVACY_GATEWAY_PASSPHRASE"]
    else:
        os.environ["PRIVACY_GATEWAY_PASSPHRASE"] = old


@pytest.fixture(scope="module")
def world(tmp_path_factory, data, passphrase, openbao):
    """A key directory with six people (one investigator post-quantum) and three policies,
    the gateway's co-signer the session's OpenBao."""
    root = tmp_path_factory.mktemp("escrow")
    assert main(["keys", "init", str(root / "keys")]) == 0
    write_credentials(root / "keys", openbao.address, openbao.gateway_token, manage_access=True)
    for name, roles in PEOPLE.items():
        extra = ["--post-quantum"] if name == "iris" else []
        args = ["keys", "add-identity", str(root / "keys"), name, *sum((["--role", r] for r in roles), []),
                "--out", str(root / f"{name}.id"), *extra]
        assert main(args) == 0
    policies = {
        "open": "classes: {plate: {enabled: false}}\nunmask: {watermark: optional}\n",
        "lossless": "classes: {plate: {enabled: false}}\nunmask: {watermark: optional}\nstorage: {originals: lossless}\n",
        "strict": "classes: {plate: {enabled: false}}\n",
        "quorum": "classes: {plate: {enabled: false}}\n"
                  "unmask: {face: {roles: [privacy-officer], quorum: 2}, watermark: optional}\n",
    }
    for name, text in policies.items():
        (root / f"{name}.yaml").write_text(text)
    photo = sorted((data / "faces_dlib_examples" / "images").glob("*.jpg"))[0]
    cv2.imwrite(str(root / "group.png"), cv2.imread(str(photo)))
    return root


def redacted_image(world, capsys, policy, name):
    target = world / f"{name}.png"
    if not target.exists():
        code, _, err = run(capsys, "redact", world / "group.png", "-o", target, "--policy", world / f"{policy}.yaml",
                           "--keys", world / "keys", "--vault", world / f"vault-{name}")
        assert code == 0, err
    return target, world / f"vault-{name}"


def snapshot(root):
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def refused(capsys, world, vault, output, *argv, match):
    """Run a command that must fail: one error line, no output, the vault byte for byte as it was."""
    before = snapshot(vault)
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert err.startswith("privacy-gateway: error: ") and match in err, err
    assert not output.exists()
    assert snapshot(vault) == before
    return err


def unmask(world, redacted, vault, output, *extra, who=("ivan",)):
    args = ["unmask", redacted, "--vault", vault, "--keys", world / "keys", "--case", "C-1", "--reason", "test",
            "-o", output, *extra]
    for name in who:
        args += ["--identity", world / f"{name}.id"]
    return args


def audit_entries(vault):
    return [json.loads(line) for line in (vault / "audit.log").read_text().splitlines()]


def test_png_unmask_gives_back_the_original_pixels_exactly(capsys, world, tmp_path):
    redacted, vault = redacted_image(world, capsys, "open", "open")
    original, masked = read_image(world / "group.png"), read_image(redacted)
    assert (original != masked).any()
    for who in (("ivan",), ("iris",)):  # classic and post-quantum investigator
        out = tmp_path / f"{who[0]}.png"
        code, msg, err = run(capsys, *unmask(world, redacted, vault, out, "--no-watermark", who=who))
        assert code == 0, err
        assert np.array_equal(read_image(out), original)
    entry = audit_entries(vault)[-1]
    assert entry["action"] == "unmask" and entry["actor"] == "iris"
    assert entry["details"]["case"] == "C-1" and entry["details"]["watermark"] is False
    code, out, err = run(capsys, "audit", "verify", "--vault", vault, "--keys", world / "keys")
    assert code == 0 and "4 entries" in out, err  # seal, recorded, two unmasks


def test_watermark_names_people_and_case_and_is_required_unless_policy_allows(capsys, world, tmp_path):
    redacted, vault = redacted_image(world, capsys, "strict", "strict")
    out = tmp_path / "out.png"
    refused(capsys, world, vault, out, *unmask(world, redacted, vault, out, "--no-watermark"),
            match="requires the watermark")
    code, _, err = run(capsys, *unmask(world, redacted, vault, out))
    assert code == 0, err
    original, restored = read_image(world / "group.png"), read_image(out)
    height = original.shape[0]
    band = np.any(restored != original, axis=(1, 2))
    assert band[-5:].all() and band[:5].all()  # marked at the bottom and the top
    middle = slice(int(height * 0.25), int(height * 0.75))
    assert np.array_equal(restored[middle], original[middle])  # restored in between
    assert audit_entries(vault)[-1]["details"]["watermark"] is True


def test_viewer_and_a_lone_officer_unmask_nothing_and_two_officers_do(capsys, world, tmp_path):
    redacted, vault = redacted_image(world, capsys, "quorum", "quorum")
    out = tmp_path / "out.png"
    for who in (("vera",), ("olga",), ("ivan",), ("vera", "omar")):
        refused(capsys, world, vault, out, *unmask(world, redacted, vault, out, who=who),
                match="may not unmask face regions")
    code, _, err = run(capsys, *unmask(world, redacted, vault, out, "--no-watermark", who=("otto", "olga")))
    assert code == 0, err
    assert np.array_equal(read_image(out), read_image(world / "group.png"))
    entry = audit_entries(vault)[-1]
    assert sorted(entry["details"]["approvals"]) == ["olga", "otto"]


def test_one_track_restores_that_region_and_nothing_of_the_others(capsys, world, tmp_path):
    redacted, vault = redacted_image(world, capsys, "open", "open")
    code, listing, err = run(capsys, "vault", "tracks", redacted, "--vault", vault)
    assert code == 0, err
    tracks = [line.split() for line in listing.splitlines()[1:]]
    boxes = {int(t[1]): json.loads(" ".join(t[t.index("box") + 1:])) for t in tracks}
    assert len(boxes) >= 5
    chosen = sorted(boxes)[1]
    out = tmp_path / "one.png"
    code, _, err = run(capsys, *unmask(world, redacted, vault, out, "--no-watermark", "--track", chosen))
    assert code == 0, err
    original, masked, restored = read_image(world / "group.png"), read_image(redacted), read_image(out)
    x, y, w, h = boxes[chosen]
    inside = np.zeros(original.shape[:2], dtype=bool)
    inside[y : y + h, x : x + w] = True
    for track, (ox, oy, ow, oh) in boxes.items():
        if track != chosen:
            inside[oy : oy + oh, ox : ox + ow] = False  # an overlap stays redacted
    assert np.array_equal(restored[inside], original[inside])
    assert np.array_equal(restored[~inside], masked[~inside])
    assert audit_entries(vault)[-1]["details"]["tracks"] == [["face", chosen]]


def test_pointing_at_a_subject_restores_its_track_and_audits_the_track_it_resolved_to(capsys, world, tmp_path):
    redacted, vault = redacted_image(world, capsys, "open", "open")
    code, listing, err = run(capsys, "vault", "tracks", redacted, "--vault", vault)
    tracks = [line.split() for line in listing.splitlines()[1:]]
    boxes = {int(t[1]): json.loads(" ".join(t[t.index("box") + 1:])) for t in tracks}

    def alone(track):  # a pixel of the track's box that no other box covers
        x, y, w, h = boxes[track]
        for px in range(x, x + w):
            for py in range(y, y + h):
                if not any(ox <= px < ox + ow and oy <= py < oy + oh
                           for t, (ox, oy, ow, oh) in boxes.items() if t != track):
                    return px, py
        return None

    chosen = next(t for t in sorted(boxes) if alone(t))
    px, py = alone(chosen)
    out, by_track = tmp_path / "point.png", tmp_path / "track.png"
    code, said, err = run(capsys, *unmask(world, redacted, vault, out, "--no-watermark", "--at", "0", "--point", f"{px},{py}"))
    assert code == 0, err
    assert f"is face track {chosen}" in said
    assert audit_entries(vault)[-1]["details"]["tracks"] == [["face", chosen]]
    assert run(capsys, *unmask(world, redacted, vault, by_track, "--no-watermark", "--track", chosen))[0] == 0
    assert np.array_equal(read_image(out), read_image(by_track))  # the same as naming the track
    nowhere = tmp_path / "none.png"
    refused(capsys, world, vault, nowhere, *unmask(world, redacted, vault, nowhere, "--at", "0", "--point", "0,0"),
            match="no sealed region covers (0, 0) at 0.00 s")
    refused(capsys, world, vault, nowhere, *unmask(world, redacted, vault, nowhere, "--point", f"{px},{py}"),
            match="--at and --point go together")


def test_wrong_passphrase_and_unknown_identity_are_refused_opaquely(capsys, world, tmp_path, monkeypatch):
    redacted, vault = redacted_image(world, capsys, "open", "open")
    out = tmp_path / "out.png"
    monkeypatch.setenv("PRIVACY_GATEWAY_PASSPHRASE", "wrong")
    err = refused(capsys, world, vault, out, *unmask(world, redacted, vault, out), match="wrong passphrase or not a valid")
    assert "InvalidTag" not in err
    monkeypatch.setenv("PRIVACY_GATEWAY_PASSPHRASE", "correct horse")
    stranger = tmp_path / "keys"
    assert main(["keys", "init", str(stranger)]) == 0
    assert main(["keys", "add-identity", str(stranger), "ivan", "--role", "investigator", "--out", str(tmp_path / "x.id")]) == 0
    args = unmask(world, redacted, vault, out)
    args[args.index(world / "ivan.id")] = tmp_path / "x.id"
    refused(capsys, world, vault, out, *args, match="'ivan' is not in this vault's key directory")
    args[args.index(world / "keys")] = stranger
    refused(capsys, world, vault, out, *args, match="sealed by another gateway key")


def test_audit_log_that_cannot_be_written_refuses_the_unmask(capsys, world, tmp_path):
    redacted, pristine = redacted_image(world, capsys, "open", "open")
    vault = tmp_path / "vault"
    shutil.copytree(pristine, vault)
    (vault / "audit.log").unlink()
    (vault / "audit.log").symlink_to(tmp_path / "gone" / "audit.log")  # a log on storage that vanished
    out = tmp_path / "out.png"
    # refused when the log is checked against the co-signer's checkpoint, before anything is appended
    refused(capsys, world, vault, out, *unmask(world, redacted, vault, out), match="cannot read the audit log")


def test_redact_refuses_a_grant_nobody_can_meet_before_doing_any_work(capsys, world, tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("unmask: {face: {roles: [privacy-officer], quorum: 4}}\n")
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "redact", world / "group.png", "-o", out, "--policy", policy,
                       "--keys", world / "keys", "--vault", tmp_path / "vault")
    assert code == 2 and "unmask.face: roles privacy-officer have 3 identities; a quorum of 4 cannot be met" in err
    assert not out.exists() and not list((tmp_path / "vault").rglob("*.pgv"))
    code, _, err = run(capsys, "redact", world / "group.png", "-o", out, "--keys", world / "keys")
    assert code == 2 and "--keys and --vault go together" in err


# --- video -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sealed_clip(world, short_clip):
    """The short clip redacted with sealing, 0.5 s per segment (several segments)."""
    return _seal_clip(world, short_clip, "open")


def _seal_clip(world, clip, policy, name=None):
    target = world / f"clip-{name or policy}.mp4"
    vault = world / f"vault-clip-{name or policy}"
    if target.exists():  # sealed once per module: tests that alter a vault work on a copy
        return target, vault
    code = main(["redact", str(clip), "-o", str(target), "--policy", str(world / f"{policy}.yaml"),
                 "--keys", str(world / "keys"), "--vault", str(vault), "--camera", "stage", "--segment-seconds", "0.5"])
    assert code == 0
    return target, vault


def sealed_boxes(chain) -> dict[int, list[tuple[int, int, int, int]]]:
    """frame -> its sealed boxes, from the plaintext record headers of a camera's chain"""
    boxes: dict[int, list] = {}
    for segment in chain:
        for record in segment.records:
            for placement in record.header.placements:
                boxes.setdefault(placement.frame, []).append(placement.box)
    return boxes


@pytest.mark.parametrize("mode", ["high", "lossless"])
def test_video_unmask_to_frames_restores_sealed_pixels_in_the_range(capsys, world, tmp_path, short_clip, mode):
    """``high``: every restored region within 45 dB luma PSNR of the frame the gateway decoded (less
    where other regions overlap it: :func:`keys.clips.restored_psnr`); ``lossless``: bit-exact."""
    redacted, vault = _seal_clip(world, short_clip, "open" if mode == "high" else "lossless")
    chain = list(VaultStore.open(vault).verify_chain("stage"))
    assert len(chain) >= 3 and sum(len(s.records) for s in chain) > 0
    out = tmp_path / "frames"
    code, _, err = run(capsys, *unmask(world, redacted, vault, out, "--no-watermark", "--from", "0.5", "--to", "1.5"))
    assert code == 0, err
    originals = {f.index: f for f in VideoTranscoder(short_clip).frames()}
    written = sorted(out.iterdir())
    indices = [int(p.stem) for p in written]
    assert indices == [i for i, f in originals.items() if 0.5 <= round(f.time * 1e6) / 1e6 <= 1.5]
    restored_any, alone, worst = 0, 0, float("inf")
    records = sealed_boxes(chain)
    for path in written:
        index = int(path.stem)
        image, source = read_image(path), originals[index].image
        boxes = records.get(index, [])
        for at, (x, y, w, h) in enumerate(boxes):  # every sealed region of the frame is restored
            back, original = image[y : y + h, x : x + w], source[y : y + h, x : x + w]
            if mode == "lossless":
                assert np.array_equal(back, original)
            # a box that another overlaps shows that one's crop there (the crowd's faces overlap)
            bound = restored_psnr((x, y, w, h), boxes[:at] + boxes[at + 1 :])
            worst = min(worst, psnr(original, back) - bound)
            alone += bound == MIN_PSNR
            restored_any += 1
    assert restored_any >= alone > 0  # boxes alone are held to the full bound
    assert worst >= 0 and (mode == "lossless") == (worst == float("inf"))


def test_video_unmask_to_video_keeps_every_frame_and_carries_the_watermark(capsys, world, tmp_path, sealed_clip):
    redacted, vault = sealed_clip
    out = tmp_path / "out.mp4"
    code, _, err = run(capsys, *unmask(world, redacted, vault, out))
    assert code == 0, err
    frames = list(VideoTranscoder(out).frames())
    assert len(frames) == len(list(VideoTranscoder(redacted).frames()))
    bottom = frames[0].image[-4:]
    assert bottom.mean() < 90  # the darkened band with white text


TAMPER = {
    "flipped byte in a segment": (lambda v: _flip(v / "segments" / "stage" / "00000002.pgv"), "contents altered"),
    "segment deleted": (lambda v: (v / "segments" / "stage" / "00000002.pgv").unlink(), "out of sequence"),
    "last segment deleted": (lambda v: sorted((v / "segments" / "stage").glob("*.pgv"))[-1].unlink(), "is missing"),
    "key files swapped": (lambda v: _swap(key_file(v / "keys" / "stage", 1), key_file(v / "keys" / "stage", 2)),
                          "does not belong to its segment"),
    "audit entry edited": (lambda v: _edit_log(v / "audit.log"), "audit log entry 1"),
    "segment truncated": (lambda v: _truncate(v / "segments" / "stage" / "00000002.pgv"), "truncated"),
    "segments reordered": (lambda v: _swap(v / "segments" / "stage" / "00000001.pgv",
                                           v / "segments" / "stage" / "00000002.pgv"), "out of sequence"),
}


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the records
    path.write_bytes(bytes(data))


def _swap(a, b):
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)


def _edit_log(path):
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace('"output":"written"', '"output":"failed"')
    path.write_text("".join(lines))


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampered_vault_is_refused_with_one_message_and_left_as_it_is(capsys, world, tmp_path, sealed_clip, case):
    redacted, pristine = sealed_clip
    vault = tmp_path / "vault"
    shutil.copytree(pristine, vault)
    tamper, message = TAMPER[case]
    tamper(vault)
    out = tmp_path / "out"
    err = refused(capsys, world, vault, out, *unmask(world, redacted, vault, out), match=message)
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "vault", "verify", "--vault", vault)
    assert code == 1 and message in err


def test_audit_verify_names_the_first_broken_entry(capsys, world, tmp_path, sealed_clip):
    _, pristine = sealed_clip
    vault = tmp_path / "vault"
    shutil.copytree(pristine, vault)
    code, out, err = run(capsys, "audit", "verify", "--vault", vault)
    assert code == 0 and "compare out of band" in out, err
    _edit_log(vault / "audit.log")
    code, _, err = run(capsys, "audit", "verify", "--vault", vault)
    assert code == 1 and "audit log entry 1 (line 1): signature does not verify" in err


def test_shredded_segments_cannot_be_unmasked_by_anyone(capsys, world, tmp_path, short_clip):
    # a recording of its own: shredding destroys the co-signer's keys, which a copy of a vault shares
    redacted, vault = _seal_clip(world, short_clip, "open", "shred")
    code, out, err = run(capsys, "vault", "shred", "--vault", vault, "--keys", world / "keys", "--before", "2000-01-01")
    assert code == 0 and "nothing to shred" in out, err
    code, out, err = run(capsys, "vault", "shred", "--vault", vault, "--keys", world / "keys", "--expired")
    assert code == 0 and "nothing to shred" in out, err  # the policy sets no retention_days
    segments = len(list((vault / "keys" / "stage").glob("*.keys")))
    code, out, err = run(capsys, "vault", "shred", "--vault", vault, "--keys", world / "keys", "--before", "2999-01-01")
    assert code == 0 and f"shredded the keys of {segments} segments" in out, err
    assert not list((vault / "keys" / "stage").glob("*.keys"))
    entry = audit_entries(vault)[-1]
    assert entry["action"] == "shred" and entry["actor"] == "gateway" and len(entry["details"]["segments"]) == segments
    out_dir = tmp_path / "out"
    refused(capsys, world, vault, out_dir, *unmask(world, redacted, vault, out_dir), match="crypto-shredded")
    code, _, err = run(capsys, "vault", "verify", "--vault", vault)
    assert code == 0, err  # the records themselves stay verifiable


def test_crashed_segment_is_recovered_by_the_next_sealer_and_still_unmasks(world, tmp_path, sealing_store):
    directory = KeyDirectory.open(world / "keys")
    store = sealing_store(tmp_path / "vault", directory)
    grants = {"face": Grant(("investigator",))}
    pixels = np.full((4, 4, 3), 7, dtype=np.uint8)
    with Sealer(store, directory.signer, "door", {"version": 3}, grants, directory.identities) as sealer:
        sealer.add(0, 0, [Sealed(1, "face", (0, 0, 4, 4), pixels)])
    ref = sealer.ref
    header = SegmentHeader("door", 2, 3, store.store_policy({"version": 3}), "crashed", "2026-11-22T00:00:00+00:00",
                           list(store.verify_chain("door"))[-1].digest, vault=store.vault_id)
    writer = store.open_segment(header, grants, directory.identities, directory.signer)
    codec, size, coded = ClipCoder().encode([pixels])
    share = os.urandom(32)
    (sealed_share,) = store.cosigner.seal_shares(segment_key(store.vault_id, "door", "face", 2),
                                                 [(share_context("door", 2, "face", 4), share)])
    writer.add_clip(4, "face", (Placement(5, 200_000, (0, 0, 4, 4)),), codec, size, coded, (share, sealed_share))
    writer.abort()  # the process died here
    with Sealer(store, directory.signer, "door", {"version": 3}, grants, directory.identities) as again:
        again.add(0, 0, [])
    chain = list(store.verify_chain("door"))
    assert [s.number for s in chain] == [1, 2, 3] and chain[1].recovered and len(chain[1].records) == 1
    actions = [e["action"] for e in audit_entries(tmp_path / "vault")]
    assert actions == ["seal", "recover-segment", "seal"]
    assert ref.recording != again.ref.recording
    assert VaultRef.decode(ref.encode()) == ref


def test_unmask_writes_a_signed_evidence_manifest_that_evidence_verify_checks(capsys, world, tmp_path):
    # a vault of its own: a copy of another test's would be an older copy to the co-signer's checkpoint
    redacted, vault = redacted_image(world, capsys, "quorum", "quorum-evidence")
    out = tmp_path / "evidence.png"
    code, _, err = run(capsys, *unmask(world, redacted, vault, out, "--no-watermark", who=("olga", "omar")))
    assert code == 0, err
    manifest = tmp_path / "evidence.png.evidence.json"
    document = json.loads(manifest.read_text())
    assert sorted(document["signatures"]) == ["olga", "omar"] and document["manifest"]["case"] == "C-1"
    code, text, err = run(capsys, "evidence", "verify", manifest, "--vault", vault, "--keys", world / "keys")
    assert code == 0 and "signed by olga, omar" in text and "matches" in text, err
    good = out.read_bytes()
    out.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    code, _, err = run(capsys, "evidence", "verify", manifest)
    assert code == 1 and "evidence.png: altered" in err
    out.write_bytes(good)
    forged = json.loads(manifest.read_text())
    forged["manifest"]["reason"] = "something else"
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    code, _, err = run(capsys, "evidence", "verify", tmp_path / "forged.json")
    assert code == 1 and "signature of the manifest does not verify" in err
    # a manifest whose audit entry is not the vault's: another vault's log
    other = redacted_image(world, capsys, "quorum", "quorum-other")[1]
    code, _, err = run(capsys, "evidence", "verify", manifest, "--vault", other)
    assert code == 1 and "no unmask entry" in err


def test_a_quorum_on_two_machines_approves_a_request_file_in_turn(capsys, world, tmp_path):
    """olga asks (omar's approval needed, quorum 2): omar, on his machine, approves and peels his layer;
    only then can olga unmask, and only she ever holds the data key. The entry carries both approvals."""
    redacted, vault = redacted_image(world, capsys, "quorum", "quorum-request")
    out, request = tmp_path / "restored.png", tmp_path / "request.json"
    base = ["unmask", redacted, "--vault", vault, "--keys", world / "keys", "--case", "C-5", "--reason", "quorum",
            "-o", out, "--no-watermark"]
    logged = len(audit_entries(vault))
    code, text, err = run(capsys, *base, "--identity", world / "olga.id", "--with", "omar", "--request-out", request)
    assert code == 0 and "omar approve" in text, err
    assert not out.exists() and len(audit_entries(vault)) == logged  # nothing logged yet
    code, _, err = run(capsys, "unmask", "--request", request, "--identity", world / "olga.id")
    assert code == 2 and "still needs the approval of omar" in err
    code, _, err = run(capsys, "unmask", "approve", request, "--identity", world / "otto.id")
    assert code == 2 and "not one of the people" in err  # otto is an officer, but not in this request
    code, text, err = run(capsys, "unmask", "approve", request, "--identity", world / "omar.id")
    assert code == 0 and "every approval is in" in text, err
    layer = json.loads(request.read_text())["layers"][0]
    assert layer["names"] == ["olga", "omar"] and layer["peeled"] == 1  # down to olga's layer
    # a request file edited after omar approved it is refused: his approval no longer verifies
    forged = json.loads(request.read_text())
    forged["request"]["reason"] = "something else"
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    code, _, err = run(capsys, "unmask", "--request", tmp_path / "forged.json", "--identity", world / "olga.id")
    assert code == 2 and "omar's approval does not verify" in err and not out.exists()
    code, text, err = run(capsys, "unmask", "--request", request, "--identity", world / "olga.id")
    assert code == 0, err
    assert np.array_equal(read_image(out), read_image(world / "group.png"))
    entry = audit_entries(vault)[-1]
    assert entry["action"] == "unmask" and sorted(entry["details"]["approvals"]) == ["olga", "omar"]
    code, _, err = run(capsys, "audit", "verify", "--vault", vault, "--keys", world / "keys")
    assert code == 0, err


def test_a_video_cut_after_redaction_is_refused_by_its_logged_frame_count(capsys, world, tmp_path, sealed_clip):
    """redact --vault logs how many frames its output holds; an unmask of a cut copy is refused even
    when the frames it selects are all still there."""
    from gateway.files import copy_excerpt, count_frames, video_comment

    redacted, vault = sealed_clip
    entry = next(e for e in audit_entries(vault) if e["action"] == "recorded")
    assert entry["details"]["file"] == redacted.name and entry["details"]["frames"] == count_frames(redacted)
    excerpt = copy_excerpt(redacted, tmp_path / "excerpt.mp4", 1.0)
    cut = tmp_path / "cut.mp4"  # the first second, with the redacted file's vault reference kept
    VideoTranscoder(excerpt, cut, video_comment(redacted)).run(lambda item: [] if item is None else [item])
    assert count_frames(cut) < entry["details"]["frames"]
    out = tmp_path / "frames"
    refused(capsys, world, vault, out, *unmask(world, cut, vault, out, "--to", "0.5"),
            match="the gateway logged")
