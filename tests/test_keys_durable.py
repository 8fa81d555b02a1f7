"""The one durable-write helper: a file is replaced whole or not at all, and no temporary stays."""

import os
import stat
from pathlib import Path

import pytest

import keys.durable as durable
from keys import atomic_dir, atomic_path, write_durably


def test_write_replaces_whole_with_the_mode_asked_for(tmp_path):
    target = tmp_path / "state.json"
    write_durably(target, b"one")
    write_durably(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["state.json"]


def test_failure_inside_the_block_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".state.") and tmp.suffix == ".json"
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_failure_to_rename_leaves_no_temporary(tmp_path):
    target = tmp_path / "state"
    target.mkdir()
    (target / "occupied").write_bytes(b"")  # os.replace of a file onto a non-empty directory fails
    with pytest.raises(OSError):
        write_durably(target, b"new")
    assert sorted(os.listdir(tmp_path)) == ["state"]


def test_exclusive_never_replaces_and_works_without_hard_links(tmp_path, monkeypatch):
    target = tmp_path / "alice.key"
    write_durably(target, b"first", 0o600, exclusive=True)
    with pytest.raises(FileExistsError):
        write_durably(target, b"second", 0o600, exclusive=True)
    assert target.read_bytes() == b"first" and os.listdir(tmp_path) == ["alice.key"]

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")  # what vfat answers to link(2)

    monkeypatch.setattr(durable.os, "link", no_links)
    other = tmp_path / "bob.key"
    write_durably(other, b"bob", 0o600, exclusive=True)
    assert other.read_bytes() == b"bob" and stat.S_IMODE(other.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_durably(other, b"again", 0o600, exclusive=True)
    assert sorted(os.listdir(tmp_path)) == ["alice.key", "bob.key"]


def test_directory_and_removal_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = durable.fsync_dir
    monkeypatch.setattr(durable, "fsync_dir", lambda path: synced.append(str(path)) or real(path))
    durable.make_dirs(tmp_path / "a" / "b")
    assert synced == [str(tmp_path), str(tmp_path / "a")]
    write_durably(tmp_path / "a" / "b" / "f", b"x")
    durable.remove_durably(tmp_path / "a" / "b" / "f")
    assert synced[2:] == [str(tmp_path / "a" / "b")] * 2
    assert not (tmp_path / "a" / "b" / "f").exists()
    durable.remove_durably(tmp_path / "a" / "b" / "f", missing_ok=True)
    with pytest.raises(FileNotFoundError):
        durable.remove_durably(tmp_path / "a" / "b" / "f")


def test_a_directory_is_published_whole_with_its_files_and_entries_fsynced(tmp_path, monkeypatch):
    synced = []
    real_dir, real_file = durable.fsync_dir, durable._fsync_file
    monkeypatch.setattr(durable, "fsync_dir", lambda path: synced.append(("dir", Path(path))) or real_dir(path))
    monkeypatch.setattr(durable, "_fsync_file", lambda path: synced.append(("file", Path(path))) or real_file(path))
    target = tmp_path / "frames"
    target.mkdir()  # an empty directory is replaced
    with atomic_dir(target, mode=0o700) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".frames.")
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o700 and os.listdir(target) == []
        (tmp / "000000.png").write_bytes(b"one")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "000001.png").write_bytes(b"two")
    assert os.listdir(tmp_path) == ["frames"]
    assert (target / "000000.png").read_bytes() == b"one" and (target / "sub" / "000001.png").read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    inside = [(kind, path.relative_to(tmp.parent).parts[1:]) for kind, path in synced[:-1]]
    assert sorted(inside) == sorted([("file", ("000000.png",)), ("file", ("sub", "000001.png")),
                                     ("dir", ("sub",)), ("dir", ())])
    assert inside.index(("file", ("sub", "000001.png"))) < inside.index(("dir", ("sub",))) < inside.index(("dir", ()))
    assert synced[-1] == ("dir", tmp_path)  # the rename itself, after everything it publishes


def test_a_directory_not_finished_or_not_placed_leaves_the_target_as_it_was(tmp_path):
    target = tmp_path / "frames"
    with pytest.raises(RuntimeError, match="decoder died"), atomic_dir(target) as tmp:
        (tmp / "000000.png").write_bytes(b"half")
        raise RuntimeError("decoder died")
    assert os.listdir(tmp_path) == []
    target.mkdir()
    (target / "kept").write_bytes(b"old")  # rename(2) never replaces a directory that holds something
    with pytest.raises(OSError), atomic_dir(target) as tmp:
        (tmp / "000000.png").write_bytes(b"new")
    assert os.listdir(tmp_path) == ["frames"] and os.listdir(target) == ["kept"]


def test_what_the_vault_keeps_is_private(tmp_path, sealing_store):
    """Issue 14: segments, key files, the audit log and their directories were 0644/0755. Now every
    file the vault writes is 0600 and every directory 0700 (as created, whatever the umask)."""
    import stat

    import numpy as np

    from keys import Grant, KeyDirectory, PrivateIdentity, Sealed, Sealer

    old = os.umask(0o022)
    try:
        directory = KeyDirectory.init(tmp_path / "keys")
        directory.add(PrivateIdentity.generate("ivan", ["investigator"]).public)
        store = sealing_store(tmp_path / "vault", directory)
        with Sealer(store, directory.signer, "lobby", {"version": 1}, {"face": Grant(("investigator",))},
                    directory.identities) as sealer:
            sealer.add(0, 0, [Sealed(1, "face", (0, 0, 8, 8), np.zeros((8, 8, 3), np.uint8))])
    finally:
        os.umask(old)
    paths = list((tmp_path / "vault").rglob("*"))
    assert any(p.suffix == ".pgv" for p in paths) and any(p.suffix == ".keys" for p in paths)
    for path in [tmp_path / "vault", *paths]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, (path, oct(mode))
        else:
            assert mode & 0o077 == 0, (path, oct(mode))
