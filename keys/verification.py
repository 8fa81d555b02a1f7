"""Checking a whole vault, or its audit log, for damage: what ``vault verify`` and ``audit verify`` run.

What :func:`verify_vault` checks, in this order, stopping at the first damage with an
:class:`~keys.errors.IntegrityError` that names it:

1. the audit log (if there is one): every entry's chain link, sequence and signature;
2. per camera (every camera in the vault, and every camera the log says sealed something):
   its segment chain (:meth:`~keys.store.VaultStore.verify_chain`);
3. the chain's head against the log's last ``seal`` entry for the camera: a chain that stops
   short of the segment the log records as sealed has lost its newest segments, which the
   chain alone cannot tell;
4. every segment's key file: present and belonging to its segment, or absent with a ``shred``
   entry in the log that names it.

Segments left unfinished by a crash are not damage: they are counted per camera in the
report, and recovered when sealing resumes. Nothing is repaired or changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import AuditError, IntegrityError, VaultError
from .store import VaultStore
from .vault import segment_name

__all__ = ["VaultReport", "verify_audit", "verify_vault"]


@dataclass(frozen=True)
class VaultReport:
    """What :func:`verify_vault` found intact."""

    cameras: tuple[str, ...]  # the cameras the vault holds (VaultStore.cameras())
    segments: int  # segments verified, all cameras together
    entries: int  # audit log entries verified (0: no log yet)
    partials: dict[str, int] = field(default_factory=dict)  # camera -> unfinished segments, only where > 0


def verify_audit(store: VaultStore) -> int:
    """Verify the vault's audit log; the number of entries, or :class:`IntegrityError` naming the first broken one.

    A log that cannot be read (including one that does not exist yet; see
    :meth:`~keys.audit.AuditLog.exists`) raises too.
    """
    try:
        return store.audit.verify(store.key_of)
    except AuditError as exc:
        raise IntegrityError(str(exc)) from None


def verify_vault(store: VaultStore) -> VaultReport:
    """Check every segment chain, key file and the audit log against each other (see the module docstring)."""
    log: list[dict] = []
    if store.audit.exists():
        verify_audit(store)
        try:
            log = store.audit.entries()
        except AuditError as exc:
            raise IntegrityError(str(exc)) from None
    shredded = {tuple(s) for e in log if e["action"] == "shred" for s in e["details"]["segments"]}
    heads: dict[str, int] = {}
    for entry in log:
        if entry["action"] == "seal":
            heads[entry["details"]["camera"]] = entry["details"]["segments"][1]
    cameras = store.cameras()
    total, partials = 0, {}
    for camera in sorted(set(cameras) | set(heads)):
        try:
            chain = list(store.verify_chain(camera))
        except VaultError as exc:
            raise IntegrityError(f"camera {camera!r}: {exc}") from None
        if camera in heads and (not chain or chain[-1].number < heads[camera]):
            missing = segment_name(chain[-1].number + 1 if chain else 1)
            raise IntegrityError(f"camera {camera!r}: segment {missing} is missing (the audit log records segments "
                                 f"up to {segment_name(heads[camera])} as sealed)")
        for segment in chain:
            if store.has_key_file(camera, segment.number):
                try:
                    store.wraps(camera, segment)
                except VaultError as exc:
                    raise IntegrityError(f"camera {camera!r}: {exc}") from None
            elif (camera, segment.number) not in shredded:
                raise IntegrityError(f"camera {camera!r}: key file of {segment_name(segment.number)} is missing "
                                     "and no shred is logged")
        total += len(chain)
        finished = {segment.number for segment in chain}
        unfinished = [n for n in store.partial_segments(camera) if n not in finished]
        if unfinished:
            partials[camera] = len(unfinished)
    return VaultReport(tuple(cameras), total, len(log), partials)
