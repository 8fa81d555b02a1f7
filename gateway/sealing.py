"""The one redact-and-seal step: a decided frame's regions redacted in place, their originals sealed.

Both the live pipeline and ``privacy-gateway redact`` run every decided frame through
:class:`RedactSeal`. The policy's methods are applied by the Numba kernels; when sealing, the
original pixels under every region are copied out first (before any region is changed) and
handed to the camera's :class:`keys.Sealer` with the frame's index and media time, so what is
sealed is exactly what was hidden.

The step also owns which recording a frame belongs to. A new recording (a new recorder file and
vault recording) starts every ``recording_seconds`` of media time and at every policy change,
so every segment stays bound to the one policy its header names; :meth:`RedactSeal.ref_for`
answers for frames that were blanked or dropped, which carry no sealed records of their own.

Live, a frame must never wait for the sealer's coding thread: when that thread is behind,
:meth:`RedactSeal.apply` raises :class:`SealerBusy` and the frame is blanked, never released
without its originals sealed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from keys import PublicIdentity, Sealed, Sealer, VaultRef, check_grants, grants_of
from redaction import Policy, Region, redact_frame


class SealerBusy(Exception):
    """The sealer refused a frame (its coding thread is behind): blank the frame, do not release it."""


@dataclass(frozen=True)
class PolicyChange:
    """A policy whose grants were checked against the roster, ready for :meth:`RedactSeal.switch`."""

    policy: Policy
    identities: list[PublicIdentity] | None


class RedactSeal:
    """Redacts decided frames in place and seals their originals (``sealer`` None: redact only)."""

    def __init__(self, policy: Policy, sealer: Sealer | None = None, *, recording_seconds: float | None = None,
                 numbered: bool = False, live: bool = False) -> None:
        """``recording_seconds``: media seconds per recording (None: one recording, as for a file).
        ``numbered``: every region is a track of its own (a still image has no tracking).
        ``live``: refuse (:class:`SealerBusy`) rather than wait when the sealer is behind."""
        self.policy, self.sealer = policy, sealer
        self._recording_seconds, self._numbered, self._live = recording_seconds, numbered, live
        self._recording_start: float | None = None
        self._lock = threading.Lock()
        #: the recordings frames still in flight may belong to, oldest first
        self._refs: list[VaultRef] = [sealer.ref] if sealer is not None else []

    def apply(self, index: int, time: float, image: np.ndarray, regions: list[Region]) -> VaultRef | None:
        """Redact ``regions`` of frame ``index`` (media ``time`` s) in ``image`` in place; seal their originals.
        Returns the recording the frame belongs to (None without sealing). Frames come in index order.
        Raises :class:`SealerBusy` (live only) if the sealer refused the frame's originals."""
        originals = redact_frame(image, regions, self.policy, copy_out=self.sealer is not None)
        if self.sealer is None:
            return None
        pts_us = round(time * 1e6)
        if self._recording_start is None:
            self._recording_start = time
        elif self._recording_seconds is not None and time - self._recording_start >= self._recording_seconds:
            self._remember(self.sealer.start_recording(index, pts_us))
            self._recording_start = time
        sealed = [Sealed(i + 1 if self._numbered else (r.track or 0), r.cls, (int(r.x), int(r.y), int(r.w), int(r.h)),
                         crop)
                  for i, (r, crop) in enumerate(zip(regions, originals or ()))]
        if not self.sealer.add(index, pts_us, sealed, wait=not self._live):
            raise SealerBusy(f"camera {self.sealer.camera}: the sealer is behind; frame {index} refused")
        return self.sealer.ref

    # --- policy changes -----------------------------------------------------------------------

    def prepare(self, policy: Policy, identities: list[PublicIdentity] | None = None) -> PolicyChange:
        """Check that ``policy``'s unmask grants can be met (by ``identities``, default: the sealer's
        roster) before anything changes; raises :class:`keys.VaultError` if not."""
        if self.sealer is not None:
            check_grants(grants_of(policy), self.sealer.identities if identities is None else identities)
        return PolicyChange(policy, identities)

    def switch(self, change: PolicyChange, index: int, time: float) -> None:
        """From frame ``index`` (media ``time`` s) on, redact and seal under the prepared policy, in a
        new recording. Raises (and nothing changes) if the vault refuses."""
        if self.sealer is not None:
            ref = self.sealer.change_policy(change.policy.model_dump(mode="json"), grants_of(change.policy), index,
                                            round(time * 1e6), change.identities)
            self._remember(ref)
            self._recording_start = time
        self.policy = change.policy

    # --- recordings ---------------------------------------------------------------------------

    def _remember(self, ref: VaultRef) -> None:
        with self._lock:
            self._refs.append(ref)

    def ref_for(self, index: int) -> VaultRef | None:
        """The recording frame ``index`` belongs to (any thread)."""
        with self._lock:
            for ref in reversed(self._refs):
                if ref.first_frame <= index:
                    return ref
            return self._refs[0] if self._refs else None

    def released(self, index: int) -> None:
        """Frame ``index`` has left; no later frame can belong to a recording that ended before it."""
        with self._lock:
            while len(self._refs) > 1 and self._refs[1].first_frame <= index:
                self._refs.pop(0)

    def close(self, complete: bool = True) -> None:
        """Finish sealing (``complete`` False: the output failed, and the log says so)."""
        if self.sealer is not None:
            self.sealer.close(complete=complete)
