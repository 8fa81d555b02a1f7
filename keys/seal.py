"""Sealing while redacting: one camera's region originals into the vault, segment by segment.

A :class:`Sealer` is what the redaction side holds: the vault store, the public identities
and the gateway's signing key, never a key that opens anything. Every frame is handed to
:meth:`Sealer.add` with the original pixels of its redacted regions; segments roll over every
``segment_seconds`` of media time, each chained to the previous one of the camera. The
redacted output names its recording with a :class:`VaultRef`, which is how ``unmask`` finds
the records of exactly that output.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import VaultError
from .identity import PublicIdentity, canonical
from .store import GATEWAY_ACTOR, VaultStore, check_camera
from .vault import GENESIS, SegmentHeader, SegmentWriter, utc_now
from .wrap import Grant, wrap_key

REF_PREFIX = "privacy-gateway-vault:"


@dataclass(frozen=True)
class VaultRef:
    """Which sealed records belong to a redacted output, carried in the output's metadata.

    ``first_frame`` and ``first_pts_us`` are the record frame number and media time of the
    output's first frame (both 0 for a file redacted whole).
    """

    camera: str
    recording: str
    first_frame: int = 0
    first_pts_us: int = 0

    def encode(self) -> str:
        return REF_PREFIX + canonical({"v": 1, "camera": self.camera, "recording": self.recording,
                                       "first_frame": self.first_frame, "first_pts_us": self.first_pts_us}).decode()

    @classmethod
    def decode(cls, text: str | None) -> VaultRef | None:
        """The reference in a metadata string, or None if it carries none."""
        if not text or not text.startswith(REF_PREFIX):
            return None
        try:
            data = json.loads(text[len(REF_PREFIX):])
            if data.get("v") != 1:
                raise ValueError
            return cls(check_camera(data["camera"]), str(data["recording"]), int(data["first_frame"]),
                       int(data["first_pts_us"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise VaultError("the vault reference in this file is malformed") from None


@dataclass(frozen=True)
class Sealed:
    """One redacted region's original, ready to seal."""

    track: int
    cls: str
    box: tuple[int, int, int, int]
    pixels: np.ndarray


