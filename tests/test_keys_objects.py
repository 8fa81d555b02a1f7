"""The object-store seam and its local implementation: whole objects, durable, validated names."""

import os

import pytest
from vault_files import key_object

from keys import LocalObjects, ObjectMissing, ObjectStore
from keys.objects import check_name


def test_round_trip_overwrite_and_delete(tmp_path):
    store = LocalObjects(tmp_path / "vault")
    assert isinstance(store, ObjectStore) and str(store) == str(tmp_path / "vault")
    assert store.list() == [] and not store.exists("vault.json")
    store.put("vault.json", b"{}")
    store.put("segments/lobby/00000001.pgv", b"PGV1 one")
    assert store.get("segments/lobby/00000001.pgv") == b"PGV1 one"
    store.put("segments/lobby/00000001.pgv", b"PGV1 two")
    assert store.get("segments/lobby/00000001.pgv") == b"PGV1 two"
    assert (tmp_path / "vault" / "segments" / "lobby" / "00000001.pgv").read_bytes() == b"PGV1 two"  # the layout
    assert store.exists("vault.json") and not store.exists("segments/lobby")  # a directory is no object
    store.delete("vault.json")
    store.delete("vault.json")  # missing: not an error
    assert not store.exists("vault.json")
    assert os.listdir(tmp_path / "vault" / "segments" / "lobby") == ["00000001.pgv"]  # no temporary left


def test_missing_object(tmp_path):
    store = LocalObjects(tmp_path / "nowhere")
    for name in ("vault.json", "segments/lobby/00000001.pgv"):
        with pytest.raises(ObjectMissing, match="no such object"):
            store.get(name)
    store.put("segments/lobby/00000001.pgv", b"x")
    with pytest.raises(ObjectMissing):
        store.get("segments/lobby")  # a directory
    with pytest.raises(ObjectMissing):
        store.get("segments/lobby/00000001.pgv/more")  # below a file


def test_list_by_prefix_sorted_without_hidden_files(tmp_path):
    store = LocalObjects(tmp_path)
    for name in ("keys/lobby/00000002.keys", "keys/lobby/00000001.keys", "keys/lobby2/00000001.keys",
                 "segments/lobby/00000001.pgv", "policies/ab.json", "roster.json"):
        store.put(name, b"x")
    (tmp_path / "segments" / "lobby" / ".lock").write_bytes(b"")  # a local lock, a crash's temporary:
    (tmp_path / "segments" / "lobby" / ".00000002.x1.pgv").write_bytes(b"")  # never objects
    assert store.list("keys/lobby/") == ["keys/lobby/00000001.keys", "keys/lobby/00000002.keys"]
    assert store.list("keys/lobby") == ["keys/lobby/00000001.keys", "keys/lobby/00000002.keys",
                                        "keys/lobby2/00000001.keys"]
    assert store.list("segments/") == ["segments/lobby/00000001.pgv"]
    assert store.list("ro") == ["roster.json"]
    assert store.list("nothing/here/") == []
    assert store.list() == sorted(store.list())
    assert len(store.list()) == 6


@pytest.mark.parametrize("name", ["", "/etc/passwd", "a/../b", "..", "a//b", "a/", ".hidden", "a/.lock",
                                  "a\\b", "a\0b", "a\nb"])
def test_names_are_validated(tmp_path, name):
    store = LocalObjects(tmp_path / "vault")
    with pytest.raises(ValueError, match="object name"):
        check_name(name)
    for operation in (lambda: store.put(name, b"x"), lambda: store.get(name), lambda: store.exists(name),
                      lambda: store.delete(name)):
        with pytest.raises(ValueError):
            operation()
    assert not (tmp_path / "vault").exists() and not (tmp_path / "b").exists()


def test_prefix_is_validated(tmp_path):
    store = LocalObjects(tmp_path)
    for prefix in ("../", "/etc/", "a\\b/", "a/../"):
        with pytest.raises(ValueError):
            store.list(prefix)


def test_an_object_store_must_implement_every_operation():
    class Partial(ObjectStore):
        def put(self, name, data):
            pass

    with pytest.raises(TypeError):
        Partial()


