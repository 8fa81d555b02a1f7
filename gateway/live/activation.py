"""Which policy version each camera runs, and the versions activated over HTTP, which outlive a restart.

A camera starts with its configured policy file (or the built-in default; or the version it was
added or edited with at run time, :mod:`.camera_changes`), unless a privacy officer activated
another stored version over HTTP since: those activations are kept in a
:class:`~gateway.state.PolicyRows` (``<data_dir>/active-policies.json``, or PostgreSQL in a
cluster) and win at the next start (the start says so). Only cameras activated over HTTP are
listed there; the others keep following their files. Every version in force is stored in the
vault (by SHA-256 of its canonical JSON), so what sealed a segment can always be read back; in a
cluster the documents travel through the database and are checked against their SHA-256 and
copied into this node's vault before use (:meth:`Activations.fetch`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from keys import EscrowError, VaultError, VaultStore, canonical
from redaction import Policy, PolicyError, parse_policy

from ..config import ConfigError
from ..state import ActivationFile, PolicyRows


class Activations:
    """The version in force per camera, and the ones activated over HTTP (persisted)."""

    def __init__(self, path: Path, store: VaultStore, rows: PolicyRows | None = None) -> None:
        self.path, self.store = Path(path), store
        self.rows = rows if rows is not None else ActivationFile(self.path)
        self._active: dict[str, str] = {}  # camera -> the version in force
        self._over_http: dict[str, str] = {}  # camera -> the version activated over HTTP

    def restore(self, cameras: Iterable[str], announce: Callable[[str], None]) -> dict[str, Policy]:
        """The policies activated over HTTP for these cameras; raises :class:`ConfigError` if the file
        or a version it names cannot be read (fix or remove it to use the configured policies)."""
        where = self.rows.where
        try:
            versions = self.rows.load()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{where}: unreadable ({exc}); fix or remove it to use the configured policies") \
                from None
        known = set(cameras)
        out = {}
        for camera, version in versions.items():
            if camera not in known:
                continue
            try:
                out[camera] = self.fetch(version)
            except (EscrowError, PolicyError, OSError) as exc:
                raise ConfigError(f"{where}: camera {camera}: {exc}; fix or remove it to use the configured "
                                  "policies") from None
            self._over_http[camera] = version
            announce(f"camera {camera}: policy {version[:12]} (activated over HTTP) is in force, "
                     f"not its configured file")
        return out

    def fetch(self, version: str) -> Policy:
        """Stored ``version``, parsed; a document kept in the shared state is checked against its
        SHA-256 and copied into this node's vault first. Raises :class:`keys.EscrowError` (missing,
        altered), :class:`redaction.PolicyError`, :class:`OSError` (the shared state unreachable)."""
        document = self.rows.document(version)
        if document is not None:
            if hashlib.sha256(document).hexdigest() != version:
                raise VaultError(f"policy {version[:16]}... in {self.rows.where}: altered (digest mismatch)")
            if self.store.store_policy(json.loads(document)) != version:
                raise VaultError(f"policy {version[:16]}... in {self.rows.where}: not in canonical form")
        return parse_policy(self.store.load_policy(version), f"policy {version[:12]}")

    def started(self, camera: str, policy: Policy) -> None:
        """``camera`` starts under ``policy`` (kept in the vault)."""
        self._active[camera] = self.store.store_policy(policy.model_dump(mode="json"))

    def version(self, camera: str) -> str:
        return self._active[camera]

    def versions(self) -> dict[str, str]:
        return dict(self._active)

    def activated(self, camera: str, version: str) -> None:
        """``camera`` now runs ``version``, activated over HTTP: kept across restarts."""
        self._active[camera] = self._over_http[camera] = version
        self._write(camera)

    def followed(self, camera: str, version: str) -> None:
        """``camera`` runs ``version`` from now on, as the shared state says (kept there already)."""
        self._active[camera] = self._over_http[camera] = version

    def share(self, camera: str, version: str) -> None:
        """Activate ``version`` on ``camera`` in the shared state (every node is told; the one that runs
        the camera switches it). The document goes first, so whoever reads the activation finds it."""
        self.rows.put_document(version, canonical(self.store.load_policy(version)))
        self.rows.put(camera, version, {**self._over_http, camera: version})

    def running(self, camera: str, version: str) -> None:
        """``camera`` runs ``version`` (stored already) from now on: it was added or edited at run
        time, and ``cameras.json`` names that version, so an activation over HTTP from before no
        longer applies (it is forgotten here first: the version in force changes only if that works)."""
        if self._over_http.pop(camera, None) is not None:
            self._write(camera)
        self._active[camera] = version

    def adopted(self, camera: str, version: str | None) -> None:
        """Cluster: ``camera`` was added or edited (``version``), or removed (None), on some node; the
        shared state forgot its activation over HTTP in the same transaction: nothing to write."""
        self._over_http.pop(camera, None)
        if version is None:
            self._active.pop(camera, None)
        else:
            self._active[camera] = version

    def removed(self, camera: str) -> None:
        """``camera`` was taken out at run time: what it ran is forgotten here (a camera added later
        under its name starts with the policy it is added with)."""
        self._active.pop(camera, None)
        if self._over_http.pop(camera, None) is not None:
            self._write(camera)

    def _write(self, camera: str) -> None:
        self.rows.put(camera, self._over_http.get(camera), dict(self._over_http))
