"""Sealing of original pixels and key escrow.

:mod:`.identity` people's keys (private halves encrypted at rest), :mod:`.directory` the
signed roster, :mod:`.wrap` HPKE wrapping with k-of-n quorums, :mod:`.record` sealed region
records, :mod:`.vault` signed and chained segments, :mod:`.store` the vault on disk,
:mod:`.seal` the sealer the redaction side holds (public keys only), :mod:`.unmask` audited
selective restoration, :mod:`.audit` the hash-chained signed log. Formats:
docs/vault-format.md.
"""

from .audit import AuditError, AuditLog
from .directory import DirectoryError, KeyDirectory
from .durable import atomic_path, write_durably
from .errors import EscrowError, IntegrityError, ObjectMissing, RecordError
from .objects import LocalObjects, ObjectStore
from .identity import IdentityError, PrivateIdentity, PublicIdentity
from .seal import Sealed, Sealer, VaultRef, grants_of
from .store import VaultStore
from .unmask import Selection, Unmask, UnmaskError
from .vault import VaultError
from .wrap import Grant, UnwrapError

__all__ = [
    "AuditError",
    "AuditLog",
    "DirectoryError",
    "EscrowError",
    "Grant",
    "IdentityError",
    "IntegrityError",
    "KeyDirectory",
    "LocalObjects",
    "ObjectMissing",
    "ObjectStore",
    "PrivateIdentity",
    "PublicIdentity",
    "RecordError",
    "Sealed",
    "Sealer",
    "Selection",
    "Unmask",
    "UnmaskError",
    "UnwrapError",
    "VaultError",
    "VaultRef",
    "VaultStore",
    "atomic_path",
    "grants_of",
    "write_durably",
]
