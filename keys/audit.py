"""The audit log: append-only, hash-chained, every entry signed by whoever acted.

One JSON object per line. Each entry carries its sequence number, time, actor, action and
details, the SHA-256 of the previous line (``prev``; 64 zeros for the first), and the
actor's Ed25519 signature over the canonical JSON of all those fields. :meth:`AuditLog.append`
returns only once the line is flushed and fsynced: callers write the entry *before* acting
(before any data key is unwrapped), and a failure to write means they must not act.
:func:`verify` names the first broken entry: edited, deleted, reordered, inserted, truncated
or signed by the wrong key.
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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import AuditError
from .identity import canonical

GENESIS = "0" * 64



def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _tail(self) -> tuple[int, str]:
        """(next sequence number, hash of the last line), from the log as it is on disk."""
        if not self.path.exists():
            return 1, GENESIS
        last = b""
        count = 0
        with open(self.path, "rb") as log:
            for line in log:
                if line.strip():
                    last, count = line.rstrip(b"\n"), count + 1
        return count + 1, hashlib.sha256(last).hexdigest() if last else GENESIS

    def append(self, actor: str, signer: Ed25519PrivateKey, action: str, details: dict, time: str | None = None) -> dict:
        """Write one signed entry durably; raises :class:`AuditError` if it cannot."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                # one writer at a time, across threads (each camera's sealer, the HTTP API) and
                # processes (an unmask run while serve is sealing): the tail read and the append
                # must not interleave, or two entries would claim the same place in the chain
                fcntl.flock(fd, fcntl.LOCK_EX)
                seq, prev = self._tail()
                body = {"seq": seq, "time": time or _now(), "actor": actor, "action": action,
                        "details": details, "prev": prev}
                entry = {**body, "signature": signer.sign(canonical(body)).hex()}
                line = canonical(entry) + b"\n"
                if os.write(fd, line) != len(line):
                    raise OSError("short write")
                os.fsync(fd)
            finally:
                os.close(fd)  # releases the lock
        except OSError as exc:
            raise AuditError(f"cannot write the audit log {self.path}: {exc.strerror or exc}") from None
        return entry


def _check_approvals(where: str, details: object, key_of: Callable[[str], Ed25519PublicKey | None]) -> None:
    """``details.approvals``: each named person's signature over the rest of the details."""
    if not isinstance(details, dict) or "approvals" not in details:
        return
    request = canonical({k: v for k, v in details.items() if k != "approvals"})
    approvals = details["approvals"]
    if not isinstance(approvals, dict) or not approvals:
        raise AuditError(f"{where}: malformed approvals")
    for name, signature in sorted(approvals.items()):
        key = key_of(name)
        if key is None:
            raise AuditError(f"{where}: approval by unknown identity {name!r}")
        try:
            key.verify(bytes.fromhex(signature), request)
        except (InvalidSignature, ValueError, TypeError):
            raise AuditError(f"{where}: approval by {name!r} does not verify") from None


def verify(path: Path, key_of: Callable[[str], Ed25519PublicKey | None]) -> int:
    """Check the whole chain; returns the number of entries or raises at the first broken one.

    ``key_of(actor)`` gives the public key an actor signs with, or None if unknown.
    """
    prev, count = GENESIS, 0
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as exc:
        raise AuditError(f"cannot read the audit log {path}: {exc.strerror or exc}") from None
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        raise AuditError(f"audit log entry {len(lines)} (line {len(lines)}): truncated (no final newline)")
    for number, line in enumerate(lines, start=1):
        where = f"audit log entry {number} (line {number})"
        try:
            entry = json.loads(line)
            body = {k: entry[k] for k in ("seq", "time", "actor", "action", "details", "prev")}
            signature = bytes.fromhex(entry["signature"])
        except (ValueError, KeyError, TypeError):
            raise AuditError(f"{where}: malformed") from None
        if canonical(entry) != line:
            raise AuditError(f"{where}: not in canonical form (edited?)")
        if body["seq"] != number:
            raise AuditError(f"{where}: sequence {body['seq']} out of order (entry deleted or inserted?)")
        if body["prev"] != prev:
            raise AuditError(f"{where}: hash chain broken (previous entry changed, deleted or reordered)")
        key = key_of(body["actor"])
        if key is None:
            raise AuditError(f"{where}: unknown actor {body['actor']!r}")
        try:
            key.verify(signature, canonical(body))
        except InvalidSignature:
            raise AuditError(f"{where}: signature does not verify") from None
        _check_approvals(where, body["details"], key_of)
        prev, count = hashlib.sha256(line).hexdigest(), number
    return count
