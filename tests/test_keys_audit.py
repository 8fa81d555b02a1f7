"""The audit log: durable appends, and every kind of tampering named by entry."""

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys.audit import AuditError, AuditLog
from keys.identity import canonical

IVAN, OLGA = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
KEYS = {"ivan": IVAN.public_key(), "olga": OLGA.public_key()}


@pytest.fixture()
def log(tmp_path):
    audit = AuditLog(tmp_path / "audit.log")
    audit.append("olga", OLGA, "approve", {"case": "C-1"})
    audit.append("ivan", IVAN, "unmask", {"case": "C-1", "tracks": [3], "reason": "theft"})
    audit.append("ivan", IVAN, "unmask", {"case": "C-1", "tracks": [4], "reason": "theft"})
    return audit.path


def lines(path):
    return path.read_bytes().split(b"\n")[:-1]


def write(path, entries):
    path.write_bytes(b"".join(e + b"\n" for e in entries))


def test_appends_chain_and_verify(log):
    assert AuditLog(log).verify(KEYS.get) == 3
    assert [json.loads(line)["seq"] for line in lines(log)] == [1, 2, 3]


def test_concurrent_writers_keep_one_chain(tmp_path):
    """Threads and processes append to one log (cameras sealing, the HTTP API, an unmask run)."""
    import multiprocessing
    import threading

    path, key = tmp_path / "audit.log", OLGA.private_bytes_raw()
    threads = [threading.Thread(target=_append_many, args=(path, key, f"t{n}")) for n in range(4)]
    processes = [multiprocessing.get_context("spawn").Process(target=_append_many, args=(path, key, f"p{n}"))
                 for n in range(2)]
    for worker in [*threads, *processes]:
        worker.start()
    for worker in [*threads, *processes]:
        worker.join(60)
    assert [p.exitcode for p in processes] == [0, 0]
    assert AuditLog(path).verify(lambda actor: OLGA.public_key()) == 6 * 25


def _append_many(path, key, who):
    audit, signer = AuditLog(path), Ed25519PrivateKey.from_private_bytes(key)
    for n in range(25):
        audit.append("olga", signer, "note", {"who": who, "n": n})


def test_edited_entry_named(log):
    entries = lines(log)
    entries[1] = entries[1].replace(b'"tracks":[3]', b'"tracks":[5]')
    write(log, entries)
    with pytest.raises(AuditError, match="entry 2 .*signature does not verify"):
        AuditLog(log).verify(KEYS.get)


def test_deleted_and_reordered_entries_named(log):
    entries = lines(log)
    write(log, [entries[0], entries[2]])
    with pytest.raises(AuditError, match="entry 2 .*out of order"):
        AuditLog(log).verify(KEYS.get)
    write(log, [entries[0], entries[2], entries[1]])
    with pytest.raises(AuditError, match="entry 2 .*out of order"):
        AuditLog(log).verify(KEYS.get)


def test_re_signed_by_another_actor_and_truncation(log):
    entries = lines(log)
    body = {k: v for k, v in json.loads(entries[2]).items() if k != "signature"}
    body["actor"] = "olga"
    entries[2] = canonical({**body, "signature": IVAN.sign(canonical(body)).hex()})
    write(log, entries)
    with pytest.raises(AuditError, match="entry 3 .*signature does not verify"):
        AuditLog(log).verify(KEYS.get)
    log.write_bytes(log.read_bytes()[:-10])
    with pytest.raises(AuditError, match="truncated"):
        AuditLog(log).verify(KEYS.get)


def test_unknown_actor_and_dropped_first_entry(log):
    with pytest.raises(AuditError, match="entry 1 .*unknown actor 'olga'"):
        AuditLog(log).verify({"ivan": KEYS["ivan"]}.get)
    write(log, lines(log)[1:])
    with pytest.raises(AuditError, match="entry 1 .*out of order"):
        AuditLog(log).verify(KEYS.get)


def test_log_that_is_a_directory_refuses(tmp_path):
    (tmp_path / "audit.log").mkdir()
    with pytest.raises(AuditError, match="cannot write the audit log"):
        AuditLog(tmp_path / "audit.log").append("ivan", IVAN, "unmask", {})


def _signed_lines(count, signer=OLGA, actor="olga"):
    """``count`` valid entries as the log holds them, without fsyncing each one."""
    import hashlib

    prev, out = "0" * 64, []
    for seq in range(1, count + 1):
        body = {"seq": seq, "time": "2026-11-22T00:00:00+00:00", "actor": actor, "action": "note",
                "details": {"n": seq}, "prev": prev}
        line = canonical({**body, "signature": signer.sign(canonical(body)).hex()})
        out.append(line)
        prev = hashlib.sha256(line).hexdigest()
    return out


