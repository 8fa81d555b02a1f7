"""Sealing of original pixels, key escrow, and the audit log: the whole API is this package's ``__all__``.

``keys`` imports nothing from ``gateway`` or ``redaction``; they import ``keys``, and only
from here (never a submodule). Every error it raises on purpose is an :class:`EscrowError`;
verifications that find damage raise :class:`IntegrityError`. Formats: docs/vault-format.md.

The modules, one concept each:

- :mod:`.errors` the error tree (:class:`EscrowError` and its subclasses).
- :mod:`.durable` the one durable-write helper: :func:`atomic_path`, :func:`write_durably`, :func:`atomic_dir`.
- :mod:`.identity` people's keys (private halves encrypted at rest).
- :mod:`.directory` the key directory: the gateway's signing key and the signed roster.
- :mod:`.wrap` HPKE wrapping of data keys to people, with k-of-n quorums.
- :mod:`.record` one sealed region: the byte layout and its AES-GCM sealing.
- :mod:`.vault` segments: their byte layout, writer, reader and hash chain.
- :mod:`.objects` the object-store seam (:class:`ObjectStore`) and :class:`LocalObjects`.
- :mod:`.s3` :class:`S3Objects`: the vault's objects in an S3-compatible bucket (boto3), with Object Lock.
- :mod:`.store` the vault (:class:`VaultStore`): what is kept where; no path leaves it.
- :mod:`.cosigner` the online co-signer (OpenBao transit): :class:`CoSigner`, :func:`set_up`, people's access.
- :mod:`.audit` the hash-chained, signed, append-only audit log (:class:`AuditLog`).
- :mod:`.audit_mirror` its copy in the object store, one object per entry (:class:`AuditMirror`).
- :mod:`.seal` the :class:`Sealer` the redaction side holds (public keys only).
- :mod:`.unmask` audited selective restoration (:class:`Unmask`), :func:`recording_tracks`, :func:`regions_at`
  and :func:`tracks_at`.
- :mod:`.verification` :func:`verify_vault` and :func:`verify_audit`.
- :mod:`.retention` :func:`shred`: crypto-shredding, logged first.
- :mod:`.requests` unmask requests a quorum on several machines approves and peels in turn (:class:`UnmaskRequest`).
- :mod:`.reconcile` every share OpenBao gave out against the unmask entries (:func:`reconcile_shares`).
- :mod:`.evidence` signed evidence manifests of unmask outputs (:func:`make_manifest`, :func:`verify_manifest`).
"""

from .audit import AuditLog, verify_entry, verify_lines
from .audit_mirror import AUDIT_PREFIX, AuditMirror
from .cosigner import CoSigner, grant_access, nodes_of, revoke_access, set_up
from .directory import KeyDirectory
from .durable import atomic_dir, atomic_path, write_durably
from .errors import (
    AuditError,
    CoSignerRefused,
    CoSignerUnavailable,
    DirectoryError,
    EscrowError,
    IdentityError,
    IntegrityError,
    ObjectMissing,
    RecordError,
    StorageUnavailable,
    UnmaskError,
    UnwrapError,
    VaultError,
)
from .evidence import Evidence, make_manifest, verify_manifest
from .handover import check_handovers, handover_link
from .identity import ROLES, UNMASK_ROLES, PrivateIdentity, PublicIdentity, canonical
from .nodes import NODE_PREFIX, NodeKey, NodeSigner, actor_of, node_actor, node_key_path
from .objects import LocalObjects, ObjectStore
from .reconcile import Uncovered, reconcile_shares
from .requests import UnmaskRequest
from .retention import Shredded, shred
from .s3 import ObjectLock, S3Objects
from .seal import Sealed, Sealer, VaultRef, check_grants, grants_of
from .store import GATEWAY_ACTOR, VaultStore, check_camera
from .unmask import (
    SealedRegion,
    Selection,
    TrackSummary,
    Unmask,
    recording_tracks,
    regions_at,
    tracks_at,
)
from .vault import Segment
from .verification import VaultReport, verify_audit, verify_vault
from .wrap import Grant

__all__ = [
    "GATEWAY_ACTOR",
    "NODE_PREFIX",
    "ROLES",
    "UNMASK_ROLES",
    "AuditError",
    "AUDIT_PREFIX",
    "AuditLog",
    "AuditMirror",
    "CoSigner",
    "CoSignerRefused",
    "CoSignerUnavailable",
    "DirectoryError",
    "EscrowError",
    "Evidence",
    "Grant",
    "IdentityError",
    "IntegrityError",
    "KeyDirectory",
    "LocalObjects",
    "NodeKey",
    "NodeSigner",
    "ObjectLock",
    "ObjectMissing",
    "ObjectStore",
    "PrivateIdentity",
    "PublicIdentity",
    "RecordError",
    "S3Objects",
    "Sealed",
    "SealedRegion",
    "Sealer",
    "Segment",
    "Selection",
    "Shredded",
    "StorageUnavailable",
    "TrackSummary",
    "Uncovered",
    "Unmask",
    "UnmaskError",
    "UnmaskRequest",
    "UnwrapError",
    "VaultError",
    "VaultRef",
    "VaultReport",
    "VaultStore",
    "actor_of",
    "atomic_dir",
    "atomic_path",
    "canonical",
    "check_camera",
    "check_grants",
    "check_handovers",
    "grant_access",
    "grants_of",
    "handover_link",
    "make_manifest",
    "node_actor",
    "node_key_path",
    "nodes_of",
    "reconcile_shares",
    "recording_tracks",
    "regions_at",
    "revoke_access",
    "set_up",
    "shred",
    "tracks_at",
    "verify_audit",
    "verify_entry",
    "verify_lines",
    "verify_manifest",
    "verify_vault",
    "write_durably",
]
