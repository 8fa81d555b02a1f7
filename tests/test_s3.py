"""The vault in S3: one object-store contract for local files and a real SeaweedFS cluster, a vault
sealed to a bucket and read back through the command line, Object Lock, a volume server killed,
and a store that fails (credentials, bucket, the server gone) without losing what the node holds."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from vault_files import key_object

from gateway.cli import main
from gateway.config import load_config
from gateway.files import read_image, write_image
from gateway.openbao import write_credentials
from gateway.storage import open_vault
from keys import (
    AuditLog,
    Grant,
    IntegrityError,
    KeyDirectory,
    LocalObjects,
    ObjectMissing,
    PrivateIdentity,
    S3Objects,
    Sealed,
    Sealer,
    StorageUnavailable,
    VaultStore,
    shred,
    verify_vault,
)
from keys.seal import QUEUE_FRAMES

LOSSLESS = {"version": 1, "storage": {"originals": "lossless"}, "unmask": {"watermark": "optional"}}
GRANTS = {"face": Grant(("investigator",))}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- the contract, for both implementations ---------------------------------------------------------

@pytest.fixture(params=["local", "s3"])
def objects(request, tmp_path):
    if request.param == "local":
        return LocalObjects(tmp_path / "vault")
    cluster = request.getfixturevalue("seaweedfs")
    return cluster.objects(cluster.bucket(), page_size=2)  # small pages: listing must follow them


def test_round_trip_overwrite_and_delete(objects):
    assert objects.list() == [] and not objects.exists("vault.json")
    objects.put("vault.json", b"{}")
    objects.put("segments/lobby/00000001.pgv", b"PGV1 one")
    assert objects.get("segments/lobby/00000001.pgv") == b"PGV1 one"
    objects.put("segments/lobby/00000001.pgv", b"PGV1 two")
    assert objects.get("segments/lobby/00000001.pgv") == b"PGV1 two"
    assert objects.exists("vault.json") and not objects.exists("segments/lobby")  # a "directory" is no object
    objects.delete("vault.json")
    objects.delete("vault.json")  # missing: not an error
    assert not objects.exists("vault.json") and objects.list() == ["segments/lobby/00000001.pgv"]


def test_missing_object(objects):
    with pytest.raises(ObjectMissing, match="no such object"):
        objects.get("vault.json")
    objects.put("segments/lobby/00000001.pgv", b"x")
    for name in ("segments/lobby", "segments/lobby/00000001.pgv/more"):
        with pytest.raises(ObjectMissing):
            objects.get(name)


def test_list_by_prefix_sorted_over_pages(objects):
    names = ["keys/lobby/00000002.keys", "keys/lobby/00000001.keys", "keys/lobby2/00000001.keys",
             "segments/lobby/00000001.pgv", "policies/ab.json", "roster.json", "vault.json"]
    for name in names:
        objects.put(name, name.encode())
    assert objects.list("keys/lobby/") == ["keys/lobby/00000001.keys", "keys/lobby/00000002.keys"]
    assert objects.list("keys/lobby") == ["keys/lobby/00000001.keys", "keys/lobby/00000002.keys",
                                          "keys/lobby2/00000001.keys"]
    assert objects.list("ro") == ["roster.json"] and objects.list("nothing/here/") == []
    assert objects.list() == sorted(names)  # seven names in pages of two (S3)


@pytest.mark.parametrize("name", ["", "/etc/passwd", "a/../b", "..", "a//b", "a/", ".hidden", "a/.lock", "a\\b",
                                  "a\nb"])
def test_names_are_validated(objects, name):
    for operation in (lambda: objects.put(name, b"x"), lambda: objects.get(name), lambda: objects.exists(name),
                      lambda: objects.delete(name)):
        with pytest.raises(ValueError, match="object name"):
            operation()
    for prefix in ("../", "/etc/", "a\\b/"):
        with pytest.raises(ValueError):
            objects.list(prefix)


def test_put_file_of_a_large_segment(objects, tmp_path):
    """Above 8 MiB the S3 store uploads in parts, from the file; the bytes come back identical."""
    source = tmp_path / "00000001.pgv.partial"
    data = os.urandom(9 << 20)
    source.write_bytes(data)
    objects.put_file("segments/lobby/00000001.pgv", source)
    assert source.read_bytes() == data  # left in place: the caller removes it
    assert objects.get("segments/lobby/00000001.pgv") == data


def test_s3_names_the_store_in_messages_and_keeps_a_prefix(seaweedfs):
    bucket = seaweedfs.bucket()
    store = seaweedfs.objects(bucket, prefix="site-a/")
    assert str(store) == f"{seaweedfs.endpoint}/{bucket}/site-a"
    store.put("vault.json", b"{}")
    assert seaweedfs.objects(bucket).list() == ["site-a/vault.json"] and store.list() == ["vault.json"]
    with pytest.raises(ObjectMissing, match=f"roster.json: no such object in {seaweedfs.endpoint}/{bucket}/site-a"):
        store.get("roster.json")
    with pytest.raises(ValueError, match="must end with '/'"):
        seaweedfs.objects(bucket, prefix="site-a")


# --- a vault sealed to a bucket, read through the command line ------------------------------------------

@pytest.fixture(scope="module")
def passphrase():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRIVACY_GATEWAY_PASSPHRASE", "correct horse")
        yield


def site(tmp_path: Path, seaweedfs, openbao, bucket: str, **s3) -> Path:
    """A gateway configuration whose vault is in ``bucket``, its key directory with one investigator."""
    (tmp_path / "clip.mp4").write_bytes(b"")  # a camera the configuration names; nothing plays it here
    config = {"cameras": {"lobby": {"source": "clip.mp4"}},
              "storage": {"data_dir": "data", "objects": seaweedfs.config(bucket, tmp_path / "s3.secret", **s3)},
              "escrow": openbao.config()}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded, _ = load_config(path)
    directory = KeyDirectory.init(loaded.keys_dir)
    write_credentials(loaded.keys_dir, openbao.address, openbao.gateway_token, manage_access=True)  # as serve does
    ivan = PrivateIdentity.generate("ivan", ["investigator"])
    directory.add(ivan.public)
    ivan.save(tmp_path / "ivan.id", "correct horse")
    return path


def seal(store: VaultStore, directory: KeyDirectory, pixels: np.ndarray, frames: int = 15, **options) -> Sealer:
    with Sealer(store, directory.signer, "lobby", LOSSLESS, GRANTS, directory.identities, segment_seconds=1.0,
                **options) as sealer:
        for frame in range(frames):
            sealer.add(frame, frame * 100_000, [Sealed(3, "face", (1, 1, 4, 4), pixels)])
    return sealer


def test_a_vault_sealed_to_s3_verifies_and_unmasks_through_the_command_line(seaweedfs, openbao, passphrase, tmp_path,
                                                                           capsys):
    bucket = seaweedfs.bucket()
    path = site(tmp_path, seaweedfs, openbao, bucket)
    config, _ = load_config(path)
    directory = KeyDirectory.open(config.keys_dir)
    store = open_vault(config, directory, cosigner=openbao.cosigner(), manages_access=True)
    assert store.location == f"{seaweedfs.endpoint}/{bucket}"
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    sealer = seal(store, directory, pixels)
    names = seaweedfs.objects(bucket).list()
    assert {"vault.json", "escrow.json", "roster.json", "segments/lobby/00000002.pgv",
            key_object(names, "lobby", 2)} <= set(names)
    vault = config.storage.data_dir / "vault"
    assert sorted(p.name for p in vault.iterdir()) == ["audit.log", "segments"]  # the node keeps only these
    assert [p.name for p in (vault / "segments" / "lobby").iterdir()] == [".lock"]  # no partial left

    code, out, err = run(capsys, "vault", "verify", "--config", path)
    assert code == 0, err
    assert f"{seaweedfs.endpoint}/{bucket}: 1 cameras, 2 segments and 1 audit entries verified" in out
    code, out, err = run(capsys, "audit", "verify", "--config", path)
    assert code == 0 and "checked against the co-signer's checkpoints" in out, err

    original = np.full((8, 8, 3), 200, dtype=np.uint8)
    original[1:5, 1:5] = pixels
    masked = original.copy()
    masked[1:5, 1:5] = 0
    redacted = tmp_path / "redacted.png"
    write_image(redacted, masked, sealer.ref.encode())
    code, out, err = run(capsys, "unmask", redacted, "--config", path, "--identity", tmp_path / "ivan.id",
                         "--case", "C-1", "--reason", "s3", "--no-watermark", "-o", tmp_path / "restored.png")
    assert code == 0, err
    assert np.array_equal(read_image(tmp_path / "restored.png"), original)


def _node_site(tmp_path: Path, seaweedfs, openbao, bucket: str, node: str) -> Path:
    """``node``'s configuration in a cluster sharing ``bucket``: the gateway's token seals but does not
    keep people's access (an officer does, with ``escrow sync-access``). Nothing here needs the database."""
    config = {"cameras": {"lobby": {"source": "clip.mp4"}},
              "storage": {"data_dir": f"data-{node}",
                          "objects": seaweedfs.config(bucket, tmp_path / "s3.secret", prefix="site/")},
              "escrow": {**openbao.config(), "manage_access": False},
              "cluster": {"node": node, "url": f"http://{node}.example:8080", "database": "host=db dbname=gateway"}}
    path = tmp_path / f"{node}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_sync_access_on_each_nodes_part_of_a_shared_bucket(seaweedfs, openbao, passphrase, tmp_path, capsys):
    """Two nodes seal into their prefixes of one bucket without keeping people's access: nobody may
    unmask until an officer runs `escrow sync-access --config` for the node's part (`--node` for
    another node's, from any node's configuration); then the granted identity may, on that part only.
    A wrong bucket, refused credentials and an unknown node are said plainly."""
    (tmp_path / "clip.mp4").write_bytes(b"")
    bucket = seaweedfs.bucket()
    paths = {node: _node_site(tmp_path, seaweedfs, openbao, bucket, node) for node in ("gw-1", "gw-2")}
    keys = load_config(paths["gw-1"])[0].keys_dir
    directory = KeyDirectory.init(keys)
    ivan = PrivateIdentity.generate("ivan", ["investigator"])
    directory.add(ivan.public)
    ivan.save(tmp_path / "ivan.id", "correct horse")
    write_credentials(keys, openbao.address, openbao.gateway_token, manage_access=False)
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    original = np.full((8, 8, 3), 200, dtype=np.uint8)
    original[1:5, 1:5] = pixels
    masked = original.copy()
    masked[1:5, 1:5] = 0
    for node, path in paths.items():
        config, _ = load_config(path)
        if node != "gw-1":
            shutil.copytree(keys, config.keys_dir)  # every node holds a copy of one key directory
        store = open_vault(config, directory, cosigner=openbao.cosigner(), manages_access=False)
        write_image(tmp_path / f"{node}.png", masked, seal(store, directory, pixels).ref.encode())
    assert {"site/gw-1/vault.json", "site/gw-2/vault.json"} <= set(seaweedfs.objects(bucket).list())
    admin = tmp_path / "officer.token"
    admin.write_text(openbao.root + "\n")

    def unmask(node: str, *where) -> tuple[int, str]:
        target = tmp_path / f"{node}-restored-{len(list(tmp_path.glob('*-restored-*')))}.png"
        code, _, err = run(capsys, "unmask", tmp_path / f"{node}.png", "--config", paths["gw-1"], *where,
                           "--identity", tmp_path / "ivan.id", "--case", "C-2", "--reason", "s3", "--no-watermark",
                           "-o", target)
        assert code != 0 or np.array_equal(read_image(target), original)
        return code, err

    code, err = unmask("gw-1")
    assert code == 2 and "unmask refused" in err  # sealed, but nobody was given access
    code, out, err = run(capsys, "escrow", "sync-access", "--config", paths["gw-1"], "--admin-token-file", admin)
    assert code == 0, err
    assert out == "camera lobby: access of 1 identities in step with its policy\n"
    assert unmask("gw-1") == (0, "")
    code, err = unmask("gw-2", "--node", "gw-2")
    assert code == 2 and "unmask refused" in err  # gw-1's part only: gw-2's vault has keys of its own
    code, out, err = run(capsys, "escrow", "sync-access", "--config", paths["gw-1"], "--node", "gw-2",
                         "--admin-token-file", admin)
    assert code == 0 and "camera lobby: access of 1 identities" in out, err
    assert unmask("gw-2", "--node", "gw-2") == (0, "")
    assert unmask("gw-1") == (0, "")  # gw-2's sync kept what gw-1's gave

    code, _, err = run(capsys, "escrow", "sync-access", "--config", paths["gw-1"], "--node", "gw-9",
                       "--admin-token-file", admin)
    assert code == 2 and err == (f"privacy-gateway: error: node 'gw-9': no vault in {seaweedfs.endpoint}/{bucket}/"
                                 "site/gw-9 (no node of that name has sealed into this bucket)\n")
    assert not (load_config(paths["gw-1"])[0].storage.data_dir / "vault" / "nodes" / "gw-9").exists()
    code, _, err = run(capsys, "escrow", "sync-access", "--vault", tmp_path / "v", "--node", "gw-2", "--keys", keys,
                       "--admin-token-file", admin)
    assert code == 2 and "--node goes with --config" in err
    code, _, err = run(capsys, "escrow", "sync-access", "--admin-token-file", admin)
    assert code == 2 and "needs --keys (the key directory: the roster), or --config" in err
    wrong = yaml.safe_load(paths["gw-1"].read_text())
    wrong["storage"]["objects"]["s3"]["bucket"] = "no-such-bucket"
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(wrong))
    code, _, err = run(capsys, "escrow", "sync-access", "--config", tmp_path / "wrong.yaml", "--admin-token-file", admin)
    assert code == 2 and err == (f"privacy-gateway: error: storage.objects.s3: {seaweedfs.endpoint}/no-such-bucket/"
                                 "site/gw-1: the bucket does not exist\n")
    (tmp_path / "s3.secret").write_text("not-the-secret\n")
    code, _, err = run(capsys, "escrow", "sync-access", "--config", paths["gw-1"], "--node", "gw-2",
                       "--admin-token-file", admin)
    assert code == 2 and err.startswith(f"privacy-gateway: error: storage.objects.s3: {seaweedfs.endpoint}/{bucket}/"
                                        "site/gw-2: reaching the bucket: refused (403): check the credentials")
    assert "not-the-secret" not in err and seaweedfs.secret_key not in err


