"""Sealing while redacting: one camera's region originals into the vault, segment by segment.

A :class:`Sealer` is what the redaction side holds: the vault store, the public identities
and the gateway's signing key, never a key that opens anything. Every frame is handed to
:meth:`Sealer.add` with the original pixels of its redacted regions; segments roll over every
``segment_seconds`` of media time, each chained to the previous one of the camera. The
redacted output names its recording with a :class:`VaultRef`, which is how ``unmask`` finds
the records of exactly that output.

Each track's crops are gathered into clips of at most :data:`CLIP_SECONDS` and coded as small
videos (clips.py) before they are sealed, on the sealer's own thread: :meth:`Sealer.add` only
queues the frame, so coding never delays a frame's release. The queue is bounded; a frame that
finds it full is refused (``add`` returns False) and its caller must not release it as
redacted, since its originals were not sealed. What a crash loses is what was queued or
gathered and not yet written: at most a clip's length of each track.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .clips import ClipCoder
from .cosigner import segment_key, share_context
from .errors import CoSignerUnavailable, VaultError
from .identity import PublicIdentity, canonical
from .record import Placement
from .nodes import actor_of
from .store import VaultStore, check_camera
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


#: media seconds a clip covers at most: what a time-range unmask decodes at least (a clip starts
#: with a keyframe), and what a track's crops wait in memory before they are coded (and a crash
#: loses at most). 2.5 s rather than 2: fewer clips, so fewer keyframes and record headers, for
#: vaults 0.5-1.4 % of the recording smaller (perf/bench_seal.py: short_hamilton_clip 1.0009 ->
#: 0.9867x, MOT17-13 0.5156 -> 0.5131x, the walkway 0.5836 -> 0.5729x), the same sealing CPU
CLIP_SECONDS = 2.5
#: a track not seen for this long (media seconds) has its clip coded: it left or was lost
IDLE_SECONDS = 0.5
#: frames that may wait for the sealing thread; more, and add() refuses (see the module docstring)
QUEUE_FRAMES = 64
#: media seconds between two looks at the key directory's roster: a removed or revoked person
#: stops being a recipient (a new segment begins) within this much of the change
ROSTER_CHECK_SECONDS = 1.0
#: seconds the sealing thread waits for a co-signer that does not answer before it gives up
#: (meanwhile its queue fills and live frames are refused, so blanked): a restart of OpenBao
#: costs blanked frames, not the camera
COSIGNER_PATIENCE = 60.0
#: once the sealer is closing, seconds it still waits for a co-signer that does not answer: a stop
#: rides out a blink (one request lost as the last clips are sealed) without hanging on an outage
CLOSING_PATIENCE = 5.0
#: a co-signer request for a class's new tracks also seals shares for this many track ids after
#: them, which the tracker, numbering tracks in turn, gives next: their first clips then need no
#: request of their own. The live walkway's low-score faces start tracks many times a second, and the
#: sealing thread waited on a request for most first clips (17 and 58 in two 10-s windows of one
#: fixed camera; 14 in 20 s with these). A share sealed for an id that never comes is never stored,
#: and a decrypt is what unmasks
SHARES_AHEAD = 32


@dataclass(frozen=True)
class _Terms:
    """What the sealing thread seals under: the policy's grants, roster, version and coding."""

    grants: dict[str, Grant]
    identities: list[PublicIdentity]
    version: int
    sha256: str
    coder: ClipCoder


@dataclass
class Clip:
    """One track's regions gathered for coding: where each was, and its original pixels."""

    placements: list[Placement]
    crops: list[np.ndarray]


