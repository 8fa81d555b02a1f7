"""The audit log: append-only, hash-chained, every entry signed by whoever acted.

One JSON object per line. Each entry carries its sequence number, time, actor, action and
details, the SHA-256 of the previous line (``prev``; 64 zeros for the first), and the
actor's Ed25519 signature over the canonical JSON of all those fields. The actor is a person,
``"gateway"`` (the gateway key) or, on a cluster node, ``node:<name>`` (that node's key, certified
in the key directory's roster; a revoked one counts only on entries dated before its revocation:
keys/nodes.py). :meth:`AuditLog.append`
returns only once the line is flushed and fsynced: callers write the entry *before* acting
(before any data key is unwrapped), and a failure to write means they must not act.
:meth:`AuditLog.verify` names the first broken entry: edited, deleted, reordered, inserted,
truncated or signed by the wrong key. :meth:`AuditLog.entries` is the one reader of entries.

An append costs the same at the ten-thousandth entry as at the first: under the exclusive
``flock`` it reads the log backwards from the end only as far as the last line, whose
``seq`` and SHA-256 give the next entry's place in the chain. Only a tail that is not a
whole entry (a torn write, a hand edit) makes it count the lines from the start, as before.
The log is a local file: the lock and ``O_APPEND`` are what keep concurrent writers (every
camera's sealer, the HTTP API, an ``unmask`` run beside ``serve``) on one chain.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .durable import fsync_dir
from .errors import AuditError
from .identity import canonical
from .nodes import NODE_PREFIX, NodeKeys

__all__ = ["GENESIS", "AuditLog", "verify_entry", "verify_lines"]

GENESIS = "0" * 64
_TAIL_CHUNK = 4096  # bytes read per step backwards; a typical entry is 300-2000 bytes
_FIELDS = ("seq", "time", "actor", "action", "details", "prev")

KeyOf = Callable[[str], Ed25519PublicKey | NodeKeys | None]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        #: called with (seq, line digest) after every append: where the head is checkpointed out of
        #: this file's reach (the co-signer; keys.store sets it when sealing)
        self.checkpoint: Callable[[int, str], None] | None = None
        #: called with (seq, line) after every append, before :attr:`checkpoint`: where a copy of the
        #: log is kept off the node (keys.audit_mirror; set when the vault is in a bucket)
        self.mirror: Callable[[int, bytes], None] | None = None

    def exists(self) -> bool:
        """Whether anything was ever logged (the file is created by the first append)."""
        return self.path.exists()

    def head(self) -> tuple[int, str]:
        """(sequence number, SHA-256 of the line) of the last entry; ``(0, GENESIS)`` before the first.

        What segments and the co-signer keep as checkpoints of the log (:meth:`verify`'s ``anchors``).
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return 0, GENESIS
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # not between another writer's tail read and its append
            seq, last = _tail(fd)
        finally:
            os.close(fd)
        return seq - 1, last

    # --- writing ------------------------------------------------------------------------------

    def append(self, actor: str, signer: Ed25519PrivateKey, action: str, details: dict, time: str | None = None) -> dict:
        """Write one signed entry durably; raises :class:`AuditError` if it cannot."""
        try:
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                # one writer at a time, across threads (each camera's sealer, the HTTP API) and
                # processes (an unmask run while serve is sealing): the tail read and the append
                # must not interleave, or two entries would claim the same place in the chain
                fcntl.flock(fd, fcntl.LOCK_EX)
                seq, prev = _tail(fd)
                body = {"seq": seq, "time": time or _now(), "actor": actor, "action": action,
                        "details": details, "prev": prev}
                entry = {**body, "signature": signer.sign(canonical(body)).hex()}
                line = canonical(entry) + b"\n"
                if os.write(fd, line) != len(line):
                    raise OSError("short write")
                os.fsync(fd)
            finally:
                os.close(fd)  # releases the lock
            if created:
                fsync_dir(self.path.parent)
        except OSError as exc:
            raise AuditError(f"cannot write the audit log {self.path}: {exc.strerror or exc}") from None
        if self.mirror is not None:
            self.mirror(seq, line[:-1])
        if self.checkpoint is not None:
            self.checkpoint(seq, hashlib.sha256(line[:-1]).hexdigest())
        return entry

    def extend(self, lines: list[bytes]) -> None:
        """Append entries already written and signed elsewhere (a copy of this log's tail), durably.

        Each line must take the next place in the chain (its ``seq`` and ``prev``); raises
        :class:`AuditError` at the first that does not, having appended none of them."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                seq, prev = _tail(fd)
                for line in lines:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        entry = None
                    if not isinstance(entry, dict) or entry.get("seq") != seq or entry.get("prev") != prev:
                        raise AuditError(f"{self.path}: entry {seq} of the copy does not continue the log")
                    seq, prev = seq + 1, hashlib.sha256(line).hexdigest()
                data = b"".join(line + b"\n" for line in lines)
                if data and os.write(fd, data) != len(data):
                    raise OSError("short write")
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise AuditError(f"cannot write the audit log {self.path}: {exc.strerror or exc}") from None

    def lines(self) -> list[bytes]:
        """Every non-blank line, as stored (no newline); ``[]`` before the first append."""
        if not self.exists():
            return []
        return [line for line in self._read().split(b"\n") if line.strip()]

    # --- reading ------------------------------------------------------------------------------

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror or exc}") from None

    def entries(self) -> list[dict]:
        """Every entry in order, as written; ``[]`` before the first append.

        Not verified: call :meth:`verify` first where it matters. Blank lines are skipped; a
        line that is not a JSON object comes back as ``{"malformed": <its first 200 characters>}``
        (:meth:`verify` says what is wrong with it). Raises :class:`AuditError` if unreadable.
        """
        if not self.exists():
            return []
        out = []
        for line in self._read().split(b"\n"):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            out.append(entry if isinstance(entry, dict) else {"malformed": line.decode("utf-8", "replace")[:200]})
        return out

    def verify(self, key_of: KeyOf, anchors: list[tuple[int, str, str]] = ()) -> int:
        """Check the whole chain; returns the number of entries or raises at the first broken one.

        ``key_of(actor)`` gives the public key an actor signs with, or None if unknown. A log
        that does not exist cannot be read: :class:`AuditError`, like any other damage.
        ``anchors``: checkpoints kept elsewhere, ``(seq, SHA-256 of that entry's line, where)``;
        the log must hold each one's entry, unchanged (else it was cut or rolled back).
        """
        lines = self._read().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        else:
            raise AuditError(f"audit log entry {len(lines)} (line {len(lines)}): truncated (no final newline)")
        return verify_lines(lines, key_of, anchors)


def verify_lines(lines: list[bytes], key_of: KeyOf, anchors: list[tuple[int, str, str]] = (),
                 log: str = "audit log") -> int:
    """:meth:`AuditLog.verify` on a log's lines as stored (no newlines), wherever they are kept (a
    copy of another node's log); ``log`` names it in messages. Returns the number of entries."""
    prev, count = GENESIS, 0
    digests = {}
    for number, line in enumerate(lines, start=1):
        where = f"{log} entry {number} (line {number})"
        try:
            entry = json.loads(line)
            body = {k: entry[k] for k in _FIELDS}
            signature = bytes.fromhex(entry["signature"])
        except (ValueError, KeyError, TypeError):
            raise AuditError(f"{where}: malformed") from None
        if canonical(entry) != line:
            raise AuditError(f"{where}: not in canonical form (edited?)")
        if body["seq"] != number:
            raise AuditError(f"{where}: sequence {body['seq']} out of order (entry deleted or inserted?)")
        if body["prev"] != prev:
            raise AuditError(f"{where}: hash chain broken (previous entry changed, deleted or reordered)")
        _check_signed(where, body, signature, key_of)
        prev, count = hashlib.sha256(line).hexdigest(), number
        digests[number] = prev
    for seq, digest, source in sorted(anchors, reverse=True):
        if seq > count:
            raise AuditError(f"the {log} has {count} entries, but {source} checkpoints entry {seq} "
                             "(the log was cut, rolled back or replaced)")
        if seq and digests[seq] != digest:
            raise AuditError(f"{log} entry {seq} differs from its checkpoint in {source} (rolled back or "
                             "replaced)")
    return count


def verify_entry(entry: dict, key_of: KeyOf) -> None:
    """Check one entry's signature (and its approvals) on its own, as an unmask elsewhere receives
    entries from the gateway; :class:`AuditError` if it does not hold."""
    where = f"audit log entry {entry.get('seq')!r}"
    try:
        body = {k: entry[k] for k in _FIELDS}
        signature = bytes.fromhex(entry["signature"])
    except (KeyError, TypeError, ValueError):
        raise AuditError(f"{where}: malformed") from None
    _check_signed(where, body, signature, key_of)


def _check_signed(where: str, body: dict, signature: bytes, key_of: KeyOf) -> None:
    """The entry's signature by its actor's key, and every approval in its details."""
    actor = body["actor"]
    key = key_of(actor) if isinstance(actor, str) else None
    if key is None and isinstance(actor, str) and actor.startswith(NODE_PREFIX):
        raise AuditError(f"{where}: signed by {actor!r}, whose key the key directory does not certify")
    if key is None:
        raise AuditError(f"{where}: unknown actor {actor!r}")
    try:
        if isinstance(key, NodeKeys):  # a cluster node's: by a key certified for it, not revoked before the entry
            key.verify_at(signature, canonical(body), body["time"])
        else:
            key.verify(signature, canonical(body))
    except InvalidSignature:
        raise AuditError(f"{where}: signature does not verify") from None
    except ValueError as exc:
        raise AuditError(f"{where}: {exc}") from None
    _check_approvals(where, body["details"], key_of)


def _tail(fd: int) -> tuple[int, str]:
    """(next sequence number, SHA-256 of the last line), reading back from the end of ``fd``."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 1, GENESIS
    start, buffer = size, b""
    while True:  # grow ``buffer`` = the file's bytes [start, size) until it holds the whole last line
        step = min(_TAIL_CHUNK, start)
        start -= step
        chunk = os.pread(fd, step, start)
        if len(chunk) != step:  # changed under us (the lock is advisory): count from the start
            return _count(fd)
        buffer = chunk + buffer
        if not buffer.endswith(b"\n"):
            return _count(fd)  # a torn last line
        cut = buffer.rfind(b"\n", 0, len(buffer) - 1)
        if cut >= 0 or start == 0:
            break
    line = buffer[cut + 1 : -1]
    try:
        seq = json.loads(line)["seq"]
    except (ValueError, KeyError, TypeError):
        seq = None
    if type(seq) is not int or not line.strip():
        return _count(fd)
    return seq + 1, hashlib.sha256(line).hexdigest()


def _count(fd: int) -> tuple[int, str]:
    """The slow way, for a log whose tail is not a whole entry: count the non-blank lines.

    The next entry then claims the place after every line and chains to the last one, as
    appends always did; :meth:`AuditLog.verify` reports the damage.
    """
    chunks, at = [], 0
    while chunk := os.pread(fd, 1 << 20, at):
        chunks.append(chunk)
        at += len(chunk)
    lines = [line for line in b"".join(chunks).split(b"\n") if line.strip()]
    return len(lines) + 1, hashlib.sha256(lines[-1]).hexdigest() if lines else GENESIS


def _check_approvals(where: str, details: object, key_of: KeyOf) -> None:
    """``details.approvals``: each named person's signature over the rest of the details."""
    if not isinstance(details, dict) or "approvals" not in details:
        return
    request = canonical({k: v for k, v in details.items() if k != "approvals"})
    approvals = details["approvals"]
    if not isinstance(approvals, dict) or not approvals:
        raise AuditError(f"{where}: malformed approvals")
    for name, signature in sorted(approvals.items()):
        key = key_of(name)
        if key is None or isinstance(key, NodeKeys):  # a node approves nothing
            raise AuditError(f"{where}: approval by unknown identity {name!r}")
        try:
            key.verify(bytes.fromhex(signature), request)
        except (InvalidSignature, ValueError, TypeError):
            raise AuditError(f"{where}: approval by {name!r} does not verify") from None
