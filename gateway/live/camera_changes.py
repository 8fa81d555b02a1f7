"""Cameras added, edited and removed at run time, kept in ``<data_dir>/cameras.json`` for the next start.

The configuration file's cameras are the base; the file records what officers changed over the
API since, one entry per camera they touched, and wins over the configuration for that camera:

``{"format": 1, "cameras": {"gate": {<camera fields as in the configuration>, "policy": "<version>"},
                             "lobby": {"removed": true, "policy": "<version>"}}}``

* a camera entry (added, or a configured camera edited) runs as it says, under the stored policy
  version it names (unless a later activation over HTTP, ``active-policies.json``, names another);
* a ``removed`` entry takes the camera out (a configured one too); its ``policy`` is the last one
  it ran, which retention keeps applying to its recordings;
* a camera the file does not name follows the configuration file.

So an operator's later edit of the configuration file does not reach a camera the file names
(the start says which cameras it changes); remove that camera's entry (gateway stopped) to hand
it back to the configuration. The file is written atomically (0600) before a change takes effect
and put back as it was if the change fails. An entry that does not validate stops the start-up
with its field path, like a bad configuration.

In a cluster the same entries are rows of the shared state (:class:`~gateway.state.CameraTable`),
one per camera with a revision: every node applies them at its start and takes in each change
another node makes (:meth:`CameraChanges.follow`); a change is written only at the revision this
node took in last (else :class:`~gateway.state.CameraConflict`), and only once written does it
take effect anywhere, so there is nothing to put back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import TypeAdapter, ValidationError, field_validator

from keys import EscrowError, VaultStore, canonical, check_camera, write_durably
from redaction import (
    Policy,
    PolicyError,
    StrictModel,
    format_validation_error,
)

from ..config import Camera, ConfigError, redact_source
from ..state import CameraTable

FORMAT = 1
_HEX = frozenset("0123456789abcdef")


def _version(value: str) -> str:
    if len(value) != 64 or not set(value) <= _HEX:
        raise ValueError("expected the 64-hex-digit version of a stored policy")
    return value


class KeptCamera(Camera):
    """A camera as the file keeps it: the configuration's fields, its policy a stored version."""

    policy: str  # type: ignore[assignment]  # a version, not a file: what it ran is in the vault

    @field_validator("policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        return _version(value)

    def camera(self) -> Camera:
        return Camera.model_validate(self.model_dump(exclude={"policy"}))


class Removed(StrictModel):
    removed: Literal[True]
    #: the last policy it ran (retention of its recordings), if known
    policy: str | None = None

    @field_validator("policy")
    @classmethod
    def _policy(cls, value: str | None) -> str | None:
        return None if value is None else _version(value)


#: entries validated under their camera's name, so that every error names ``<camera>.<field>``
_KEPT, _REMOVED = TypeAdapter(dict[str, KeptCamera]), TypeAdapter(dict[str, Removed])


def camera_fields(camera: Camera) -> dict:
    """What the file keeps of ``camera`` (its fields; the policy goes beside them as a version)."""
    return camera.model_dump(mode="json", exclude={"policy"})


@dataclass(frozen=True)
class Change:
    """A camera as a row of the shared state leaves it (cluster): ``camera`` None if removed
    (``policy``: its last one), or if the row cannot run on this node (``policy`` None)."""

    name: str
    camera: Camera | None
    policy: Policy | None
    version: str | None


class CameraChanges:
    """``<data_dir>/cameras.json`` (or, ``rows`` given, the cluster's table): read at start
    (:meth:`apply`), written at every change. ``fetch(version)``: a stored policy, parsed
    (:meth:`~gateway.live.activation.Activations.fetch`: in a cluster the document may come from
    the shared state)."""

    def __init__(self, path: Path, store: VaultStore, fetch: Callable[[str], Policy],
                 rows: CameraTable | None = None) -> None:
        self.path, self.store, self.rows, self._fetch = Path(path), store, rows, fetch
        self.where = str(self.path) if rows is None else rows.where
        self._entries: dict[str, dict] = {}  # camera -> its entry as written
        self._revisions: dict[str, int] = {}  # camera -> the revision of its row taken in here (cluster)

    def _read(self) -> dict | None:
        """Every entry kept (None: no file), unvalidated."""
        if self.rows is not None:
            try:
                rows = self.rows.load()
            except OSError as exc:
                raise ConfigError(f"{self.where}: unreadable ({exc})") from None
            self._revisions = {name: revision for name, (revision, _) in rows.items()}
            return {name: entry for name, (_, entry) in rows.items()}
        if not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"{self.where}: unreadable ({exc}); fix it, or remove it to run the configuration "
                              "file's cameras") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("cameras"), dict) \
                or set(data) != {"format", "cameras"}:
            raise ConfigError(f'{self.where}: expected {{"format": {FORMAT}, "cameras": {{...}}}}; fix it, or remove '
                              "it to run the configuration file's cameras")
        return data["cameras"]

    def _validate(self, name: str, entry) -> tuple[KeptCamera | Removed, Policy | None]:
        """One entry, its policy read; raises :class:`ConfigError` whose lines name ``cameras.<name>.<field>``,
        :class:`OSError` (the shared state unreachable)."""
        path = f"cameras.{name}"
        try:
            check_camera(name)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: expected an object")
        try:
            kept = (_REMOVED if "removed" in entry else _KEPT).validate_python({name: entry})[name]
        except ValidationError as exc:
            raise ConfigError("\n".join(f"cameras.{line}" for line in format_validation_error(exc).splitlines())) \
                from None
        policy = None
        if kept.policy is not None:
            try:
                policy = self._fetch(kept.policy)
            except (EscrowError, PolicyError) as exc:
                raise ConfigError(f"{path}.policy: {exc}") from None
        if isinstance(kept, KeptCamera) and kept.kind == "file" and not Path(kept.source).is_file():
            raise ConfigError(f"{path}.source: no such file {kept.source}")
        return kept, policy

    def apply(self, cameras: dict[str, Camera], policies: dict[str, Policy], announce: Callable[[str], None]
              ) -> tuple[dict[str, Camera], dict[str, Policy], dict[str, Policy]]:
        """The configuration's ``cameras`` and their ``policies`` with the kept changes applied, and
        the last policies of removed cameras; raises :class:`ConfigError` naming every bad entry
        (in a cluster, a bad row takes its camera out of this node instead, and is announced)."""
        entries = self._read()
        if entries is None:
            return dict(cameras), dict(policies), {}
        cameras, policies, retired, problems = dict(cameras), dict(policies), {}, []
        where = self.path.name if self.rows is None else "camera_changes"
        for name, entry in entries.items():
            try:
                kept, policy = self._validate(name, entry)
            except ConfigError as exc:
                if self.rows is None:
                    problems += str(exc).splitlines()
                    continue
                # another node may run it: this one leaves it out (never runs its configured definition)
                cameras.pop(name, None)
                policies.pop(name, None)
                self._entries[name] = entry
                announce(f"camera {name}: as kept in {self.where} it cannot run on this node, which leaves it to "
                         f"the others:\n{exc}")
                continue
            except OSError as exc:
                raise ConfigError(f"{self.where}: unreadable ({exc})") from None
            self._entries[name] = kept.model_dump(mode="json")
            if isinstance(kept, Removed):
                cameras.pop(name, None)
                policies.pop(name, None)
                if policy is not None:
                    retired[name] = policy
                announce(f"camera {name}: removed at run time ({where})")
                continue
            camera = kept.camera()
            announce(f"camera {name}: {'edited' if name in cameras else 'added'} at run time ({where}): "
                     f"{camera.kind} {redact_source(camera.source) or '(publishes over WHIP)'}, policy "
                     f"{kept.policy[:12]}")
            cameras[name], policies[name] = camera, policy
        if problems:
            raise ConfigError(f"{self.where}: invalid camera changes\n" + "\n".join(problems)
                              + "\nfix or remove those entries (a camera the file does not name follows the "
                              "configuration file)")
        return cameras, policies, retired

    # --- changes --------------------------------------------------------------------------------

    def entries(self) -> dict[str, dict]:
        """What the file holds now (a copy: give it back to :meth:`restore` to undo a change)."""
        return {name: dict(entry) for name, entry in self._entries.items()}

    def removed_cameras(self) -> frozenset[str]:
        """The cameras taken out at run time (their sealed data and recordings stay)."""
        return frozenset(name for name, entry in self._entries.items() if entry.get("removed"))

    def kept(self, name: str, camera: Camera, version: str) -> None:
        """``name`` runs ``camera`` under policy ``version`` (added or edited): written before it does."""
        self._put(name, {**camera_fields(camera), "policy": version})

    def removed(self, name: str, version: str | None) -> None:
        """``name`` is taken out (its last policy ``version`` kept for retention): written before it is."""
        self._put(name, {"removed": True, "policy": version})

    def restore(self, entries: dict[str, dict]) -> None:
        """Put back what :meth:`entries` returned (a change that failed; single node only)."""
        self._write(entries)

    def _put(self, name: str, entry: dict) -> None:
        if self.rows is None:
            self._write({**self._entries, name: entry})
            return
        version = entry["policy"]
        document = None if version is None else canonical(self.store.load_policy(version))
        self._revisions[name] = self.rows.put(name, entry, self._revisions.get(name, 0), document)
        self._entries = {**self._entries, name: entry}

    def _write(self, entries: dict[str, dict]) -> None:
        document = {"format": FORMAT, "cameras": dict(sorted(entries.items()))}
        write_durably(self.path, json.dumps(document, indent=1).encode(), mode=0o600)
        self._entries = entries

    # --- other nodes' changes (cluster) -----------------------------------------------------------

    def stale(self) -> list[str]:
        """The cameras whose row changed since this node took it in (after a reconnection)."""
        return sorted(name for name, (revision, _) in self.rows.load().items()
                      if revision != self._revisions.get(name, 0))

    def follow(self, name: str) -> Change | None:
        """``name`` as its row says now, if it changed since this node took it in (else None).
        Raises :class:`ConfigError` if the entry cannot run here (taken in as such: it is not asked
        again until it changes), :class:`OSError` (the shared state unreachable: asked again later)."""
        found = self.rows.entry(name)
        if found is None or found[0] == self._revisions.get(name, 0):
            return None
        revision, entry = found
        try:
            kept, policy = self._validate(name, entry)
        except ConfigError:
            self._revisions[name] = revision
            self._entries = {**self._entries, name: entry}
            raise
        self._revisions[name] = revision
        self._entries = {**self._entries, name: kept.model_dump(mode="json")}
        return Change(name, None if isinstance(kept, Removed) else kept.camera(), policy, kept.policy)