class Gathering:
    """One camera's open clips, one per track, and when each ends: once its track has been unseen
    for :data:`IDLE_SECONDS`, once it spans :data:`CLIP_SECONDS`, or when its track has a second
    region in one frame. The sealing thread codes a clip when it ends (perf/bench_seal.py
    gathers the live walkway's regions with it too)."""

    def __init__(self) -> None:
        self.clips: dict[tuple[str, int], Clip] = {}

    def push(self, frame: int, pts_us: int, regions: list[Sealed],
             end: Callable[[list[tuple[str, int]], bool], None]) -> None:
        """Add a frame's regions, each to its track's clip. First ``end(keys, idle)`` is told, in
        order, of the clips the frame ends, and must :meth:`pop` them: those of tracks unseen for
        too long (``idle``), those the frame would make too long, then, region by region, a clip
        whose track already has a region in this frame."""
        end([k for k, c in self.clips.items() if pts_us - c.placements[-1].pts_us > IDLE_SECONDS * 1e6], True)
        end(sorted({(r.cls, r.track) for r in regions if (clip := self.clips.get((r.cls, r.track))) is not None
                    and pts_us - clip.placements[0].pts_us >= CLIP_SECONDS * 1e6}), False)
        for region in regions:
            key = (region.cls, region.track)
            clip = self.clips.get(key)
            if clip is not None and clip.placements[-1].frame >= frame:
                end([key], False)
            clip = self.clips.setdefault(key, Clip([], []))
            clip.placements.append(Placement(frame, pts_us, region.box))
            clip.crops.append(region.pixels)

    def pop(self, key: tuple[str, int]) -> Clip:
        return self.clips.pop(key)


def originals_mode(policy: dict) -> str:
    """The policy's ``storage.originals`` (``high`` unless it says ``lossless``)."""
    return str((policy.get("storage") or {}).get("originals", "high"))


