"""Evidence manifests: what an unmask produced, for whom, and under which audit entry, signed.

``unmask`` writes ``<output>.evidence.json`` beside its output::

    {"manifest": {"format": "privacy-gateway-evidence", "version": 1, "created",
                  "camera", "recording", "case", "reason", "selection", "tracks", "regions",
                  "watermark", "outputs": [{"name", "sha256", "bytes"}, ...],
                  "identities": [{"name", "fingerprint", "signing"}, ...],
                  "audit": {"seq", "line_sha256", "vault", "gateway"}},
     "signatures": {name: hex Ed25519 signature of the canonical "manifest", ...}}

Every person who took part signs it with their identity's key. :func:`verify_manifest` checks
the signatures against the public keys the manifest names (and, given them, against the key
directory's), the outputs' digests, and (given the vault's verified log) that the audit entry
it names is the one the log holds, with the same case, reason, people and tracks.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import IntegrityError
from .identity import PrivateIdentity, canonical, fingerprint

__all__ = ["Evidence", "file_digest", "make_manifest", "verify_manifest"]

_FORMAT = "privacy-gateway-evidence"
_VERSION = 1
_BOUND = ("camera", "recording", "case", "reason", "selection", "tracks", "regions", "watermark")


def file_digest(path: Path) -> tuple[str, int]:
    """(SHA-256 hex, size) of a file, read in blocks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def make_manifest(holders: list[PrivateIdentity], entry: dict, outputs: list[tuple[str, Path]], vault: str,
                  gateway: str) -> bytes:
    """The signed manifest of an unmask whose audit ``entry`` (as appended) wrote ``outputs``
    (name as recorded, path to hash); ``vault`` id, ``gateway`` key fingerprint."""
    line_sha256 = hashlib.sha256(canonical(entry)).hexdigest()  # the entry's line in the log
    details = entry["details"]
    files = []
    for name, path in outputs:
        sha256, size = file_digest(path)
        files.append({"name": name, "sha256": sha256, "bytes": size})
    manifest = {"format": _FORMAT, "version": _VERSION,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                **{k: details[k] for k in _BOUND}, "outputs": files,
                "identities": [{"name": h.public.name, "fingerprint": fingerprint(h.public.signing),
                                "signing": base64.b64encode(h.public.signing).decode("ascii")} for h in holders],
                "audit": {"seq": entry["seq"], "line_sha256": line_sha256, "vault": vault, "gateway": gateway}}
    body = canonical(manifest)
    signatures = {h.public.name: h.signing.sign(body).hex() for h in holders}
    return (json.dumps({"manifest": manifest, "signatures": signatures}, indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class Evidence:
    """What :func:`verify_manifest` found intact."""

    case: str
    signers: tuple[str, ...]
    outputs: tuple[str, ...]
    audit_seq: int
    checked_log: bool  # the audit entry was compared with the vault's log


def verify_manifest(data: bytes, base: Path, known: Callable[[str], bytes | None] | None = None,
                    log: list[dict] | None = None) -> Evidence:
    """Check a manifest (its bytes) and the outputs it names, found under ``base``; raises
    :class:`IntegrityError` at the first damage. ``known(name)``: that person's Ed25519 public
    key as the key directory has it (None: unknown); ``log``: the vault's audit log, verified."""
    try:
        document = json.loads(data)
        manifest, signatures = document["manifest"], document["signatures"]
        if manifest["format"] != _FORMAT or manifest["version"] != _VERSION:
            raise ValueError
        people = {p["name"]: base64.b64decode(p["signing"], validate=True) for p in manifest["identities"]}
        outputs = [(o["name"], o["sha256"], o["bytes"]) for o in manifest["outputs"]]
        audit = manifest["audit"]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("not an evidence manifest (malformed)") from None
    body = canonical(manifest)
    if not people or set(signatures) != set(people):
        raise IntegrityError("the manifest's signatures do not match the people it names")
    for name, raw in people.items():
        if known is not None:
            expected = known(name)
            if expected is None:
                raise IntegrityError(f"{name} is not in the key directory")
            if expected != raw:
                raise IntegrityError(f"{name}'s key in the manifest is not the one in the key directory")
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(bytes.fromhex(signatures[name]), body)
        except (InvalidSignature, ValueError):
            raise IntegrityError(f"{name}'s signature of the manifest does not verify") from None
    for name, sha256, size in outputs:
        path = base / name
        if not path.is_file():
            raise IntegrityError(f"{name}: missing")
        if file_digest(path) != (sha256, size):
            raise IntegrityError(f"{name}: altered (digest mismatch)")
    if log is not None:
        seq = audit["seq"]
        entry = log[seq - 1] if 0 < seq <= len(log) else None
        if entry is None or entry.get("action") != "unmask":
            raise IntegrityError(f"the vault's audit log has no unmask entry {seq}")
        line = canonical(entry)
        if hashlib.sha256(line).hexdigest() != audit["line_sha256"]:
            raise IntegrityError(f"audit entry {seq} is not the one the manifest names")
        details = entry["details"]
        if any(details.get(k) != manifest[k] for k in _BOUND) or not set(people) <= set(details["identities"]):
            raise IntegrityError(f"audit entry {seq} does not describe this unmask")
    return Evidence(manifest["case"], tuple(sorted(people)), tuple(o[0] for o in outputs), audit["seq"],
                    log is not None)
