"""The co-signer (OpenBao) in the loop: what a copy of the files and one identity can no longer do,
what each refusal looks like, and the embedded OpenBao of the default configuration.

Everything runs against real ``bao`` servers: the session's dev-mode one (conftest.py) and, for the
embedded default and its outages, a production-mode one with Raft storage started here.
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import time

import cv2
import httpx
import numpy as np
import pytest
from ports import free_ports
from vault_files import key_file

from gateway.cli import main
from gateway.config import load_config
from gateway.files import read_image
from gateway.live.cosigning import open_cosigner, unseal_key_file
from gateway.openbao import CREDENTIALS, find_binary, write_credentials
from keys import (
    CoSigner,
    CoSignerRefused,
    CoSignerUnavailable,
    KeyDirectory,
    PrivateIdentity,
    RecordError,
    Sealed,
    Sealer,
    Selection,
    Unmask,
    UnmaskError,
    VaultError,
    VaultStore,
    revoke_access,
)
from keys.cosigner import segment_key, share_context
from keys.record import open_record, shared_track_key, track_key
from keys.vault import key_context
from keys.wrap import Grant, unwrap_key

GRANTS = {"face": Grant(("investigator",)), "plate": Grant(("privacy-officer",))}
PASSPHRASE = "correct horse battery"


@pytest.fixture()
def sealed(tmp_path, sealing_store):
    """Camera lobby, one segment: faces 1 and 2 (investigator ivan) and plate 3 (officer olga), lossless."""
    directory = KeyDirectory.init(tmp_path / "keys")
    ivan = PrivateIdentity.generate("ivan", ["investigator"])
    olga = PrivateIdentity.generate("olga", ["privacy-officer"])
    directory.add(ivan.public)
    directory.add(olga.public)
    store = sealing_store(tmp_path / "vault", directory)
    image = np.random.default_rng(5).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    boxes = {1: ("face", (10, 10, 20, 20)), 2: ("face", (40, 10, 20, 20)), 3: ("plate", (50, 40, 20, 10))}
    with Sealer(store, directory.signer, "lobby", {"version": 1, "storage": {"originals": "lossless"}}, GRANTS,
                directory.identities) as sealer:
        for frame in range(3):
            sealer.add(frame, frame * 100_000, [Sealed(t, cls, b, image[b[1]:b[1] + b[3], b[0]:b[0] + b[2]])
                                                for t, (cls, b) in boxes.items()])
    return store, sealer.ref, image, ivan, olga, directory


def test_one_identity_and_a_copy_of_the_files_decrypt_nothing(sealed, tmp_path, openbao):
    """The attack of issue 13: an investigator's identity file and a copy of the vault, and a short script
    using the library. The data key unwraps (HPKE, as before), but no track key follows from it alone."""
    _, _, image, ivan, _, _ = sealed
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "vault", copy)
    reader = VaultStore.open(copy)
    (segment,) = reader.verify_chain("lobby")
    data_key = unwrap_key(reader.wraps("lobby", segment)["face"], [ivan], key_context("lobby", 1, "face"))
    faces = [r for r in segment.records if r.header.cls == "face"]
    assert faces and all(r.header.version == 3 for r in faces)
    for record in faces:
        h = record.header
        for key in (track_key(data_key, "lobby", 1, h.track),  # the old derivation
                    shared_track_key(data_key, os.urandom(32), "lobby", 1, "face", h.track),  # a guessed share
                    shared_track_key(data_key, bytes(32), "lobby", 1, "face", h.track)):
            with pytest.raises(RecordError):
                open_record(key, record)
    # the share is OpenBao's to give: not without a login, not for a class ivan's grant does not name
    cosigner = CoSigner(openbao.address)
    face, plate = faces[0].header, next(r.header for r in segment.records if r.header.cls == "plate")
    with pytest.raises(CoSignerRefused):
        cosigner.open_share("", segment_key(reader.vault_id, "lobby", "face", 1),
                            share_context("lobby", 1, "face", face.track), face.share)
    token = cosigner.login(ivan)
    with pytest.raises(CoSignerRefused):
        cosigner.open_share(token, segment_key(reader.vault_id, "lobby", "plate", 1),
                            share_context("lobby", 1, "plate", plate.track), plate.share)
    # nor a share under another track's context: the derived key differs, the decrypt fails
    with pytest.raises(CoSignerRefused):
        cosigner.open_share(token, segment_key(reader.vault_id, "lobby", "face", 1),
                            share_context("lobby", 1, "face", face.track + 1), face.share)
    # the one legitimate path: ivan's own face track, asked for and logged by OpenBao
    share = cosigner.open_share(token, segment_key(reader.vault_id, "lobby", "face", 1),
                                share_context("lobby", 1, "face", face.track), face.share)
    x, y, w, h = faces[0].header.placements[0].box
    restored = open_record(shared_track_key(data_key, share, "lobby", 1, "face", face.track), faces[0])
    assert np.array_equal(restored[0], image[y:y + h, x:x + w])


def test_new_tracks_share_one_cosigner_request_and_each_still_unmasks(tmp_path, sealing_store, monkeypatch):
    """The tracker numbers tracks in turn: the request for a new track's share seals the next ids' too,
    so tracks that appear later need no request of their own (the live walkway began a track about
    every fifth of a second, a request each); every track keeps its own share, and unmasks."""
    directory = KeyDirectory.init(tmp_path / "keys")
    ivan = PrivateIdentity.generate("ivan", ["investigator"])
    directory.add(ivan.public)
    store = sealing_store(tmp_path / "vault", directory)
    requests = []
    seal_shares = store.cosigner.seal_shares

    def counted(key, items):
        requests.append(list(items))
        return seal_shares(key, requests[-1])

    monkeypatch.setattr(store.cosigner, "seal_shares", counted)
    crops = {track: np.full((8, 8, 3), 20 * track, np.uint8) for track in range(1, 9)}
    with Sealer(store, directory.signer, "lobby", {"version": 1}, {"face": GRANTS["face"]}, directory.identities) as sealer:
        for frame in range(80):  # track 1 for 10 frames, then track 2, ...: each clip ends on its own
            track = 1 + frame // 10
            sealer.add(frame, frame * 100_000, [Sealed(track, "face", (0, 0, 8, 8), crops[track])])
    assert len(requests) == 1 and len(requests[0]) > 8
    (segment,) = VaultStore.open(tmp_path / "vault").verify_chain("lobby")
    shares = {record.header.track: record.header.share for record in segment.records}
    assert sorted(shares) == list(crops) and len(set(shares.values())) == len(crops)
    job = Unmask(VaultStore.open(tmp_path / "vault"), sealer.ref, Selection(tracks=frozenset({7})), [ivan])
    job.authorize("C-9", "a late track", "memory", True)
    image = np.zeros((8, 8, 3), np.uint8)
    assert job.restore(60, 6.0, image, 50_000) == 1 and np.array_equal(image, crops[7])


def test_a_login_or_share_refused_by_openbao_is_audited_and_opaque(sealed, openbao, tmp_path):
    store, ref, _, ivan, _, directory = sealed
    revoke_access(CoSigner(openbao.address, openbao.root), ivan.public)  # ivan's OpenBao access ends
    job = Unmask(VaultStore.open(store.location), ref, Selection(tracks=frozenset({1})), [ivan])
    with pytest.raises(UnmaskError, match="^unmask refused$"):
        job.authorize("C-7", "suspect", "memory", True)
    log = [json.loads(line) for line in (tmp_path / "vault" / "audit.log").read_text().splitlines()]
    assert [e["action"] for e in log] == ["seal", "unmask-refused"]
    assert "refused the login of ivan" in log[-1]["details"]["refused"] and log[-1]["details"]["case"] == "C-7"
    # the next seal of the camera restores ivan's access (this gateway maintains it)
    Sealer(store, directory.signer, "lobby", {"version": 1}, GRANTS, directory.identities).close()
    job = Unmask(VaultStore.open(store.location), ref, Selection(tracks=frozenset({1})), [ivan])
    job.authorize("C-7", "suspect", "memory", True)
    assert job.shares_asked == 1


def test_each_identity_logs_in_only_with_its_own_key(sealed, openbao):
    """One JWT mount per identity, whose only key is that identity's: olga's key cannot sign for ivan."""
    _, _, _, ivan, olga, _ = sealed
    impostor = PrivateIdentity(ivan.public, olga.hpke, olga.signing)  # ivan's name, olga's keys
    with pytest.raises(CoSignerRefused):
        CoSigner(openbao.address).login(impostor)


# --- the embedded default and its outages ------------------------------------------------------

@pytest.fixture(scope="module")
def embedded(tmp_path_factory, data):
    """A data directory whose gateway runs the embedded OpenBao (the default configuration's escrow),
    an investigator in its key directory and a sealed photo; the OpenBao server is left stopped."""
    root = tmp_path_factory.mktemp("embedded")
    port, _ = free_ports(2, consecutive=True)  # OpenBao's API and Raft cluster ports
    (root / "gateway.yaml").write_text(json.dumps({
        "cameras": {"demo": {"source": str(data / "videos" / "short_hamilton_clip.mp4")}},
        "storage": {"data_dir": "data"}, "escrow": {"port": port}}))
    config, _ = load_config(root / "gateway.yaml")
    KeyDirectory.init(config.keys_dir)
    os.environ["PRIVACY_GATEWAY_PASSPHRASE"] = PASSPHRASE
    assert main(["keys", "add-identity", str(config.keys_dir), "ivan", "--role", "investigator",
                 "--out", str(root / "ivan.id")]) == 0
    lines, captured = [], {}
    from gateway.live import cosigning

    real_set_up = cosigning.set_up

    def set_up(admin, embedded):
        captured["root"] = admin.token
        return real_set_up(admin, embedded)

    cosigning.set_up = set_up
    try:
        cosigner, manages_access, local = open_cosigner(config, lines.append)
    finally:
        cosigning.set_up = real_set_up
    photo = sorted((data / "faces_dlib_examples" / "images").glob("*.jpg"))[0]
    cv2.imwrite(str(root / "group.png"), cv2.imread(str(photo)))
    (root / "open.yaml").write_text("classes: {plate: {enabled: false}}\nunmask: {watermark: optional}\n")
    try:
        assert main(["redact", str(root / "group.png"), "-o", str(root / "redacted.png"), "--keys",
                     str(config.keys_dir), "--vault", str(config.storage.data_dir / "vault"),
                     "--policy", str(root / "open.yaml")]) == 0
        yield {"root": root, "config": config, "local": local, "lines": lines, "cosigner": cosigner,
               "manages_access": manages_access, "captured_root": captured["root"]}
    finally:
        local.stop()
        os.environ.pop("PRIVACY_GATEWAY_PASSPHRASE", None)


def test_the_embedded_openbao_is_set_up_once_and_its_root_token_revoked(embedded):
    config, local = embedded["config"], embedded["local"]
    data = config.storage.data_dir
    key_file = unseal_key_file(data)
    assert key_file.parent == data.resolve().parent and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((config.keys_dir / CREDENTIALS).stat().st_mode) == 0o600
    assert embedded["manages_access"] and any(str(key_file) in line for line in embedded["lines"])
    assert any(key_file.read_text().strip() in line for line in embedded["lines"])  # printed once, at set-up
    root = embedded["captured_root"]
    assert httpx.get(f"{local.address}/v1/auth/token/lookup-self", headers={"X-Vault-Token": root}).status_code == 403
    assert root not in "".join(p.read_text(errors="replace") for p in data.rglob("*") if p.is_file()
                               and p.stat().st_size < 1 << 20)
    # the gateway's token seals; it cannot decrypt
    me = httpx.get(f"{local.address}/v1/auth/token/lookup-self",
                   headers={"X-Vault-Token": embedded["cosigner"].token}).json()["data"]
    assert sorted(me["policies"]) == ["pg-access", "pg-gateway"]
    reader = VaultStore.open(data / "vault")
    (segment,) = reader.verify_chain(reader.cameras()[0])
    record = segment.records[0].header
    with pytest.raises(CoSignerRefused):
        embedded["cosigner"].open_share(embedded["cosigner"].token, segment_key(reader.vault_id, record.camera,
                                        record.cls, 1), share_context(record.camera, 1, record.cls, record.track),
                                        record.share)


def _unmask(embedded, output):
    root, config = embedded["root"], embedded["config"]
    return ["unmask", str(root / "redacted.png"), "--vault", str(config.storage.data_dir / "vault"), "--keys",
            str(config.keys_dir), "--identity", str(root / "ivan.id"), "--case", "C-1", "--reason", "test",
            "--no-watermark", "-o", str(output)]


def _audit_lines(embedded) -> int:
    return len((embedded["config"].storage.data_dir / "vault" / "audit.log").read_text().splitlines())


def _refused(capsys, embedded, output, match):
    before = _audit_lines(embedded)
    code = main(_unmask(embedded, output))
    err = capsys.readouterr().err
    assert code == 2 and match in err, err
    assert not output.exists() and _audit_lines(embedded) == before


def test_unmask_refuses_while_openbao_is_down_sealed_or_cannot_audit_and_works_once_it_is_back(
        embedded, tmp_path, capsys):
    local, config = embedded["local"], embedded["config"]
    original = read_image(embedded["root"] / "group.png")
    local.stop()
    _refused(capsys, embedded, tmp_path / "down.png", "does not answer")

    # sealed: the server runs, nobody unsealed it
    process = subprocess.Popen([str(find_binary()), "server", f"-config={local.directory / 'server.hcl'}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{local.address}/v1/sys/health", timeout=1).status_code == 503:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        _refused(capsys, embedded, tmp_path / "sealed.png", "is sealed")
        key = unseal_key_file(config.storage.data_dir).read_text().strip()
        assert httpx.put(f"{local.address}/v1/sys/unseal", json={"key": key}).status_code == 200
        while httpx.get(f"{local.address}/v1/sys/health").status_code != 200:
            time.sleep(0.1)

        # its audit device cannot write: OpenBao refuses to answer what it cannot log
        audit = local.audit_log
        audit.rename(audit.with_suffix(".kept"))
        audit.mkdir()
        process.send_signal(signal.SIGHUP)  # the file device reopens its path, a directory now
        time.sleep(1.0)
        _refused(capsys, embedded, tmp_path / "no-audit.png", "cannot write its audit log")
        audit.rmdir()
        process.send_signal(signal.SIGHUP)
        time.sleep(1.0)

        out = tmp_path / "back.png"
        assert main(_unmask(embedded, out)) == 0, capsys.readouterr().err
        assert np.array_equal(read_image(out), original)
    finally:
        process.terminate()
        process.wait(15)


def test_a_restart_unseals_from_the_key_file_and_refuses_without_it(embedded):
    config = embedded["config"]
    key_file = unseal_key_file(config.storage.data_dir)
    lines = []
    cosigner, _, again = open_cosigner(config, lines.append)
    try:
        assert lines == []  # set up once only
        cosigner.check()
    finally:
        again.stop()
    moved = key_file.with_name("moved-away.key")
    key_file.rename(moved)
    try:
        from gateway.openbao import OpenBaoError

        with pytest.raises(OpenBaoError, match="sealed"):
            open_cosigner(config, lines.append)
    finally:
        moved.rename(key_file)


def test_sealing_without_credentials_says_what_is_missing(tmp_path, capsys):
    directory = KeyDirectory.init(tmp_path / "keys")
    directory.add(PrivateIdentity.generate("ivan", ["investigator"]).public)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    code = main(["redact", str(image), "-o", str(tmp_path / "b.png"), "--keys", str(tmp_path / "keys"), "--vault",
                 str(tmp_path / "vault")])
    assert code == 2 and f"{tmp_path / 'keys' / CREDENTIALS} is missing" in capsys.readouterr().err
    write_credentials(tmp_path / "keys", "http://127.0.0.1:9", "token")  # nothing listens on port 9
    code = main(["redact", str(image), "-o", str(tmp_path / "b.png"), "--keys", str(tmp_path / "keys"), "--vault",
                 str(tmp_path / "vault")])
    assert code == 2 and "does not answer" in capsys.readouterr().err and not (tmp_path / "b.png").exists()


def test_an_external_openbao_connected_by_an_operator_and_access_kept_by_an_officer(tmp_path, capsys, openbao,
                                                                                    monkeypatch, data):
    """`escrow connect` without --manage-access: the gateway's token seals and nothing else, so nobody
    may unmask until an officer runs `escrow sync-access`; then exactly the granted identity may."""
    monkeypatch.setenv("PRIVACY_GATEWAY_PASSPHRASE", PASSPHRASE)
    keys = tmp_path / "keys"
    assert main(["keys", "init", str(keys)]) == 0
    assert main(["keys", "add-identity", str(keys), "ivan", "--role", "investigator", "--out",
                 str(tmp_path / "ivan.id")]) == 0
    admin = tmp_path / "admin.token"
    admin.write_text(openbao.root + "\n")
    assert main(["escrow", "connect", str(keys), "--address", openbao.address, "--admin-token-file", str(admin)]) == 0
    credentials = json.loads((keys / CREDENTIALS).read_text())
    assert credentials["manage_access"] is False and credentials["token"] != openbao.root
    policies = httpx.get(f"{openbao.address}/v1/auth/token/lookup-self",
                         headers={"X-Vault-Token": credentials["token"]}).json()["data"]["policies"]
    assert policies == ["pg-gateway"]
    photo = sorted((data / "faces_dlib_examples" / "images").glob("*.jpg"))[0]  # faces the detector finds
    cv2.imwrite(str(tmp_path / "a.png"), cv2.imread(str(photo)))
    vault = tmp_path / "vault"
    assert main(["redact", str(tmp_path / "a.png"), "-o", str(tmp_path / "b.png"), "--keys", str(keys), "--vault",
                 str(vault)]) == 0
    capsys.readouterr()
    args = ["unmask", str(tmp_path / "b.png"), "--vault", str(vault), "--keys", str(keys), "--identity",
            str(tmp_path / "ivan.id"), "--case", "C-3", "--reason", "test", "-o", str(tmp_path / "c.png")]
    assert main(args) == 2 and "unmask refused" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
    assert main(["escrow", "sync-access", "--keys", str(keys), "--vault", str(vault), "--admin-token-file",
                 str(admin)]) == 0
    assert main(args) == 0, capsys.readouterr().err
    actions = [json.loads(line)["action"] for line in (vault / "audit.log").read_text().splitlines()]
    assert actions == ["seal", "recorded", "unmask-refused", "unmask"]


# --- shredding that lasts, and a vault whose parts must agree -----------------------------------

def _two_segments(tmp_path, sealing_store, name="vault"):
    directory = KeyDirectory.open(tmp_path / "keys") if (tmp_path / "keys").exists() else KeyDirectory.init(
        tmp_path / "keys")
    ivan = PrivateIdentity.generate("ivan", ["investigator"])
    if not directory.identities:
        directory.add(ivan.public)
    store = sealing_store(tmp_path / name, directory)
    pixels = np.full((8, 8, 3), 77, np.uint8)
    with Sealer(store, directory.signer, "lobby", {"version": 1}, {"face": GRANTS["face"]}, directory.identities,
                segment_seconds=1.0) as sealer:
        for frame in range(20):
            sealer.add(frame, frame * 100_000, [Sealed(1, "face", (0, 0, 8, 8), pixels)])
    return store, directory, sealer.ref, ivan


def test_key_files_put_back_after_shredding_are_flagged_and_open_nothing(tmp_path, sealing_store, openbao):
    import datetime as dt

    from keys import IntegrityError, shred, verify_vault

    store, directory, ref, ivan = _two_segments(tmp_path, sealing_store)
    copies = {p.name: p.read_bytes() for p in (tmp_path / "vault" / "keys" / "lobby").iterdir()}
    root = CoSigner(openbao.address, openbao.root)
    transit = [segment_key(store.vault_id, "lobby", "face", n) for n in (1, 2)]
    assert all(root.key_exists(k) for k in transit)
    done = shred(store, directory.signer, before=dt.datetime(2999, 1, 1, tzinfo=dt.UTC))
    assert done.segments == [("lobby", 1), ("lobby", 2)]
    assert not any(root.key_exists(k) for k in transit)  # the co-signer's keys are gone for good
    for name, data in copies.items():  # someone puts the key files back from a copy
        (tmp_path / "vault" / "keys" / "lobby" / name).write_bytes(data)
    with pytest.raises(IntegrityError, match="key file of 00000001.pgv is present, but audit entry 2 shredded it"):
        verify_vault(VaultStore.open(tmp_path / "vault"))
    with pytest.raises(UnmaskError, match="crypto-shredded"):
        Unmask(VaultStore.open(tmp_path / "vault"), ref, Selection(), [ivan])
    # even past the tool's own refusal, the share does not come back
    (segment,) = [s for s in VaultStore.open(tmp_path / "vault").verify_chain("lobby") if s.number == 1]
    record = segment.records[0].header
    with pytest.raises(CoSignerRefused):
        root.open_share(openbao.root, transit[0], share_context("lobby", 1, "face", record.track), record.share)
    # the next shred finishes the job again (no second entry) and verify passes
    again = shred(store, directory.signer, before=dt.datetime(2999, 1, 1, tzinfo=dt.UTC))
    assert again.segments == [] and verify_vault(VaultStore.open(tmp_path / "vault")).segments == 2


def test_a_chain_from_another_vault_fails_verify(tmp_path, sealing_store):
    """Same gateway key, two vaults: camera lobby's whole chain copied from one into the other."""
    from keys import IntegrityError, verify_vault

    _two_segments(tmp_path, sealing_store, "a")
    _two_segments(tmp_path, sealing_store, "b")
    for tree in ("segments", "keys"):
        shutil.rmtree(tmp_path / "a" / tree / "lobby")
        shutil.copytree(tmp_path / "b" / tree / "lobby", tmp_path / "a" / tree / "lobby")
    with pytest.raises(IntegrityError, match="sealed into another vault"):
        verify_vault(VaultStore.open(tmp_path / "a"))


def test_verify_ties_seal_entries_to_their_segments_and_checks_the_roster_copy(tmp_path, sealing_store):
    from keys import IntegrityError, verify_vault

    store, directory, ref, _ = _two_segments(tmp_path, sealing_store)
    vault = tmp_path / "vault"
    assert verify_vault(VaultStore.open(vault, directory)).segments == 2
    roster_bytes = (vault / "roster.json").read_bytes()
    roster = json.loads(roster_bytes)
    roster["roster"]["identities"] = []
    (vault / "roster.json").write_text(json.dumps(roster))
    with pytest.raises(IntegrityError, match="roster.json: fails its signature check"):
        verify_vault(VaultStore.open(vault, directory))  # with the key directory given, too
    (vault / "roster.json").write_bytes(roster_bytes)
    # a seal entry and the segments it names must agree (here: one the gateway key signed, claiming more)
    chain = list(store.verify_chain("lobby"))
    store.audit.append("gateway", directory.signer, "seal", {
        "camera": "lobby", "recording": ref.recording, "segments": [1, 2], "records": 99, "regions": 20,
        "head": chain[-1].digest, "output": "written"})
    with pytest.raises(IntegrityError, match="hold 2 records; audit entry 2 sealed 99"):
        verify_vault(VaultStore.open(vault, directory))


# --- an anchored audit log ------------------------------------------------------------------------

@pytest.fixture()
def logged(tmp_path, sealing_store, openbao):
    """Camera lobby: recording A (segments 1-2, seal entry 1), an unmask of it (entry 2), recording B
    (segment 3, whose trailer checkpoints entry 2; seal entry 3, checkpointed at the co-signer)."""
    from keys import verify_vault

    store, directory, ref, ivan = _two_segments(tmp_path, sealing_store)
    job = Unmask(VaultStore.open(tmp_path / "vault"), ref, Selection(), [ivan])
    job.authorize("C-1", "test", "memory", True)
    pixels = np.full((8, 8, 3), 5, np.uint8)
    with Sealer(store, directory.signer, "lobby", {"version": 1}, {"face": GRANTS["face"]}, directory.identities,
                segment_seconds=10.0) as sealer:
        sealer.add(0, 0, [Sealed(2, "face", (0, 0, 8, 8), pixels)])
    log = tmp_path / "vault" / "audit.log"
    assert [json.loads(line)["action"] for line in log.read_text().splitlines()] == ["seal", "unmask", "seal"]
    gateway = openbao.cosigner()
    assert verify_vault(VaultStore.open(tmp_path / "vault"), gateway).entries == 3
    return tmp_path / "vault", log, ref, ivan, gateway


def _lines(log, n):
    return "".join(line + "\n" for line in log.read_text().splitlines()[:n])


@pytest.mark.parametrize("damage", ["cut to 1", "rolled back to 2", "deleted", "last segment and its entry dropped"])
def test_a_cut_rolled_back_or_deleted_audit_log_fails_verify_and_blocks_unmask(logged, damage):
    """Issue 13, attack 3. Segment trailers checkpoint the log as they close; the co-signer keeps a
    checkpoint after every append, where nobody with the vault's files can rewrite it."""
    from keys import IntegrityError, verify_audit, verify_vault

    vault, log, ref, ivan, gateway = logged
    if damage == "cut to 1":
        log.write_text(_lines(log, 1))
        caught_offline = True  # segment 3 checkpoints entry 2
    elif damage == "rolled back to 2":
        log.write_text(_lines(log, 2))
        caught_offline = False  # only the co-signer saw entry 3
    elif damage == "deleted":
        log.unlink()
        caught_offline = True
    else:
        log.write_text(_lines(log, 2))
        (vault / "segments" / "lobby" / "00000003.pgv").unlink()
        key_file(vault / "keys" / "lobby", 3).unlink()
        caught_offline = False
    store = VaultStore.open(vault)
    if caught_offline:
        with pytest.raises(IntegrityError, match="checkpoints entry|audit log is missing"):
            verify_audit(store)
    with pytest.raises(IntegrityError, match="checkpoint|audit log is missing"):
        verify_vault(store, gateway)
    with pytest.raises(UnmaskError):
        Unmask(store, ref, Selection(), [ivan]).authorize("C-2", "again", "memory", True)
    assert not log.exists() or len(log.read_text().splitlines()) <= 2  # nothing appended by the refusal


@pytest.mark.parametrize("leave", ["remove", "revoke"])
def test_what_someone_signed_still_verifies_after_they_left(logged, leave, tmp_path):
    """ivan unmasked (entry 2, signed by him) and then left the roster: the log still verifies,
    from the key directory and from the vault's roster copy alike; his later logins end."""
    from keys import verify_audit

    vault, log, ref, ivan, gateway = logged
    directory = KeyDirectory.open(tmp_path / "keys")
    if leave == "remove":
        directory.remove("ivan")
    else:
        directory.revoke(ivan.public)
    assert not directory.identities
    assert verify_audit(VaultStore.open(vault, directory), gateway) == 3
    # the vault's copy of the roster is refreshed by the next seal
    VaultStore.for_sealing(vault, directory, gateway)
    assert verify_audit(VaultStore.open(vault), gateway) == 3


def test_a_revoked_identity_stops_being_a_recipient_within_a_second(tmp_path, sealing_store):
    """The sealer looks at the roster every second of media: a change begins a new segment wrapped
    to the people in it; a roster that no longer meets a grant stops sealing (frames are blanked)."""
    directory = KeyDirectory.init(tmp_path / "keys")
    ivan, iris = (PrivateIdentity.generate(n, ["investigator"]) for n in ("ivan", "iris"))
    directory.add(ivan.public)
    directory.add(iris.public)
    store = sealing_store(tmp_path / "vault", directory)
    pixels = np.zeros((8, 8, 3), np.uint8)
    sealer = Sealer(store, directory.signer, "lobby", {"version": 1}, {"face": GRANTS["face"]}, directory.identities,
                    segment_seconds=None)
    for frame in range(10):
        sealer.add(frame, frame * 100_000, [Sealed(1, "face", (0, 0, 8, 8), pixels)])
    KeyDirectory.open(tmp_path / "keys").revoke(iris.public)
    for frame in range(10, 25):
        sealer.add(frame, frame * 100_000, [Sealed(1, "face", (0, 0, 8, 8), pixels)])
    sealer.close()
    chain = list(store.verify_chain("lobby"))
    names = [sorted({n for w in store.wraps("lobby", s)["face"] for n in w.names}) for s in chain]
    assert names == [["iris", "ivan"], ["ivan"]]
    sealer = Sealer(store, directory.signer, "lobby", {"version": 1}, {"face": GRANTS["face"]}, store.identities,
                    segment_seconds=None)
    sealer.add(0, 0, [Sealed(1, "face", (0, 0, 8, 8), pixels)])
    KeyDirectory.open(tmp_path / "keys").revoke(ivan.public)  # nobody left to unmask faces
    with pytest.raises(VaultError, match="unmask.face"):
        for frame in range(1, 40):
            sealer.add(frame, frame * 100_000, [Sealed(1, "face", (0, 0, 8, 8), pixels)])
            time.sleep(0.01)
        sealer.close()


def test_reconcile_finds_a_share_taken_outside_unmask(tmp_path, sealing_store, openbao, capsys):
    """ivan's grant lets him ask OpenBao for face shares with his own script: OpenBao logs it, and
    `escrow reconcile` finds the share no unmask entry covers (the legitimate unmask's are covered)."""
    from gateway.cli import main

    store, directory, ref, ivan = _two_segments(tmp_path, sealing_store)
    job = Unmask(VaultStore.open(tmp_path / "vault"), ref, Selection(tracks=frozenset({1})), [ivan])
    job.authorize("C-3", "legitimate", "memory", True)
    args = ["escrow", "reconcile", "--openbao-audit", str(openbao.audit_log), "--vault", str(tmp_path / "vault"),
            "--keys", str(tmp_path / "keys")]
    assert main(args) == 0 and "2 shares OpenBao gave out" in capsys.readouterr().out
    # the same person, bypassing unmask: a share of segment 2 asked for directly
    (segment,) = [s for s in store.verify_chain("lobby") if s.number == 2]
    header = segment.records[0].header
    cosigner = CoSigner(openbao.address)
    cosigner.open_share(cosigner.login(ivan), segment_key(store.vault_id, "lobby", "face", 2),
                        share_context("lobby", 2, "face", header.track), header.share)
    # covered only by an unmask entry written before it: the earlier one names this track and recording...
    assert main(args) == 0
    # ...so a share of a track no unmask named is what stands out
    with Sealer(store, directory.signer, "lobby", {"version": 1}, {"face": GRANTS["face"]}, directory.identities,
                segment_seconds=10.0) as sealer:
        sealer.add(0, 0, [Sealed(9, "face", (0, 0, 8, 8), np.zeros((8, 8, 3), np.uint8))])
    (latest,) = [s for s in store.verify_chain("lobby") if s.number == 3]
    header = latest.records[0].header
    cosigner.open_share(cosigner.login(ivan), segment_key(store.vault_id, "lobby", "face", 3),
                        share_context("lobby", 3, "face", 9), header.share)
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "ivan got the share of face track 9 of camera lobby, segment 3, without an unmask entry" in out
    assert "1 of 4 shares" in err


@pytest.mark.parametrize("closing", [False, True], ids=["while sealing", "as the sealer closes"])
def test_sealing_waits_out_a_co_signer_that_is_briefly_away(tmp_path, sealing_store, closing):
    """OpenBao unreachable for a moment (here: the client pointed at a closed port, then back), while
    the sealer seals, or just as it closes (its last clip then needs a share): the sealing thread
    waits (closing: up to CLOSING_PATIENCE) and goes on; nothing is lost and nothing is sealed
    without a share."""
    import threading

    directory = KeyDirectory.init(tmp_path / "keys")
    directory.add(PrivateIdentity.generate("ivan", ["investigator"]).public)
    store = sealing_store(tmp_path / "vault", directory)
    real = store.cosigner.address
    pixels = np.zeros((8, 8, 3), np.uint8)
    # 40 frames: clips close every 2.5 s of media, and the first needs a share; 5: one clip, sealed at close
    frames = 5 if closing else 40

    def away() -> threading.Timer:
        store.cosigner.address = "http://127.0.0.1:9"  # nothing listens there: connection refused
        back = threading.Timer(1.5, lambda: setattr(store.cosigner, "address", real))
        back.start()
        return back

    with Sealer(store, directory.signer, "lobby", {"version": 1}, {"face": GRANTS["face"]}, directory.identities,
                segment_seconds=None) as sealer:
        back = None if closing else away()
        for frame in range(frames):
            sealer.add(frame, frame * 100_000, [Sealed(1, "face", (0, 0, 8, 8), pixels)])
        if closing:
            back = away()
        else:
            back.join()
    back.join()
    assert sealer.cosigner_waits > 0
    (segment,) = store.verify_chain("lobby")
    assert sum(len(r.header.placements) for r in segment.records) == frames


def test_a_stop_gives_up_on_a_co_signer_that_stays_away(tmp_path, sealing_store, monkeypatch):
    """A co-signer gone for good does not hang a stop: closing reports it after CLOSING_PATIENCE."""
    import keys.seal

    monkeypatch.setattr(keys.seal, "CLOSING_PATIENCE", 1.0)
    directory = KeyDirectory.init(tmp_path / "keys")
    directory.add(PrivateIdentity.generate("ivan", ["investigator"]).public)
    store = sealing_store(tmp_path / "vault", directory)
    sealer = Sealer(store, directory.signer, "lobby", {"version": 1}, {"face": GRANTS["face"]}, directory.identities,
                    segment_seconds=None)
    sealer.add(0, 0, [Sealed(1, "face", (0, 0, 8, 8), np.zeros((8, 8, 3), np.uint8))])
    store.cosigner.address = "http://127.0.0.1:9"
    started = time.monotonic()
    with pytest.raises(CoSignerUnavailable):
        sealer.close()
    assert time.monotonic() - started < 30  # about CLOSING_PATIENCE; generous, it must not hang
    assert sealer.cosigner_waits > 0


def test_a_rotated_gateway_key_keeps_old_and_new_segments_verifying(tmp_path, sealing_store, capsys):
    """Seal, rotate the gateway key (the old key signs the new), seal again into the same vault: the
    chain, the log (entries by both keys) and unmask of both recordings verify; the vault keeps the
    rotation, so a reader without the key directory follows it too. A forged rotation is refused."""
    from gateway.cli import main
    from keys import verify_vault

    store, directory, first, ivan = _two_segments(tmp_path, sealing_store)
    old = directory.fingerprint
    assert main(["keys", "rotate-gateway", str(tmp_path / "keys")]) == 0
    assert old in capsys.readouterr().out
    directory = KeyDirectory.open(tmp_path / "keys")
    assert directory.fingerprint != old and len(directory.gateway_chain()) == 2
    store = sealing_store(tmp_path / "vault", directory)
    with Sealer(store, directory.signer, "lobby", {"version": 1}, {"face": GRANTS["face"]}, directory.identities,
                segment_seconds=10.0) as sealer:
        sealer.add(0, 0, [Sealed(1, "face", (0, 0, 8, 8), np.zeros((8, 8, 3), np.uint8))])
    readers = (VaultStore.open(tmp_path / "vault", directory), VaultStore.open(tmp_path / "vault"))
    for reader in readers:
        report = verify_vault(reader)
        assert report.segments == 3 and report.entries == 2  # a seal entry by each key
        assert reader.fingerprint == old  # the anchor's, as compared out of band
    for ref in (first, sealer.ref):
        Unmask(readers[1], ref, Selection(), [ivan]).authorize("C-4", "rotation", "memory", True)
    # a rotation record signed by another key than the one it replaces does not verify
    roster = json.loads((tmp_path / "keys" / "roster.json").read_text())
    forged = dict(roster["roster"]["rotations"][0], signature="00" * 64)
    (tmp_path / "vault" / "gateway-rotations.json").write_text(json.dumps([forged]))
    with pytest.raises(VaultError, match="rotation does not verify"):
        VaultStore.open(tmp_path / "vault")


def test_a_rotation_cut_short_by_a_crash_is_finished_when_the_directory_opens(tmp_path, monkeypatch):
    import keys.directory

    directory = KeyDirectory.init(tmp_path / "keys")
    old = directory.fingerprint

    real, calls = os.replace, []

    def crash(source, target):  # the third rename: after gateway.key.next and the new roster are written
        calls.append(target)
        if len(calls) == 3:
            raise OSError("the process died here")
        real(source, target)

    monkeypatch.setattr(keys.directory.os, "replace", crash)
    with pytest.raises(OSError):
        directory.rotate()
    monkeypatch.undo()
    again = KeyDirectory.open(tmp_path / "keys")
    assert again.fingerprint != old and len(again.gateway_chain()) == 2
    assert not (tmp_path / "keys" / "gateway.key.next").exists() and str(calls[-1]).endswith("gateway.key")


def test_a_zone_grant_taken_away_takes_its_decrypt_access_away_too(tmp_path, sealing_store, openbao):
    """Access is kept per camera over every class the camera seals: a liftable zone's grant narrowed
    to nobody leaves the identity no decrypt rule for that zone's keys (only face and plate were
    replaced before zones existed, so a zone's rule would have stayed)."""
    from keys import Grant, KeyDirectory, PrivateIdentity
    from keys.cosigner import _mount_of, key_prefix

    directory = KeyDirectory.init(tmp_path / "keys")
    olga = PrivateIdentity.generate("olga", ["privacy-officer"])
    ivan = PrivateIdentity.generate("ivan", ["investigator"])
    directory.add(olga.public)
    directory.add(ivan.public)
    store = sealing_store(tmp_path / "vault", directory)
    admin = CoSigner(openbao.address, openbao.root)

    def rules(identity) -> str:
        return admin._call("GET", f"sys/policy/{_mount_of(identity.public)}")["rules"]

    zone = key_prefix(store.vault_id, "lobby", "zone:desk")
    face = key_prefix(store.vault_id, "lobby", "face")
    store.grant_access("lobby", {"face": Grant(("investigator",)), "zone:desk": Grant(("privacy-officer",))},
                       directory.identities)
    assert zone in rules(olga) and face in rules(ivan)
    store.grant_access("lobby", {"face": Grant(("investigator",)), "zone:desk": Grant(("investigator",))},
                       directory.identities)
    assert zone not in rules(olga) and zone in rules(ivan) and face in rules(ivan)