class Sealer:
    """Seals the originals of one camera's redacted regions; use as a context manager."""

    def __init__(
        self,
        store: VaultStore,
        signer,
        camera: str,
        policy: dict,
        grants: dict[str, Grant],
        identities: list[PublicIdentity],
        segment_seconds: float | None = 10.0,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        """``segment_seconds`` None: segments end only with their recording (:meth:`start_recording`)."""
        if segment_seconds is not None and segment_seconds <= 0:
            raise ValueError(f"segment length must be > 0 s, got {segment_seconds}")
        check_grants(grants, identities)
        self.store, self.camera, self.grants, self.identities = store, check_camera(camera), grants, identities
        self._signer, self._clock = signer, clock
        self._segment_us = None if segment_seconds is None else int(segment_seconds * 1e6)
        self._policy_version = int(policy.get("version", 1))
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(store.camera_lock(camera))
        try:
            self._policy_sha256 = store.store_policy(policy)
            self._recover()
            self._last, self._previous = self._chain_head()
        except BaseException:
            self._lock.close()
            raise
        self._writer: SegmentWriter | None = None
        self._started_us = 0
        self.ref = self._new_ref(0, 0)

    def __enter__(self) -> Sealer:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(complete=kind is None)

    def _recover(self) -> None:
        """Sign and keep what a crashed writer left; the event goes to the audit log."""
        for number in self.store.partial_segments(self.camera):
            kept = self.store.recover_partial(self.camera, number, self._signer)
            if kept is not None:  # None: the segment was finished, only its partial was left behind
                self.store.audit.append(GATEWAY_ACTOR, self._signer, "recover-segment",
                                        {"camera": self.camera, "segment": number, "records": kept})

    def _chain_head(self) -> tuple[int, str]:
        numbers = self.store.segment_numbers(self.camera)
        if not numbers:
            return 0, GENESIS
        last = self.store.segment(self.camera, numbers[-1])
        return last.number, last.digest

    def add(self, frame: int, pts_us: int, regions: list[Sealed]) -> None:
        """Seal the originals of one frame's regions (call for every frame, in order)."""
        if self._writer is not None and self._segment_us is not None and pts_us - self._started_us >= self._segment_us:
            self._roll()
        if self._writer is None:
            self._open(pts_us)
        assert self._writer is not None
        for region in regions:
            self._writer.add(frame, pts_us, region.track, region.cls, region.box, region.pixels)
        self.records += len(regions)

    def _open(self, pts_us: int) -> None:
        number = self._last + 1
        header = SegmentHeader(self.camera, number, self._policy_version, self._policy_sha256, self.ref.recording,
                               self._clock(), self._previous)
        self._writer = self.store.open_segment(header, self.grants, self.identities, self._signer)
        self._started_us = pts_us
        if self.first_segment is None:
            self.first_segment = number

    def _roll(self) -> None:
        assert self._writer is not None
        self._previous = self._writer.close(self._clock())
        self._last = self._writer.header.segment
        self._writer = None

    def _new_ref(self, first_frame: int, first_pts_us: int) -> VaultRef:
        self.first_segment: int | None = None
        self.records = 0
        return VaultRef(self.camera, f"{self._clock()[:10]}-{secrets.token_hex(8)}", first_frame, first_pts_us)

    def start_recording(self, first_frame: int, first_pts_us: int) -> VaultRef:
        """End the current recording (its last segment closed and logged) and begin the next,
        whose output starts with frame ``first_frame`` at media time ``first_pts_us``."""
        self._finish_recording(complete=True)
        self.ref = self._new_ref(first_frame, first_pts_us)
        return self.ref

    def change_policy(self, policy: dict, grants: dict[str, Grant], first_frame: int, first_pts_us: int,
                      identities: list[PublicIdentity] | None = None) -> VaultRef:
        """Seal from ``first_frame`` on under another policy (and, if given, the roster as it is now).

        The current recording ends and the next begins, so every segment stays bound to the one
        policy its header names. Raises before changing anything if a grant cannot be met.
        """
        identities = self.identities if identities is None else identities
        check_grants(grants, identities)
        digest = self.store.store_policy(policy)
        self._finish_recording(complete=True)
        self.grants, self.identities = grants, identities
        self._policy_version, self._policy_sha256 = int(policy.get("version", 1)), digest
        self.ref = self._new_ref(first_frame, first_pts_us)
        return self.ref

    @property
    def policy_sha256(self) -> str:
        return self._policy_sha256

    def _finish_recording(self, complete: bool) -> None:
        if self._writer is not None:
            self._roll()
        if self.first_segment is not None:
            self.store.audit.append(GATEWAY_ACTOR, self._signer, "seal", {
                "camera": self.camera, "recording": self.ref.recording,
                "segments": [self.first_segment, self._last], "records": self.records,
                "head": self._previous, "output": "written" if complete else "failed"})

    def close(self, complete: bool = True) -> None:
        """Finish the last segment and log the recording (``complete`` False: its output failed)."""
        try:
            self._finish_recording(complete)
        finally:
            self._lock.close()


def check_grants(grants: dict[str, Grant], identities: list[PublicIdentity]) -> None:
    """Refuse now, not at the first region, a grant the roster cannot meet (too few holders of its roles)."""
    for cls, grant in grants.items():
        try:
            wrap_key(os.urandom(32), grant, identities, b"check")
        except ValueError as exc:
            raise VaultError(f"unmask.{cls}: {exc}") from None


def grants_of(policy) -> dict[str, Grant]:
    """The unmask grant of every class the policy redacts (``policy`` is a redaction Policy)."""
    enabled = policy.classes.enabled()
    return {cls: Grant(tuple(getattr(policy.unmask, cls).roles), getattr(policy.unmask, cls).quorum)
            for cls in ("face", "plate") if cls in enabled}
