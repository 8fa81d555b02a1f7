"""The state seam: where tokens, camera grants, signatures already used and policy activations are kept.

Three small abstract classes, one per concern, each with two implementations: this node's files
(:mod:`.files`, the single-gateway default, byte for byte what it always wrote) and PostgreSQL
(:mod:`.postgres`, shared by every node of a cluster). The classes that use them keep their
in-memory view and their rules (:class:`~gateway.api.access.TokenStore`,
:class:`~gateway.api.access.SignatureChecker`, :class:`~gateway.live.activation.Activations`):
only where a change is written and where it is read back from differ. Every ``put`` receives both
the item changed and everything kept, so a file rewrites the whole and a table writes one row.

All methods block (files are fsynced, the database is across the network): call them off the
event loop. A failure to write raises :class:`OSError` (the database's too:
:class:`~gateway.state.postgres.StateUnavailable`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class TokenRows(ABC):
    """Tokens (as :class:`~gateway.api.access.TokenRecord` fields, ``cameras`` a list or None) and camera grants."""

    #: where they are kept, for messages
    where: str

    @abstractmethod
    def load(self) -> tuple[list[dict], dict[str, list[str]]]:
        """Every token kept and every identity's granted cameras; raises OSError/ValueError if unreadable."""

    @abstractmethod
    def token(self, token_id: str) -> dict | None:
        """One token as kept now (None: unknown or forgotten)."""

    @abstractmethod
    def put_token(self, token: dict, kept: list[dict]) -> dict:
        """Keep ``token`` (new, or revoked: a revocation is never undone); ``kept``: every token this
        node keeps, ``token`` included. Returns the token as kept (revoked at the earliest time asked)."""

    @abstractmethod
    def grants_of(self, identity: str) -> list[str]:
        """The cameras granted to ``identity`` now."""

    @abstractmethod
    def put_grant(self, identity: str, cameras: list[str], grants: dict[str, list[str]]) -> None:
        """``identity`` is granted exactly ``cameras`` (none: no grant); ``grants``: every identity's, after."""


class SeenSignatures(ABC):
    """Signed requests' signatures already accepted, each remembered until its time window has passed."""

    @abstractmethod
    def first_use(self, signature: bytes, until: float, now: float) -> bool:
        """Remember ``signature`` until ``until``; False if it was remembered already (a replay).
        Forgets what expired by ``now``."""


class PolicyRows(ABC):
    """Policy versions activated over HTTP per camera, and (when shared) the policy documents they name."""

    #: where they are kept, for messages
    where: str
    #: whether other nodes read them too (then documents travel through here, not only through the vault)
    shared: bool = False

    @abstractmethod
    def load(self) -> dict[str, str]:
        """camera -> version activated over HTTP; raises OSError/ValueError if unreadable."""

    @abstractmethod
    def activation(self, camera: str) -> str | None:
        """The version activated over HTTP on ``camera`` now (None: it follows its configuration)."""

    @abstractmethod
    def put(self, camera: str, version: str | None, activations: dict[str, str]) -> None:
        """``camera`` runs ``version`` (None: back to its configuration); ``activations``: all of them, after."""

    def put_document(self, version: str, document: bytes) -> None:
        """Keep a policy document (its canonical JSON, ``version`` its SHA-256) where other nodes find it."""

    def document(self, version: str) -> bytes | None:
        """A policy document kept here (None: not kept here; the vault has it)."""
        return None

    def documents(self) -> list[str]:
        """Every policy version kept here."""
        return []
