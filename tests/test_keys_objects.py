"""The object-store seam and its local implementation: whole objects, durable, validated names."""

import os

import pytest

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