class Sealer:
    """Seals the originals of one camera's redacted regions; use as a context manager.

    Every method is called from one thread (the camera's); the sealing itself runs on the
    sealer's own thread, in the order the calls were made. An error there is raised by the next
    call (and by :meth:`close`), as it would have been by a sealer that sealed in the caller.
    """

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
        originals: str | None = None,
        first_frame: int = 0,
        first_pts_us: int = 0,
    ) -> None:
        """``segment_seconds`` None: segments end only with their recording (:meth:`start_recording`).
        ``originals``: ``high`` or ``lossless`` whatever the policy says (still images are sealed lossless).
        ``first_frame``, ``first_pts_us``: where the first recording starts in the camera's output
        (a sealer restarted after a failure goes on from the frame it failed at)."""
        if segment_seconds is not None and segment_seconds <= 0:
            raise ValueError(f"segment length must be > 0 s, got {segment_seconds}")
        check_grants(grants, identities)
        coder = ClipCoder(originals or originals_mode(policy))  # raises on an unknown mode
        self.store, self.camera, self.grants, self.identities = store, check_camera(camera), grants, identities
        self._signer, self._clock, self._forced = signer, clock, originals
        self._segment_us = None if segment_seconds is None else int(segment_seconds * 1e6)
        if store.cosigner is None:
            raise VaultError("sealing needs the co-signer (OpenBao): no address is configured for this vault")
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(store.camera_lock(camera))
        try:
            store.cosigner.check()
            store.grant_access(camera, grants, identities)
            self._policy_sha256 = store.store_policy(policy)
            self._recover()
            self._last, self._previous = self._chain_head()
        except BaseException:
            self._lock.close()
            raise
        # what the sealing thread seals under (the caller's fields above run ahead of it)
        self._sealing = self.ref = self._new_ref(first_frame, first_pts_us)
        self._terms = _Terms(grants, identities, int(policy.get("version", 1)), self._policy_sha256, coder)
        self._writer: SegmentWriter | None = None
        self._started_us = 0
        self._roster_checked_us: int | None = None
        self._gathering = Gathering()
        #: the current segment's track shares and the co-signer's ciphertexts of them
        self._shares: dict[tuple[str, int], tuple[bytes, str]] = {}
        self.first_segment: int | None = None
        self.records = self.regions = 0  # records written and regions sealed, in the current recording
        #: frames refused because the sealing thread was behind; seconds of CPU it has used
        self.dropped, self.cpu_seconds = 0, 0.0
        self._failure: BaseException | None = None
        self._closing = threading.Event()  # close() cuts any wait for the co-signer short
        self._close_by = math.inf  # when close() was called, plus CLOSING_PATIENCE
        self.cosigner_waits = 0  # times the sealing thread found the co-signer not answering
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(QUEUE_FRAMES)
        self._thread = threading.Thread(target=self._run, name=f"seal-{camera}", daemon=True)
        self._thread.start()

    def __enter__(self) -> Sealer:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(complete=kind is None)

    def _recover(self) -> None:
        """Sign and keep what a crashed writer left; the event goes to the audit log. A partial
        that cannot be vouched for is refused (logged too), and so is sealing, until it is moved away."""
        for number in self.store.partial_segments(self.camera):
            try:
                kept = self.store.recover_partial(self.camera, number, self._signer)
            except VaultError as exc:
                self.store.audit.append(actor_of(self._signer), self._signer, "recover-refused",
                                        {"camera": self.camera, "segment": number, "reason": str(exc)})
                raise VaultError(f"camera {self.camera!r}: {exc}; sealing refused until the file is moved out "
                                 "of the vault (investigate it first: it may be forged)") from None
            if kept is not None:  # None: the segment was finished, only its partial was left behind
                self.store.audit.append(actor_of(self._signer), self._signer, "recover-segment",
                                        {"camera": self.camera, "segment": number, "records": kept})

    def _chain_head(self) -> tuple[int, str]:
        numbers = self.store.segment_numbers(self.camera)
        if not numbers:
            return 0, GENESIS
        last = self.store.segment(self.camera, numbers[-1])
        return last.number, last.digest

    # --- the caller's side ----------------------------------------------------------------------

    def add(self, frame: int, pts_us: int, regions: list[Sealed], wait: bool = True) -> bool:
        """Hand over the originals of one frame's regions (call for every frame, in order).

        ``wait`` False: if the sealing thread is :data:`QUEUE_FRAMES` frames behind, refuse the
        frame (False) instead of waiting; the caller must then not release it as redacted."""
        self._raise_failure()
        job = functools.partial(self._add, frame, pts_us, regions, self._clock())
        if wait:
            self._queue.put(job)
            return True
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def start_recording(self, first_frame: int, first_pts_us: int, wait: bool = True) -> VaultRef | None:
        """End the current recording (its last segment closed and logged) and begin the next,
        whose output starts with frame ``first_frame`` at media time ``first_pts_us``.

        ``wait`` False: if the sealing thread is :data:`QUEUE_FRAMES` frames behind, change nothing
        and return None instead of waiting (ask again at a later frame): a live camera's frame
        waits for this call, and with the sealing thread stuck (its co-signer unreachable) a wait
        would hold every later frame too, where refusing lets them leave blanked."""
        self._raise_failure()
        ref = self._new_ref(first_frame, first_pts_us)
        job = functools.partial(self._switch, ref, None, self._clock())
        if wait:
            self._queue.put(job)
        else:
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                self.dropped += 1  # the frame is refused, as by add()
                return None
        self.ref = ref
        return ref

    def change_policy(self, policy: dict, grants: dict[str, Grant], first_frame: int, first_pts_us: int,
                      identities: list[PublicIdentity] | None = None) -> VaultRef:
        """Seal from ``first_frame`` on under another policy (and, if given, the roster as it is now).

        The current recording ends and the next begins, so every segment stays bound to the one
        policy its header names. Raises before changing anything if a grant cannot be met.
        """
        self._raise_failure()
        identities = self.identities if identities is None else identities
        check_grants(grants, identities)
        coder = ClipCoder(self._forced or originals_mode(policy))
        self.store.grant_access(self.camera, grants, identities)
        digest = self.store.store_policy(policy)
        self.grants, self.identities, self._policy_sha256 = grants, identities, digest
        self.ref = self._new_ref(first_frame, first_pts_us)
        terms = _Terms(grants, identities, int(policy.get("version", 1)), digest, coder)
        self._queue.put(functools.partial(self._switch, self.ref, terms, self._clock()))
        return self.ref

    def recorded(self, file: str, frames: int) -> dict:
        """Log that the redacted output of the current recording (``file``) holds ``frames`` frames:
        what ``vault verify --recordings`` and ``unmask`` compare the file with (call after :meth:`close`)."""
        return self.store.audit.append(actor_of(self._signer), self._signer, "recorded", {
            "camera": self.camera, "recording": self.ref.recording, "file": file, "frames": frames})

    @property
    def policy_sha256(self) -> str:
        return self._policy_sha256

    def close(self, complete: bool = True) -> None:
        """Finish the last segment and log the recording (``complete`` False: its output failed)."""
        try:
            if self._thread.is_alive():
                self._close_by = time.monotonic() + CLOSING_PATIENCE
                self._closing.set()
                self._queue.put(functools.partial(self._finish_recording, complete, self._clock()))
                self._queue.put(None)
                self._thread.join()
            self._raise_failure()
        finally:
            self._lock.close()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _new_ref(self, first_frame: int, first_pts_us: int) -> VaultRef:
        return VaultRef(self.camera, f"{self._clock()[:10]}-{secrets.token_hex(8)}", first_frame, first_pts_us)

    # --- the sealing thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._failure is not None:
                continue  # keep draining, so that callers never block on a dead thread
            started = time.thread_time()
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 (handed to the caller by its next call)
                self._failure = exc
                if self._writer is not None:  # its partial stays, for the next sealer to recover
                    self._writer.abort()
                    self._writer = None
            self.cpu_seconds += time.thread_time() - started

    # (``now``: the clock when the caller made the call, so that times do not depend on the thread's lag)

    def _add(self, frame: int, pts_us: int, regions: list[Sealed], now: str) -> None:
        if self._roster_checked_us is None or abs(pts_us - self._roster_checked_us) >= ROSTER_CHECK_SECONDS * 1e6:
            self._roster_checked_us = pts_us
            identities = self.store.reload_roster()
            if identities is not None:
                self._new_roster(identities, now)
        if self._writer is not None and self._segment_us is not None and pts_us - self._started_us >= self._segment_us:
            self._roll(now)
        if self._writer is None:
            self._open(pts_us, now)
        self._gathering.push(frame, pts_us, regions, self._ended)
        self.regions += len(regions)

    def _ended(self, keys: list[tuple[str, int]], idle: bool) -> None:
        self._seal_clips(keys)
        if idle:  # the track is gone: its next clip starts from the camera's last quantiser
            for key in keys:
                self._terms.coder.forget(key)

    def _seal_shares(self, key: str, items: list[tuple[bytes, bytes]]) -> list[str]:
        """The co-signer's ciphertexts of the shares, waiting up to :data:`COSIGNER_PATIENCE` for it,
        or once closing, up to :data:`CLOSING_PATIENCE` after close() was called."""
        deadline = time.monotonic() + COSIGNER_PATIENCE
        while True:
            try:
                return self.store.cosigner.seal_shares(key, items)
            except CoSignerUnavailable:
                if time.monotonic() > min(deadline, self._close_by):
                    raise
                self.cosigner_waits += 1
                if self._closing.wait(0.5):  # closing: the wait above ends at once, so pace the retries
                    time.sleep(0.5)

    def _new_roster(self, identities: list[PublicIdentity], now: str) -> None:
        """Seal from here on to the roster as it is now: a new segment, wrapped to the people in it.
        A roster that no longer meets a grant stops sealing (raises), so the camera's frames are blanked."""
        check_grants(self._terms.grants, identities)
        self.store.grant_access(self.camera, self._terms.grants, identities)
        if self._writer is not None:
            self._roll(now)
        self._terms = dataclasses.replace(self._terms, identities=identities)
        self.identities = identities

    def _seal_clips(self, keys: list[tuple[str, int]]) -> None:
        """Code and seal these tracks' clips; shares for tracks new to the segment first (and for the
        :data:`SHARES_AHEAD` ids after them), one co-signer request per class."""
        assert self._writer is not None
        header = self._writer.header
        for cls in sorted({cls for cls, track in keys if (cls, track) not in self._shares}):
            tracks = sorted({track for c, track in keys if c == cls and (c, track) not in self._shares})
            tracks += [t for t in range(tracks[-1] + 1, tracks[-1] + 1 + SHARES_AHEAD) if (cls, t) not in self._shares]
            shares = [os.urandom(32) for _ in tracks]
            contexts = [share_context(self.camera, header.segment, cls, track) for track in tracks]
            sealed = self._seal_shares(segment_key(header.vault, self.camera, cls, header.segment),
                                       list(zip(contexts, shares, strict=True)))
            self._shares.update({(cls, t): (s, c) for t, s, c in zip(tracks, shares, sealed, strict=True)})
        for key in keys:
            clip = self._gathering.pop(key)
            codec, size, coded = self._terms.coder.encode(clip.crops, key)
            self._writer.add_clip(key[1], key[0], tuple(clip.placements), codec, size, coded, self._shares[key])
            self.records += 1

    def _open(self, pts_us: int, now: str) -> None:
        number = self._last + 1
        terms = self._terms
        header = SegmentHeader(self.camera, number, terms.version, terms.sha256, self._sealing.recording, now,
                               self._previous, vault=self.store.vault_id)
        self._writer = self.store.open_segment(header, terms.grants, terms.identities, self._signer)
        self._started_us = pts_us
        if self.first_segment is None:
            self.first_segment = number

    def _roll(self, now: str) -> None:
        assert self._writer is not None
        self._seal_clips(list(self._gathering.clips))
        self._shares.clear()
        self._previous = self._writer.close(now, self.store.audit.head())
        self._last = self._writer.header.segment
        self._writer = None

    def _switch(self, ref: VaultRef, terms: _Terms | None, now: str) -> None:
        self._finish_recording(True, now)
        self._terms = terms or self._terms
        self._sealing = ref
        self.first_segment, self.records, self.regions = None, 0, 0

    def _finish_recording(self, complete: bool, now: str) -> None:
        if self._writer is not None:
            self._roll(now)
        if self.first_segment is not None:
            self.store.audit.append(actor_of(self._signer), self._signer, "seal", {
                "camera": self.camera, "recording": self._sealing.recording,
                "segments": [self.first_segment, self._last], "records": self.records, "regions": self.regions,
                "head": self._previous, "output": "written" if complete else "failed"})


def check_grants(grants: dict[str, Grant], identities: list[PublicIdentity]) -> None:
    """Refuse now, not at the first region, a grant the roster cannot meet (too few holders of its roles)."""
    for cls, grant in grants.items():
        try:
            wrap_key(os.urandom(32), grant, identities, b"check")
        except ValueError as exc:
            raise VaultError(f"unmask.{cls}: {exc}") from None


def grants_of(policy) -> dict[str, Grant]:
    """The unmask grant of every class the policy redacts and seals (``policy`` is a redaction
    Policy): its enabled detected classes, and ``zone:<name>`` for each liftable zone."""
    enabled = policy.classes.enabled()
    grants = {cls: Grant(tuple(getattr(policy.unmask, cls).roles), getattr(policy.unmask, cls).quorum)
              for cls in ("face", "plate") if cls in enabled}
    for name, zone in policy.zones.items():
        if zone.mode == "liftable":
            grant = policy.zone_grant(name)
            grants[f"zone:{name}"] = Grant(tuple(grant.roles), grant.quorum)
    return grants