# --- Object Lock --------------------------------------------------------------------------------------------

def test_object_lock_retains_sealed_segments_and_shredding_still_works(seaweedfs, openbao, tmp_path):
    """SeaweedFS honours Object Lock: a locked segment version can be neither deleted nor have its
    retention shortened, and an overwrite only hides it behind a new version. Key files are never
    locked, and deleting one removes every version: crypto-shredding works on a versioned bucket."""
    import boto3

    bucket = seaweedfs.bucket(lock=True)
    path = site(tmp_path, seaweedfs, openbao, bucket, object_lock={"mode": "COMPLIANCE", "days": 1})
    config, _ = load_config(path)
    directory = KeyDirectory.open(config.keys_dir)
    store = open_vault(config, directory, cosigner=openbao.cosigner(), manages_access=True)
    seal(store, directory, np.zeros((4, 4, 3), dtype=np.uint8))
    client = boto3.client("s3", endpoint_url=seaweedfs.endpoint, aws_access_key_id=seaweedfs.access_key,
                          aws_secret_access_key=seaweedfs.secret_key, region_name="us-east-1")
    segment = "segments/lobby/00000001.pgv"
    head = client.head_object(Bucket=bucket, Key=segment)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)
    key = key_object(seaweedfs.objects(bucket).list("keys/"), "lobby", 1)
    assert "ObjectLockMode" not in client.head_object(Bucket=bucket, Key=key)
    original = client.get_object(Bucket=bucket, Key=segment)["Body"].read()

    objects = seaweedfs.objects(bucket)
    with pytest.raises(OSError, match=r"deleting segments/lobby/00000001.pgv: refused, S3 Object Lock retains it "
                                      r"until \d{4}-"):
        objects.delete(segment)
    objects.put(segment, b"forged")  # S3 keeps the locked version beneath the new one
    versions = [v for v in client.list_object_versions(Bucket=bucket, Prefix=segment)["Versions"] if not v["IsLatest"]]
    assert len(versions) == 1
    locked = versions[0]["VersionId"]
    assert client.get_object(Bucket=bucket, Key=segment, VersionId=locked)["Body"].read() == original
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="AccessDenied"):
        client.delete_object(Bucket=bucket, Key=segment, VersionId=locked)
    with pytest.raises(ClientError, match="AccessDenied"):
        client.put_object_retention(Bucket=bucket, Key=segment, VersionId=locked, Retention={
            "Mode": "COMPLIANCE", "RetainUntilDate": dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)})
    assert client.get_object(Bucket=bucket, Key=segment, VersionId=locked)["Body"].read() == original
    with pytest.raises(IntegrityError, match="00000001.pgv"):  # the newest version, a forgery, does not verify
        verify_vault(store)
    objects.put(segment, original)  # the chain reads the newest version: put the sealed bytes back on top

    done = shred(store, directory.signer, before=dt.datetime(2999, 1, 1, tzinfo=dt.UTC))
    assert done.segments == [("lobby", 1), ("lobby", 2)]
    left = client.list_object_versions(Bucket=bucket, Prefix="keys/")
    assert not left.get("Versions") and not left.get("DeleteMarkers")  # shredded: no version of a key file left
    assert verify_vault(store).segments == 2


