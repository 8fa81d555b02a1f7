"""The one durable-write helper: a file is replaced whole or not at all, and no temporary stays."""

import os
import stat

import pytest

import keys.durable as durable
from keys import atomic_path, write_durably


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