def test_append_reads_only_the_tail_of_a_long_log(tmp_path, monkeypatch):
    """Appending to a 10,000-entry log reads a few KB (backwards from the end), not the log."""
    import os

    import keys.audit as audit_module

    path = tmp_path / "audit.log"
    write(path, _signed_lines(10_000))
    assert path.stat().st_size > 2_000_000

    class CountingOs:  # os, except that pread counts what it returns and read refuses
        bytes_read = 0

        def __getattr__(self, name):
            return getattr(os, name)

        def pread(self, fd, n, offset):
            data = os.pread(fd, n, offset)
            CountingOs.bytes_read += len(data)
            return data

        def read(self, *args):
            raise AssertionError("os.read: reading the log from the start?")

    def no_open(*args, **kwargs):
        raise AssertionError("the log was opened with open(): read whole?")

    monkeypatch.setattr(audit_module, "open", no_open, raising=False)
    monkeypatch.setattr(audit_module, "os", CountingOs())
    monkeypatch.setattr(audit_module.Path, "read_bytes", lambda self: no_open())
    entry = AuditLog(path).append("olga", OLGA, "note", {"n": 10_001})
    assert entry["seq"] == 10_001
    assert 0 < CountingOs.bytes_read <= 8192
    monkeypatch.undo()
    assert AuditLog(path).verify(lambda actor: OLGA.public_key()) == 10_001


def test_append_after_a_torn_or_edited_tail_still_counts_every_line(tmp_path):
    """A tail that is not a whole entry: the next entry takes the place after every line, as before."""
    path = tmp_path / "audit.log"
    entries = _signed_lines(3)
    path.write_bytes(b"".join(e + b"\n" for e in entries) + entries[0][:40])  # a torn write
    assert AuditLog(path).append("olga", OLGA, "note", {})["seq"] == 5
    path.write_bytes(b"".join(e + b"\n" for e in entries[:2]) + b"not json\n")
    assert AuditLog(path).append("olga", OLGA, "note", {})["seq"] == 4
    path.write_bytes(b"".join(e + b"\n" for e in entries) + b"\n")  # a blank last line
    assert AuditLog(path).append("olga", OLGA, "note", {})["seq"] == 4
    with pytest.raises(AuditError, match="entry 4 .*malformed"):  # the damage itself is verify's to name
        AuditLog(path).verify(KEYS.get)


def test_entries_is_the_one_reader(log, tmp_path):
    audit = AuditLog(log)
    assert [e["seq"] for e in audit.entries()] == [1, 2, 3]
    assert audit.entries()[1]["details"]["tracks"] == [3]
    assert audit.exists() and not AuditLog(tmp_path / "none.log").exists()
    assert AuditLog(tmp_path / "none.log").entries() == []
    with pytest.raises(AuditError, match="cannot read the audit log"):
        AuditLog(tmp_path / "none.log").verify(KEYS.get)
    write(log, [*lines(log), b"", b"[1, 2]", b"\xff{"])
    assert [e.get("seq") for e in audit.entries()] == [1, 2, 3, None, None]
    assert audit.entries()[3:] == [{"malformed": "[1, 2]"}, {"malformed": "\ufffd{"}]


# --- the copy in the object store (keys/audit_mirror.py) -------------------------------------------

def test_the_copy_in_the_store_follows_rebuilds_and_refuses_a_fork(tmp_path):
    from keys.audit_mirror import AuditMirror
    from keys.objects import MemoryObjects

    objects = MemoryObjects()
    node = AuditLog(tmp_path / "node.log")
    node.mirror = AuditMirror(objects)
    for n in range(3):
        node.append("ivan", IVAN, "unmask", {"n": n})
    assert objects.list("audit/") == [f"audit/{n:012d}.json" for n in (1, 2, 3)]
    assert [objects.get(f"audit/{n:012d}.json") for n in (1, 2, 3)] == node.lines()

    # the node's disk is gone: the copy rebuilds the log byte for byte, and it verifies
    fresh = AuditLog(tmp_path / "fresh.log")
    assert AuditMirror(objects).sync(fresh) == (0, 3)
    assert fresh.path.read_bytes() == node.path.read_bytes()
    assert fresh.verify(lambda actor: IVAN.public_key()) == 3

    # an entry appended elsewhere (an unmask of a dead node's footage) reaches the node at its next start
    fresh.mirror = AuditMirror(objects)
    fresh.append("ivan", IVAN, "unmask", {"n": 3})
    assert AuditMirror(objects).sync(node) == (0, 1) and node.path.read_bytes() == fresh.path.read_bytes()

    # a put that failed is made by the next sync; two writers at one place in the chain are refused
    objects.delete("audit/000000000004.json")
    assert AuditMirror(objects).sync(node) == (1, 0)
    node.mirror = None
    node.append("ivan", IVAN, "unmask", {"n": "node"})
    fresh.append("ivan", IVAN, "unmask", {"n": "elsewhere"})
    with pytest.raises(AuditError, match="entry 5 differs from its copy"):
        AuditMirror(objects).sync(node)
