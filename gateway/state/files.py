"""The state kept in this node's own files: the single gateway's default (:mod:`.base` says what each holds).

``<data_dir>/access/tokens.json`` and ``grants.json`` (0600 in a 0700 directory: the RTSP HA1 alone
opens feeds), ``<data_dir>/access/signatures-seen.json`` and ``<data_dir>/active-policies.json``,
each rewritten whole and durably at every change. Policy documents stay in the vault only.
"""

from __future__ import annotations

import json
import logging
import stat
import threading
from pathlib import Path

from keys import write_durably

from .base import PolicyRows, SeenSignatures, TokenRows

log = logging.getLogger(__name__)


def _write_private_json(path: Path, data) -> None:
    """Durably, readable by the owner only (the token file holds hashes that open RTSP feeds)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_durably(path, json.dumps(data, indent=1, sort_keys=True).encode(), mode=0o600)


def _keep_private(directory: Path) -> None:
    """The access directory 0700 and its files 0600, whatever made them (an older version, a copy, umask)."""
    for path, mode in ((directory, 0o700), *((f, 0o600) for f in sorted(directory.glob("*.json")))):
        if path.exists() and stat.S_IMODE(path.stat().st_mode) & ~mode:
            log.warning("%s was readable by others (mode %o); made it %o", path, stat.S_IMODE(path.stat().st_mode), mode)
            path.chmod(mode)


class TokenFiles(TokenRows):
    """``tokens.json`` and ``grants.json`` in an access directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.where = str(self.directory)

    def load(self) -> tuple[list[dict], dict[str, list[str]]]:
        _keep_private(self.directory)
        tokens_file, grants_file = self.directory / "tokens.json", self.directory / "grants.json"
        tokens = json.loads(tokens_file.read_text("utf-8")) if tokens_file.exists() else []
        grants = json.loads(grants_file.read_text("utf-8")) if grants_file.exists() else {}
        return tokens, grants

    def token(self, token_id: str) -> dict | None:
        return next((t for t in self.load()[0] if t["id"] == token_id), None)

    def put_token(self, token: dict, kept: list[dict]) -> dict:
        _write_private_json(self.directory / "tokens.json", kept)
        return token

    def grants_of(self, identity: str) -> list[str]:
        return list(self.load()[1].get(identity, []))

    def put_grant(self, identity: str, cameras: list[str], grants: dict[str, list[str]]) -> None:
        _write_private_json(self.directory / "grants.json", grants)


class SeenFile(SeenSignatures):
    """The signatures used, in memory and (``path`` given) in a file (0600; its loss only reopens their window)."""

    def __init__(self, path: Path | None, skew: float) -> None:
        self.path = path
        self._seen: dict[bytes, float] = {}  # signatures already used -> when they stop mattering
        self._lock = threading.Lock()
        if path is not None and path.is_file():
            try:
                stored = json.loads(path.read_text())
                self._seen = {bytes.fromhex(s): float(until) for s, until in stored.items()}
            except (OSError, ValueError, TypeError, AttributeError):
                log.error("%s unreadable: signed requests of the last %g s could be replayed once", path, skew)

    def first_use(self, signature: bytes, until: float, now: float) -> bool:
        with self._lock:
            self._seen = {s: t for s, t in self._seen.items() if t > now}
            if signature in self._seen:
                return False
            self._seen[signature] = until
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_durably(self.path, json.dumps({s.hex(): t for s, t in self._seen.items()}).encode(), 0o600)
            return True


class ActivationFile(PolicyRows):
    """``active-policies.json``: camera -> version, for the cameras activated over HTTP."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.where = str(self.path)

    def load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        versions = json.loads(self.path.read_text("utf-8"))
        if not isinstance(versions, dict):
            raise ValueError("expected an object of camera -> version")  # noqa: TRY004 (one error for a bad file)
        return versions

    def activation(self, camera: str) -> str | None:
        return self.load().get(camera)

    def put(self, camera: str, version: str | None, activations: dict[str, str]) -> None:
        write_durably(self.path, json.dumps(activations, indent=1, sort_keys=True).encode(), mode=0o600)
