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
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import TypeAdapter, ValidationError, field_validator

from keys import EscrowError, VaultStore, check_camera, write_durably
from redaction import (
    Policy,
    PolicyError,
    StrictModel,
    format_validation_error,
    parse_policy,
)

from ..config import Camera, ConfigError, redact_source

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


class CameraChanges:
    """``<data_dir>/cameras.json``: read at start (:meth:`apply`), written at every change."""

    def __init__(self, path: Path, store: VaultStore) -> None:
        self.path, self.store = Path(path), store
        self._entries: dict[str, dict] = {}  # camera -> its entry as written

    def apply(self, cameras: dict[str, Camera], policies: dict[str, Policy], announce: Callable[[str], None]
              ) -> tuple[dict[str, Camera], dict[str, Policy], dict[str, Policy]]:
        """The configuration's ``cameras`` and their ``policies`` with the file's changes applied, and
        the last policies of removed cameras; raises :class:`ConfigError` naming every bad entry."""
        if not self.path.exists():
            return dict(cameras), dict(policies), {}
        where = f"{self.path}"
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"{where}: unreadable ({exc}); fix it, or remove it to run the configuration "
                              "file's cameras") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("cameras"), dict) \
                or set(data) != {"format", "cameras"}:
            raise ConfigError(f'{where}: expected {{"format": {FORMAT}, "cameras": {{...}}}}; fix it, or remove it '
                              "to run the configuration file's cameras")
        cameras, policies, retired, problems = dict(cameras), dict(policies), {}, []
        for name, entry in data["cameras"].items():
            path = f"cameras.{name}"
            try:
                check_camera(name)
            except ValueError as exc:
                problems.append(f"{path}: {exc}")
                continue
            if not isinstance(entry, dict):
                problems.append(f"{path}: expected an object")
                continue
            try:
                kept = (_REMOVED if "removed" in entry else _KEPT).validate_python({name: entry})[name]
            except ValidationError as exc:
                problems += [f"cameras.{line}" for line in format_validation_error(exc).splitlines()]
                continue
            policy = None
            if kept.policy is not None:
                try:
                    policy = parse_policy(self.store.load_policy(kept.policy), f"policy {kept.policy[:12]}")
                except (EscrowError, PolicyError) as exc:
                    problems.append(f"{path}.policy: {exc}")
                    continue
            self._entries[name] = kept.model_dump(mode="json")
            if isinstance(kept, Removed):
                cameras.pop(name, None)
                policies.pop(name, None)
                if policy is not None:
                    retired[name] = policy
                announce(f"camera {name}: removed at run time ({self.path.name})")
                continue
            camera = kept.camera()
            if camera.kind == "file" and not Path(camera.source).is_file():
                problems.append(f"{path}.source: no such file {camera.source}")
                continue
            announce(f"camera {name}: {'edited' if name in cameras else 'added'} at run time ({self.path.name}): "
                     f"{camera.kind} {redact_source(camera.source) or '(publishes over WHIP)'}, policy "
                     f"{kept.policy[:12]}")
            cameras[name], policies[name] = camera, policy
        if problems:
            raise ConfigError(f"{where}: invalid camera changes\n" + "\n".join(problems)
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
        self._write({**self._entries, name: {**camera_fields(camera), "policy": version}})

    def removed(self, name: str, version: str | None) -> None:
        """``name`` is taken out (its last policy ``version`` kept for retention): written before it is."""
        self._write({**self._entries, name: {"removed": True, "policy": version}})

    def restore(self, entries: dict[str, dict]) -> None:
        """Put back what :meth:`entries` returned (a change that failed)."""
        self._write(entries)

    def _write(self, entries: dict[str, dict]) -> None:
        document = {"format": FORMAT, "cameras": dict(sorted(entries.items()))}
        write_durably(self.path, json.dumps(document, indent=1).encode(), mode=0o600)
        self._entries = entries
