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
without its originals sealed. A sealer that failed (disk full, the audit log or the co-signer
refusing, no file descriptors left) raises :class:`SealingDown` for every frame until a new one
is opened: the step retries with backoff (:mod:`gateway.faults`), as a restarted gateway would,
and the new sealer recovers what the failed one left and starts a new recording at the frame it
takes over from.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from keys import PublicIdentity, Sealed, Sealer, VaultRef, check_grants, grants_of
from redaction import Policy, Region, redact_frame, zone_regions

from .faults import Faults

DETECTED = ("face", "plate")  # the classes a detector finds (a zone's class is ``zone:<name>``, its track 0)
#: opens a camera's sealer anew after a failure: (policy, roster, first frame, its media time in µs)
Reopen = Callable[[Policy, list[PublicIdentity], int, int], Sealer]


class SealerBusy(Exception):
    """The sealer refused a frame (its coding thread is behind): blank the frame, do not release it."""


class SealingDown(Exception):
    """The sealer failed and no new one could be opened yet: blank the frame, do not release it."""


@dataclass(frozen=True)
class PolicyChange:
    """A policy whose grants were checked against the roster, ready for :meth:`RedactSeal.switch`."""

    policy: Policy
    identities: list[PublicIdentity] | None


class RedactSeal:
    """Redacts decided frames in place and seals their originals (``sealer`` None: redact only)."""

    def __init__(self, policy: Policy, sealer: Sealer | None = None, *, recording_seconds: float | None = None,
                 numbered: bool = False, live: bool = False, reopen: Reopen | None = None) -> None:
        """``recording_seconds``: media seconds per recording (None: one recording, as for a file).
        ``numbered``: every region is a track of its own (a still image has no tracking).
        ``live``: refuse (:class:`SealerBusy`) rather than wait when the sealer is behind.
        ``reopen``: after the sealer fails, open a new one with it (with backoff) instead of
        letting the failure end sealing; frames are refused (:class:`SealingDown`) meanwhile."""
        self.policy, self.sealer = policy, sealer
        self._recording_seconds, self._numbered, self._live = recording_seconds, numbered, live
        self._reopen = reopen
        self.faults = Faults(f"camera {sealer.camera}: sealing" if sealer is not None else "sealing")
        self._recording_start: float | None = None
        self._fresh = False  # a new recording is asked for at the next frame (request_recording)
        self._lock = threading.Lock()
        #: the recordings frames still in flight may belong to, oldest first
        self._refs: list[VaultRef] = [sealer.ref] if sealer is not None else []

    def apply(self, index: int, time: float, image: np.ndarray, regions: list[Region]) -> VaultRef | None:
        """Redact ``regions`` of frame ``index`` (media ``time`` s) in ``image`` in place; seal their originals.
        Returns the recording the frame belongs to (None without sealing). Frames come in index order.
        Raises :class:`SealerBusy` (live only) if the sealer refused the frame's originals, and
        :class:`SealingDown` (with ``reopen``) while the sealer is failed."""
        if self.sealer is not None:  # liftable zones are sealed as regions of their own
            regions = [*regions, *zone_regions(self.policy, *image.shape[:2])]
        originals = redact_frame(image, regions, self.policy, copy_out=self.sealer is not None)
        if self.sealer is None:
            return None
        if self.faults.reason is not None and not self._restart(index, time):
            raise SealingDown(f"camera {self.sealer.camera}: sealing is down ({self.faults.reason})")
        pts_us = round(time * 1e6)
        sealed = [Sealed(i + 1 if self._numbered and r.cls in DETECTED else (r.track or 0), r.cls,
                         (int(r.x), int(r.y), int(r.w), int(r.h)), crop)
                  for i, (r, crop) in enumerate(zip(regions, originals or ()))]
        try:
            begun = True  # the frame's recording is the sealer's
            if self._recording_start is None:
                self._recording_start = time
            elif self._fresh or (self._recording_seconds is not None
                                 and time - self._recording_start >= self._recording_seconds):
                # live, a sealer a whole queue behind is not waited for (None): the frame is refused
                # like one whose originals it cannot take, and the next frame asks again
                ref = self.sealer.start_recording(index, pts_us, wait=not self._live)
                begun = ref is not None
                if begun:
                    self._fresh = False
                    self._remember(ref)
                    self._recording_start = time
            taken = begun and self.sealer.add(index, pts_us, sealed, wait=not self._live)
        except Exception as exc:
            if self._reopen is None:
                raise
            self.faults.failed(exc)
            raise SealingDown(f"camera {self.sealer.camera}: sealing failed ({exc})") from exc
        if not taken:
            raise SealerBusy(f"camera {self.sealer.camera}: the sealer is behind; frame {index} refused")
        return self.sealer.ref

    def _restart(self, index: int, time: float) -> bool:
        """Open a new sealer in place of the failed one if a retry is due; True once one is open."""
        assert self.sealer is not None and self._reopen is not None
        if not self.faults.due():
            return False
        old = self.sealer
        with contextlib.suppress(Exception):  # the failure is counted already; closing releases the camera
            old.close(complete=False)
        try:
            sealer = self._reopen(self.policy, old.identities, index, round(time * 1e6))
        except Exception as exc:  # noqa: BLE001 (counted and retried later)
            self.faults.failed(exc)
            return False
        self.sealer = sealer
        self._remember(sealer.ref)
        self._recording_start = time
        self.faults.recovered()
        return True

    def request_recording(self) -> None:
        """Start a new recording at the next frame (any thread): the recorder lost its file and
        can only start again at the first frame of a recording."""
        self._fresh = True

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
        if self.sealer is not None and self.faults.reason is not None and self._reopen is not None:
            self.policy = change.policy  # the sealer is down: the next one opens under the new policy
            return
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
        if self.sealer is None:
            return
        try:
            self.sealer.close(complete=complete)
        except Exception:
            if self.faults.reason is None:
                raise
            # the failure is known (counted, logged); the failed sealer's partial waits for the next start