def test_put_file_links_on_one_file_system_and_copies_across(tmp_path, monkeypatch):
    import errno

    import keys.objects as objects_module

    store = LocalObjects(tmp_path / "vault")
    source = tmp_path / "00000001.pgv.partial"
    source.write_bytes(b"PGV1 finished")
    store.put_file("segments/lobby/00000001.pgv", source)
    target = tmp_path / "vault" / "segments" / "lobby" / "00000001.pgv"
    assert target.read_bytes() == b"PGV1 finished" and source.exists()  # the caller removes the source
    assert target.stat().st_ino == source.stat().st_ino  # a local vault never copies a segment

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(objects_module.os, "link", cross_device)
    source.unlink()  # (writing it in place would change the object too: they are one inode)
    source.write_bytes(b"PGV1 copied")
    store.put_file("segments/lobby/00000001.pgv", source)
    assert store.get("segments/lobby/00000001.pgv") == b"PGV1 copied"
    assert target.stat().st_ino != source.stat().st_ino
    assert os.listdir(target.parent) == ["00000001.pgv"]


class MemoryObjects(ObjectStore):
    """An object store that is not a directory: what a bucket looks like to the vault."""

    def __init__(self):
        self.objects = {}

    def put(self, name, data):
        self.objects[check_name(name)] = bytes(data)

    def get(self, name):
        try:
            return self.objects[check_name(name)]
        except KeyError:
            raise ObjectMissing(f"{name}: no such object") from None

    def exists(self, name):
        return check_name(name) in self.objects

    def list(self, prefix=""):
        return sorted(n for n in self.objects if n.startswith(prefix))

    def delete(self, name):
        self.objects.pop(check_name(name), None)

    def __str__(self):
        return "memory://vault"


def test_the_default_put_file_is_put(tmp_path):
    memory = MemoryObjects()
    (tmp_path / "f").write_bytes(b"data")
    memory.put_file("a/b", tmp_path / "f")
    assert memory.get("a/b") == b"data" and memory.list("a/") == ["a/b"]


def test_a_whole_vault_on_another_object_store(tmp_path, openbao):
    """Seal, verify, list, unmask and shred with the objects in memory: nothing needs a vault path."""
    import datetime as dt

    import numpy as np

    from keys import (AuditLog, Grant, KeyDirectory, PrivateIdentity, Sealed, Sealer, Selection, Unmask, VaultError,
                      VaultStore, recording_tracks, shred, verify_vault)

    directory = KeyDirectory.init(tmp_path / "keys")
    ivan = PrivateIdentity.generate("ivan", ["investigator"])
    directory.add(ivan.public)
    memory, scratch = MemoryObjects(), tmp_path / "scratch"
    store = VaultStore.from_objects(memory, scratch, AuditLog(tmp_path / "audit.log"), directory, create=True,
                                    cosigner=openbao.cosigner(), manages_access=True)
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    lossless = {"version": 1, "storage": {"originals": "lossless"}}  # restored bit-exact below
    with Sealer(store, directory.signer, "lobby", lossless, {"face": Grant(("investigator",))},
                directory.identities, segment_seconds=1.0) as sealer:
        for frame in range(15):
            sealer.add(frame, frame * 100_000, [Sealed(3, "face", (1, 1, 4, 4), pixels)])
    names = sorted(memory.objects)
    assert names == sorted([
        "vault.json", "roster.json", "escrow.json", f"policies/{sealer.policy_sha256}.json",
        "segments/lobby/00000001.pgv", "segments/lobby/00000002.pgv", key_object(names, "lobby", 1),
        key_object(names, "lobby", 2)])
    assert [p.name for p in (scratch / "lobby").iterdir()] == [".lock"]  # partials were put, then removed
    reader = VaultStore.from_objects(memory, scratch, AuditLog(tmp_path / "audit.log"))  # without the directory
    assert reader.fingerprint == store.fingerprint and [i.name for i in reader.identities] == ["ivan"]
    report = verify_vault(reader)
    assert (report.cameras, report.segments, report.entries) == (("lobby",), 2, 1)
    assert [(t.track, t.frames) for t in recording_tracks(reader, sealer.ref)] == [(3, 15)]
    job = Unmask(reader, sealer.ref, Selection(), [ivan])
    job.authorize("C-1", "test", "memory", True)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    assert job.restore(14, 1.4, image, 1000) == 1 and np.array_equal(image[1:5, 1:5], pixels)
    done = shred(reader, directory.signer, before=dt.datetime(2999, 1, 1, tzinfo=dt.UTC), cosigner=store.cosigner)
    assert done.segments == [("lobby", 1), ("lobby", 2)]
    assert not any(name.startswith("keys/") for name in memory.objects)
    with pytest.raises(VaultError, match="memory://vault: not a vault"):
        VaultStore.from_objects(MemoryObjects(), scratch, AuditLog(tmp_path / "audit.log"))