def test_object_lock_needs_a_bucket_that_has_it(seaweedfs, openbao, tmp_path):
    path = site(tmp_path, seaweedfs, openbao, bucket := seaweedfs.bucket(),
                object_lock={"mode": "GOVERNANCE", "days": 7})
    config, _ = load_config(path)
    with pytest.raises(StorageUnavailable, match=f"{bucket}: object_lock is configured but the bucket has no "
                                                 "Object Lock"):
        open_vault(config)


# --- a store that fails -------------------------------------------------------------------------------------

class Relay:
    """A TCP relay to the S3 endpoint that can be cut: the server gone, as the gateway sees it."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._target)
                self._open += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone does not)
        self._listener.close()
        for s in self._open:
            with contextlib.suppress(OSError):
                s.close()


def test_bad_credentials_wrong_bucket_and_no_server_are_said_plainly(seaweedfs, openbao, tmp_path):
    bucket = seaweedfs.bucket()
    path = site(tmp_path, seaweedfs, openbao, bucket)
    config, _ = load_config(path)
    s3 = config.storage.objects.s3
    secret = s3.secret_access_key_file
    secret.write_text("not-the-secret\n")
    with pytest.raises(StorageUnavailable, match=rf"{seaweedfs.endpoint}/{bucket}: reaching the bucket: refused") as e:
        open_vault(config)
    assert "not-the-secret" not in str(e.value) and seaweedfs.secret_key not in str(e.value)
    secret.write_text(seaweedfs.secret_key)
    secret.chmod(0o644)
    with pytest.raises(Exception, match="secret_access_key_file: .* is readable by others .*chmod 600"):
        load_config(path)
    secret.chmod(0o600)
    objects = config.storage.objects.model_copy(update={"s3": s3.model_copy(update={"bucket": "no-such-bucket"})})
    missing = config.model_copy(update={"storage": config.storage.model_copy(update={"objects": objects})})
    with pytest.raises(StorageUnavailable, match=f"{seaweedfs.endpoint}/no-such-bucket: .*the bucket does not exist"):
        open_vault(missing)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{probe.getsockname()[1]}"
    gone = S3Objects(bucket, endpoint=nobody, access_key_id="x", secret_access_key="y", connect_timeout=1,
                     read_timeout=2, attempts=2)
    for operation in (gone.check, lambda: gone.get("vault.json"), lambda: gone.put("vault.json", b"{}"), gone.list):
        with pytest.raises(OSError, match=rf"{nobody}/{bucket}: .*EndpointConnectionError"):
            operation()


def test_the_store_going_away_while_sealing_loses_nothing_on_the_node(seaweedfs, openbao, tmp_path):
    """The finished segment that cannot be uploaded stays in scratch, whole; sealing again once the
    store is back recovers it (the audit log says so) and the vault verifies."""
    directory = KeyDirectory.init(tmp_path / "keys")
    directory.add(PrivateIdentity.generate("ivan", ["investigator"]).public)
    bucket, relay = seaweedfs.bucket(), Relay(seaweedfs.endpoint)
    scratch, audit = tmp_path / "vault" / "segments", AuditLog(tmp_path / "vault" / "audit.log")
    flaky = seaweedfs.objects(bucket, endpoint=relay.endpoint, connect_timeout=1, read_timeout=2, attempts=2)
    store = VaultStore.from_objects(flaky, scratch, audit, directory, create=True, cosigner=openbao.cosigner(),
                                    manages_access=True)
    pixels = np.ones((4, 4, 3), dtype=np.uint8)
    sealer = Sealer(store, directory.signer, "lobby", LOSSLESS, GRANTS, directory.identities, segment_seconds=None)
    for frame in range(5):
        sealer.add(frame, frame * 100_000, [Sealed(3, "face", (1, 1, 4, 4), pixels)])
    while not seaweedfs.objects(bucket).list("keys/lobby/"):  # the sealing thread opened the segment
        threading.Event().wait(0.05)
    relay.cut()
    with pytest.raises(OSError, match=rf"{relay.endpoint}/{bucket}: uploading segments/lobby/00000001.pgv"):
        sealer.close()
    partial = scratch / "lobby" / "00000001.pgv.partial"
    assert partial.stat().st_size > 0  # the node still holds every record
    assert seaweedfs.objects(bucket).list("segments/") == []

    back = VaultStore.from_objects(seaweedfs.objects(bucket), scratch, audit, directory, create=True,
                                   cosigner=openbao.cosigner(), manages_access=True)
    seal(back, directory, pixels, frames=3, first_frame=5, first_pts_us=500_000)
    assert not partial.exists()
    assert "recover-segment" in [e["action"] for e in audit.entries()]
    report = verify_vault(back)
    assert report.segments == 2 and seaweedfs.objects(bucket).list("segments/") == [
        "segments/lobby/00000001.pgv", "segments/lobby/00000002.pgv"]


# --- a volume server killed ----------------------------------------------------------------------------------

def _stored_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.dat"))


def test_a_volume_server_killed_mid_run_loses_nothing(seaweedfs, openbao, tmp_path):
    """Replication 001 keeps every object on two of the three volume servers: kill -9 the one holding
    the most while sealing, and sealing goes on, and everything written before and after reads back."""
    directory = KeyDirectory.init(tmp_path / "keys")
    directory.add(PrivateIdentity.generate("ivan", ["investigator"]).public)
    bucket = seaweedfs.bucket()
    objects = seaweedfs.objects(bucket)
    store = VaultStore.from_objects(objects, tmp_path / "scratch", AuditLog(tmp_path / "audit.log"), directory,
                                    create=True, cosigner=openbao.cosigner(), manages_access=True)
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)  # incompressible: bytes that must be stored
    written = {}
    with Sealer(store, directory.signer, "lobby", LOSSLESS, GRANTS, directory.identities,
                segment_seconds=0.5) as sealer:
        for frame in range(40):
            if frame == 20:
                written = {name: objects.get(name) for name in objects.list()}
                victim = max(seaweedfs.volume_servers(), key=lambda n: _stored_bytes(seaweedfs.directory / n))
                assert _stored_bytes(seaweedfs.directory / victim) > 0  # it holds some of what was written
                seaweedfs.kill(victim)
            sealer.add(frame, frame * 100_000, [Sealed(3, "face", (0, 0, 64, 64), pixels)])
    try:
        assert all(objects.get(name) == data for name, data in written.items())  # before the kill
        report = verify_vault(store)  # every segment, before and after, read back and checked
        assert report.segments == 8 and len(objects.list("segments/lobby/")) == 8
        volumes = [seaweedfs.directory / n for n in seaweedfs.volume_servers()]
        assert sum(_stored_bytes(v) for v in volumes) >= 2 * sum(len(d) for d in written.values())  # two copies
    finally:
        seaweedfs.restart(victim)


# --- the master killed ------------------------------------------------------------------------------------------

def _sealed_frames(store: VaultStore) -> set[int]:
    return {p.frame for segment in store.verify_chain("lobby") for record in segment.records
            for p in record.header.placements}


def test_the_master_killed_mid_run_blanks_new_footage_and_loses_nothing_sealed(seaweedfs, openbao, tmp_path):
    """`kill -9` of the master (volume servers, filer and S3 gateway go on) while a camera seals:
    reads go on, every write hangs until the client gives up, so the sealer falls behind (frames
    refused: blanked live), then fails, and cannot be reopened until the master is back. Once it
    is, the segment left unfinished is recovered and everything sealed verifies, also after the
    writes the S3 gateway still held from the outage have landed. Nothing but sealed objects leaves."""
    directory = KeyDirectory.init(tmp_path / "keys")
    directory.add(PrivateIdentity.generate("ivan", ["investigator"]).public)
    bucket, probe = seaweedfs.bucket(), seaweedfs.objects(seaweedfs.bucket(), connect_timeout=1, read_timeout=2,
                                                          attempts=1)
    # the gateway's defaults are 5 s to connect, 30 s to read, three attempts: shorter here, the same behaviour
    objects = seaweedfs.objects(bucket, connect_timeout=1, read_timeout=3, attempts=2)
    scratch, audit = tmp_path / "vault" / "segments", AuditLog(tmp_path / "vault" / "audit.log")

    def sealer(camera: str = "lobby") -> Sealer:
        store = VaultStore.from_objects(objects, scratch, audit, directory, create=True, cosigner=openbao.cosigner(),
                                        manages_access=True)
        return Sealer(store, directory.signer, camera, LOSSLESS, GRANTS, directory.identities, segment_seconds=0.5)

    rng = np.random.default_rng(16)
    crops: dict[int, np.ndarray] = {}
    accepted: set[int] = set()
    frame = 0

    def feed(to: Sealer) -> bool:
        nonlocal frame
        crops[frame] = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        if to.add(frame, frame * 100_000, [Sealed(3, "face", (0, 0, 16, 16), crops[frame])], wait=False):
            accepted.add(frame)
        frame += 1
        time.sleep(0.1)  # 10 fps, as live
        return frame - 1 in accepted

    first = sealer()
    for _ in range(20):
        assert feed(first)
    before = wait_until(lambda: len(objects.list("segments/lobby/")) >= 3 and objects.list(), 20)
    finished = _sealed_frames(VaultStore.from_objects(objects, scratch, audit, directory))
    seaweedfs.kill("master")
    killed = time.monotonic()
    try:
        refused_at = failed_at = None
        while failed_at is None and time.monotonic() - killed < 60:
            try:
                if not feed(first) and refused_at is None:
                    refused_at = time.monotonic() - killed
            except OSError as exc:
                failed_at = time.monotonic() - killed
                assert f"{objects}: " in str(exc) and "ReadTimeout" in str(exc)
        assert refused_at is not None and failed_at is not None  # behind (blanked live), then failed
        with pytest.raises(OSError):
            first.close()  # as the live step does before it opens another
        started = time.monotonic()
        assert {name: objects.get(name) for name in before} == {name: objects.get(name) for name in before}
        # reads go on: every finished segment reads back and verifies
        assert _sealed_frames(VaultStore.from_objects(objects, scratch, audit, directory)) == finished
        reads = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(OSError, match="ReadTimeout"):
            sealer()  # a reopen: recovering the unfinished segment needs a write
        reopen = time.monotonic() - started
        # another camera starting: its first key file cannot be kept (a write the S3 gateway holds on to)
        with pytest.raises(OSError, match=r"writing keys/hall/00000001\.[0-9a-f]{16}\.keys: ReadTimeout"), sealer("hall") as hall:
            hall.add(0, 0, [Sealed(3, "face", (0, 0, 16, 16), crops[0])])
    finally:
        seaweedfs.restart("master")
    restarted = time.monotonic()
    wait_until(lambda: _writes(probe), 60)
    writable = time.monotonic() - restarted
    with sealer() as second:  # recovers what the first left, then seals on
        for _ in range(15):
            assert feed(second)
    with sealer("hall") as hall:  # segment 1 again, its key file anew (other data keys)
        for index in range(5):
            hall.add(index, index * 100_000, [Sealed(3, "face", (0, 0, 16, 16), crops[index])])
    time.sleep(5)  # what the S3 gateway held from the outage lands meanwhile
    store = VaultStore.from_objects(objects, scratch, audit, directory)
    report = verify_vault(store)
    sealed = _sealed_frames(store)
    lost = sorted(accepted - sealed)
    print(f"\nSeaweedFS master killed: sealing refused frames {refused_at:.1f} s after, failed {failed_at:.1f} s "
          f"after; reads of {len(before)} objects went on ({reads:.1f} s); a reopen failed after {reopen:.1f} s; "
          f"writes again {writable:.1f} s after the restart; {report.segments} segments verify; "
          f"{len(accepted)} frames accepted, {len(lost)} of them not sealed"
          + (f" (frames {lost[0]}-{lost[-1]}, queued behind the write that failed)" if lost else ""))
    assert finished | set(range(frame - 15, frame)) <= sealed  # sealed before the kill, and after the restart
    assert not (sealed - accepted) and not list(scratch.glob("lobby/*.partial"))
    # lost: the originals of frames taken into the sealer's queue (released redacted live) behind the write
    # that failed, at most a queue's worth
    assert len(lost) <= QUEUE_FRAMES + 1 and all(f > max(finished) for f in lost)
    every = b"".join(objects.get(name) for name in objects.list())
    assert all(name.startswith(("segments/lobby/", "keys/lobby/", "segments/hall/", "keys/hall/", "policies/")) or name in ("vault.json",
               "escrow.json", "roster.json") for name in objects.list())
    assert not any(crop[4].tobytes() in every for crop in crops.values())  # no original in the clear


def wait_until(condition, seconds: float):
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return result


def _writes(objects: S3Objects) -> bool:
    try:
        objects.put("probe", b"x")
        return True
    except OSError:
        return False
