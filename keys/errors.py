"""Every error the keys package raises on purpose derives from :class:`EscrowError`.

The tree, and what a caller does with each::

    EscrowError               catch this one type; its message is safe to show
      AuditError              the audit log cannot be written or read, or does not verify
      DirectoryError          a key directory missing, malformed or failing its signature check
      IdentityError           an identity file that does not open (always the same words)
      RecordError             a sealed record malformed or not opening (no crypto detail)
      UnwrapError             not a recipient, quorum incomplete, wrong key: always the same words
      VaultError              a segment, key file, policy or anchor missing, malformed or failing
      UnmaskError             an unmask refused or not completed
      ObjectMissing           an object store has no object of that name
      StorageUnavailable      the vault's object store (a bucket) cannot be reached, or refuses:
                              an availability problem, said plainly; nothing is damaged
      CoSignerUnavailable     the co-signer (OpenBao) does not answer, is sealed or cannot audit:
                              an availability problem, said plainly; try again once it is back
      CoSignerRefused         the co-signer refused (not authorised, wrong track, no such key):
                              deliberately the same words whatever the reason
      IntegrityError          a verification found damage (the command line exits 1 for it,
                              2 for every other EscrowError)

Crypto failures stay opaque (:class:`IdentityError`, :class:`UnwrapError`,
:class:`RecordError`): what went wrong goes to the audit log, not to the caller. Nothing here
imports from the rest of the package, so every module can import it.
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "CoSignerRefused",
    "CoSignerUnavailable",
    "DirectoryError",
    "EscrowError",
    "IdentityError",
    "IntegrityError",
    "ObjectMissing",
    "RecordError",
    "StorageUnavailable",
    "UnmaskError",
    "UnwrapError",
    "VaultError",
]


class EscrowError(Exception):
    """Base of every error the keys package raises on purpose; the message is safe to show."""


class AuditError(EscrowError):
    """The log cannot be written, or does not verify; the message names the entry."""


class DirectoryError(EscrowError):
    """A key directory that is missing, malformed or fails its signature check."""


class IdentityError(EscrowError):
    """An identity file that cannot be opened; deliberately says nothing about why."""


class RecordError(EscrowError):
    """A record that is malformed, or does not open: deliberately without crypto detail."""


class UnwrapError(EscrowError):
    """Not a recipient, quorum incomplete, wrong key or damaged wrap: deliberately the same."""


class VaultError(EscrowError):
    """A segment or key file that is missing, malformed, or fails its checks."""


class UnmaskError(EscrowError):
    """An unmask that is refused or cannot be completed; the message is safe to show."""


class CoSignerUnavailable(EscrowError):
    """OpenBao does not answer, is sealed, or cannot write its audit log; nothing was decided."""


class CoSignerRefused(EscrowError):
    """OpenBao refused a request; deliberately says nothing about why (its audit log does)."""


class ObjectMissing(EscrowError):
    """An object store holds no object of the name asked for (:meth:`keys.objects.ObjectStore.get`)."""


class StorageUnavailable(EscrowError):
    """The vault's object store failed (unreachable, timed out, credentials or bucket refused): an
    availability problem, never taken for damage; the message names the store, not a credential."""


class IntegrityError(EscrowError):
    """A verification found damage: a segment, key file or audit entry altered, missing or out of place.

    Raised by :func:`keys.verify_vault` and :func:`keys.verify_audit` with the message of the
    first damage found (``camera 'x': ...``, ``audit log entry 3 (line 3): ...``).
    """
