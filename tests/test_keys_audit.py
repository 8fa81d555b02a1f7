"""The audit log: durable appends, and every kind of tampering named by entry."""

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys.audit import AuditError, AuditLog, verify
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
    assert verify(log, KEYS.get) == 3
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
    assert verify(path, lambda actor: OLGA.public_key()) == 6 * 25


def _append_many(path, key, who):
    audit, signer = AuditLog(path), Ed25519PrivateKey.from_private_bytes(key)
    for n in range(25):
        audit.append("olga", signer, "note", {"who": who, "n": n})


def test_edited_entry_named(log):
    entries = lines(log)
    entries[1] = entries[1].replace(b'"tracks":[3]', b'"tracks":[5]')
    write(log, entries)
    with pytest.raises(AuditError, match="entry 2 .*signature does not verify"):
        verify(log, KEYS.get)


def test_deleted_and_reordered_entries_named(log):
    entries = lines(log)
    write(log, [entries[0], entries[2]])
    with pytest.raises(AuditError, match="entry 2 .*out of order"):
        verify(log, KEYS.get)
    write(log, [entries[0], entries[2], entries[1]])
    with pytest.raises(AuditError, match="entry 2 .*out of order"):
        verify(log, KEYS.get)


def test_re_signed_by_another_actor_and_truncation(log):
    entries = lines(log)
    body = {k: v for k, v in json.loads(entries[2]).items() if k != "signature"}
    body["actor"] = "olga"
    entries[2] = canonical({**body, "signature": IVAN.sign(canonical(body)).hex()})
    write(log, entries)
    with pytest.raises(AuditError, match="entry 3 .*signature does not verify"):
        verify(log, KEYS.get)
    log.write_bytes(log.read_bytes()[:-10])
    with pytest.raises(AuditError, match="truncated"):
        verify(log, KEYS.get)


def test_unknown_actor_and_dropped_first_entry(log):
    with pytest.raises(AuditError, match="entry 1 .*unknown actor 'olga'"):
        verify(log, {"ivan": KEYS["ivan"]}.get)
    write(log, lines(log)[1:])
    with pytest.raises(AuditError, match="entry 1 .*out of order"):
        verify(log, KEYS.get)


def test_log_that_is_a_directory_refuses(tmp_path):
    (tmp_path / "audit.log").mkdir()
    with pytest.raises(AuditError, match="cannot write the audit log"):
        AuditLog(tmp_path / "audit.log").append("ivan", IVAN, "unmask", {})
