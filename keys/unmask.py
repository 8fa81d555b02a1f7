"""Unmasking: restore exactly the selected sealed regions of one recording, accountably.

The steps, in this order, and nothing is decrypted before the fourth:

1. the camera's segment chain and the audit log are verified; the recording's segments
   must all be there (the log's ``seal`` entry names them);
2. records are selected by class, track and time from their headers (plaintext; no key);
3. the holders are checked against the key files' recipient lists: some wrap of every
   needed class must name only holders (not a recipient, or quorum incomplete: refused);
4. :meth:`Unmask.authorize` checks that the co-signer (OpenBao) answers and logs the
   requester in with their identity key, then appends the signed request to the audit log
   (every holder signs it); only then are data keys unwrapped and, one request per track and
   segment, the selected tracks' shares asked of the co-signer, which decides by its own
   policies and logs each request before answering. Only the selected tracks' keys are derived.

A restored region never reveals a region that was not selected: where a selected box
overlaps an unselected one, the overlap stays as redacted. A record (a clip of one track) is
decrypted and decoded only if one of its frames is selected, and only up to the last of them.

:func:`recording_tracks` is the look before an unmask (``vault tracks``): which tracks a
recording sealed, when and where they first appear, from the record headers alone;
:func:`regions_at` what was sealed on one frame (the subject a click on it marks).
:meth:`Unmask.planned` is an unmask known without any private key: what a gateway files for an
investigator, whose request and key layers are those the investigator's own run computes.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NoReturn, Protocol

import numpy as np
from cryptography.exceptions import InvalidSignature

from .cosigner import CoSigner, segment_key, share_context
from .errors import (
    AuditError,
    CoSignerRefused,
    RecordError,
    UnmaskError,
    UnwrapError,
    VaultError,
)
from .identity import PrivateIdentity, PublicIdentity, canonical
from .record import Header, Placement, Record, open_record, shared_track_key, track_key
from .seal import VaultRef
from .store import VaultStore
from .vault import Segment, key_context, segment_name
from .wrap import Wrap, peel, unwrap_key

#: (class ``zone:<name>``, the policy that sealed it, frame height, width) -> (x, y, mask) of the zone
ZoneMask = Callable[[str, dict, int, int], tuple[int, int, np.ndarray]]


@dataclass(frozen=True)
class Selection:
    """What to restore; empty sets and None bounds select everything."""

    tracks: frozenset[int] = frozenset()
    classes: frozenset[str] = frozenset()
    start_us: int | None = None  # media time in the redacted output, inclusive
    end_us: int | None = None

    def wants(self, header: Header, placement: Placement, first_pts_us: int) -> bool:
        at = placement.pts_us - first_pts_us
        return ((not self.tracks or header.track in self.tracks)
                and (not self.classes or header.cls in self.classes)
                and (self.start_us is None or at >= self.start_us)
                and (self.end_us is None or at <= self.end_us))

    def to_json(self) -> dict:
        return {"tracks": sorted(self.tracks), "classes": sorted(self.classes),
                "from_us": self.start_us, "to_us": self.end_us}


@dataclass(frozen=True)
class _Named:
    """A holder known only by their public identity (:meth:`Unmask.planned`): no key opens with it."""

    public: PublicIdentity


class Unmask:
    """One unmask of one recording by a set of holders; see the module docstring for the steps."""

    def __init__(self, store: VaultStore, ref: VaultRef, selection: Selection, holders: list[PrivateIdentity],
                 cosigner: CoSigner | None = None, log: UnmaskLog | None = None, others: tuple[str, ...] = (),
                 zone_mask: ZoneMask | None = None) -> None:
        """``cosigner``: the co-signer to ask for shares (default: the one the vault records);
        ``log``: where the audit log is (default: the vault's own, :class:`LocalLog`); ``others``:
        the rest of the quorum, on other machines (they approve and peel their layers of a
        request file; :mod:`keys.requests`); ``zone_mask``: the pixels of a zone (class
        ``zone:<name>``) in a frame, from the policy that sealed it: a zone's sealed box holds
        only the zone, and only the zone is put back."""
        self._zone_mask = zone_mask
        if not holders:
            raise UnmaskError("no identity given")
        self.store, self.ref, self.selection, self.holders = store, ref, selection, holders
        self.others = tuple(sorted(set(others) - {h.public.name for h in holders}))
        self.log = log or LocalLog(store)
        self._check_holders()
        chain = self._chain()
        try:
            log = self.log.entries(chain)
        except (AuditError, VaultError) as exc:
            raise UnmaskError(f"{exc}; unmask refused until the log is repaired or investigated") from None
        segments = self._segments(chain, log)
        recorded = [e["details"] for e in log if e.get("action") == "recorded"
                    and e["details"].get("camera") == ref.camera and e["details"].get("recording") == ref.recording]
        #: the frames the gateway logged the redacted output as holding (None: not logged, older vaults)
        self.recorded_frames: int | None = recorded[-1]["frames"] if recorded else None
        self.frames_seen = 0  # frames handed to restore()
        self.policies = {s.header.policy_sha256: store.load_policy(s.header.policy_sha256) for s in segments}
        #: per record frame: (record, index of the frame in it, selected?, segment)
        self._frames: dict[int, list[tuple[Record, int, bool, Segment]]] = defaultdict(list)
        #: per selected record: how many of its first frames must be decoded, and how many are still to restore
        self._needs: dict[int, list[int]] = {}
        self._opened: dict[int, list[np.ndarray]] = {}  # decoded crops of records being restored
        self.selected = 0
        self.tracks: set[tuple[str, int]] = set()
        needed: set[tuple[int, str]] = set()
        #: per selected (segment, class, track) of version 3: where to find its share's ciphertext
        self._sealed_shares: dict[tuple[int, str, int], tuple[Segment, Header]] = {}
        for segment in segments:
            for record in segment.records:
                header = record.header
                for at, placement in enumerate(header.placements):
                    wanted = selection.wants(header, placement, ref.first_pts_us)
                    self._frames[placement.frame].append((record, at, wanted, segment))
                    if wanted:
                        need = self._needs.setdefault(id(record), [0, 0])
                        need[0], need[1] = at + 1, need[1] + 1
                        self.selected += 1
                        self.tracks.add((header.cls, header.track))
                        needed.add((segment.number, header.cls))
                        if header.version >= 3:
                            self._sealed_shares[(segment.number, header.cls, header.track)] = (segment, header)
        by_number = {s.number: s for s in segments}
        self._wraps: dict[tuple[int, str], list[Wrap]] = {}
        names = {h.public.name for h in holders} | set(self.others)
        #: who asks the co-signer for a class's shares: a holder some openable wrap names
        self._askers: dict[str, PrivateIdentity] = {}
        for number, cls in sorted(needed):
            segment = by_number[number]
            wraps = self._read_wraps(segment, log).get(cls, [])
            usable = [w for w in wraps if set(w.names) <= names]
            if not usable:
                raise UnmaskError(f"{', '.join(sorted(names))} may not unmask {cls} regions of this recording "
                                  "(not a recipient, or the quorum is incomplete)")
            self._wraps[(number, cls)] = wraps
            if segment.header.version >= 3:
                asker = next((h for w in usable for h in holders if h.public.name in w.names), None)
                if asker is None:
                    raise UnmaskError(f"no identity given here may unmask {cls} regions of this recording")
                self._askers.setdefault(cls, asker)
        self._cosigner = cosigner if cosigner is not None or not self._askers else store.unmask_cosigner()
        self._tokens: dict[str, str] = {}
        self._shares: dict[tuple[int, str, int], bytes] = {}
        self.shares_asked = 0  # share decrypt requests made (one per selected track and segment)
        self._authorized = False
        self._data_keys: dict[tuple[int, str], bytes] = {}
        self._track_keys: dict[tuple[int, str, int], bytes] = {}
        self.restored = 0
        self._planned = False  # see planned()

    @classmethod
    def planned(cls, store: VaultStore, ref: VaultRef, selection: Selection, requester: PublicIdentity,
                others: tuple[str, ...] = ()) -> Unmask:
        """The unmask ``requester`` would run with ``others`` approving on their machines, as far as
        it is known without a private key: the same checks (chain, log, segments, recipients), the
        request it would log (:meth:`request`) and the key layers it needs (:meth:`layers`). It can
        neither be authorized nor restore anything: what a gateway files for an investigator
        (:meth:`keys.UnmaskRequest.planned`)."""
        job = cls(store, ref, selection, [_Named(requester)], log=None, others=others)  # type: ignore[list-item]
        job._planned = True
        return job

    @property
    def watermark_required(self) -> bool:
        """True unless every policy that sealed this recording lets unmask leave the watermark out."""
        return any(p.get("unmask", {}).get("watermark", "required") != "optional" for p in self.policies.values())

    # --- checks before anything is decrypted ------------------------------------------------

    def _check_holders(self) -> None:
        known = {i.name: i for i in self.store.identities}
        for holder in self.holders:
            public = known.get(holder.public.name)
            if public is None or public.hpke != holder.public.hpke or public.signing != holder.public.signing:
                raise UnmaskError(f"identity {holder.public.name!r} is not in this vault's key directory")

    def _chain(self) -> list[Segment]:
        try:
            return list(self.store.verify_chain(self.ref.camera))
        except VaultError as exc:
            raise UnmaskError(f"vault camera {self.ref.camera!r}: {exc}") from None

    def _segments(self, chain: list[Segment], log: list[dict]) -> list[Segment]:
        camera = self.ref.camera
        segments = [s for s in chain if s.header.recording == self.ref.recording]
        sealed = [e["details"] for e in log if e["action"] == "seal" and e["details"].get("recording") == self.ref.recording]
        if sealed:
            first, last = sealed[-1]["segments"]
            missing = sorted(set(range(first, last + 1)) - {s.number for s in segments})
            if missing:
                raise UnmaskError(f"vault camera {camera!r}: segment {segment_name(missing[0])} of this recording is missing")
        if not segments:
            raise UnmaskError(f"no sealed records for this file (camera {camera!r}, recording {self.ref.recording}) "
                              f"in {self.store.location}")
        return segments

    def _read_wraps(self, segment: Segment, log: list[dict]) -> dict[str, list[Wrap]]:
        for entry in log:  # a key file put back after shredding opens nothing: the co-signer's keys are gone
            if entry["action"] == "shred" and [self.ref.camera, segment.number] in entry["details"].get("segments", []):
                raise UnmaskError(f"segment {segment_name(segment.number)} of camera {self.ref.camera!r} was "
                                  f"crypto-shredded (audit entry {entry['seq']}); nobody can unmask it")
        try:
            return self.store.wraps(self.ref.camera, segment)
        except VaultError as exc:
            raise UnmaskError(f"vault camera {self.ref.camera!r}: {exc}") from None

    # --- accountability, then decryption ------------------------------------------------------

    def check_terms(self, case: str, reason: str, watermark: bool) -> None:
        """Refuse an unmask without a case and a reason, or without the watermark its policy requires."""
        if not case.strip() or not reason.strip():
            raise UnmaskError("a case id and a reason are required")
        if not watermark and self.watermark_required:
            raise UnmaskError("the policy of this recording requires the watermark (unmask.watermark: required)")

    def request(self, case: str, reason: str, output: str, watermark: bool) -> dict:
        return {"camera": self.ref.camera, "recording": self.ref.recording, "case": case, "reason": reason,
                "selection": self.selection.to_json(),
                "identities": sorted({h.public.name for h in self.holders} | set(self.others)),
                "tracks": [[cls, track] for cls, track in sorted(self.tracks)], "regions": self.selected,
                "output": output, "watermark": watermark}

    def layers(self, requester: PrivateIdentity) -> list[dict]:
        """For a quorum on several machines: per needed (segment, class), the wrap sealed to exactly
        the quorum with ``requester`` innermost, so that the others peel theirs and only the
        requester ever sees the data key (:mod:`keys.requests`)."""
        names = {h.public.name for h in self.holders} | set(self.others)
        out = []
        for (number, cls), wraps in sorted(self._wraps.items()):
            wrap = next((w for w in wraps if set(w.names) <= names and w.names[0] == requester.public.name), None)
            if wrap is None:
                raise UnmaskError(f"segment {segment_name(number)}: no {cls} key is sealed with "
                                  f"{requester.public.name} innermost (sealed before quorums could peel in turn?)")
            out.append({"segment": number, "class": cls, "names": list(wrap.names), "peeled": 0,
                        "blob": base64.b64encode(wrap.blob).decode("ascii")})
        return out

    def authorize(self, case: str, reason: str, output: str, watermark: bool, approvals: dict[str, str] | None = None,
                  layers: list[dict] | None = None) -> dict:
        """Write the signed request to the audit log; raises (and nothing opens) if it cannot be written.

        ``approvals``: the other quorum members' signatures of :meth:`request` (checked here);
        ``layers``: the wraps they peeled down to the one holder's innermost layer."""
        if self._planned:
            raise UnmaskError("a planned unmask holds no key: the requester runs it on their machine")
        self.check_terms(case, reason, watermark)
        details = self.request(case, reason, output, watermark)
        signed = canonical(details)
        given = dict(approvals or {})
        if sorted(given) != list(self.others):
            raise UnmaskError(f"the request needs the approval of {', '.join(self.others) or 'nobody else'}; "
                              f"it has {', '.join(sorted(given)) or 'none'}")
        for name, signature in given.items():
            key = self.store.key_of(name)
            try:
                if key is None:
                    raise ValueError
                key.verify(bytes.fromhex(signature), signed)
            except (ValueError, InvalidSignature):
                raise UnmaskError(f"{name}'s approval does not verify (another request, or altered)") from None
        token = None
        if self._cosigner is not None:  # availability first: nothing is logged as granted that cannot run
            self._cosigner.check()
            try:
                self._tokens = {cls: self._cosigner.login(h) for cls, h in self._askers.items()}
            except CoSignerRefused:
                self._refused(case, reason, "the co-signer refused the login of " +
                              ", ".join(sorted({h.public.name for h in self._askers.values()})))
            token = next(iter(self._tokens.values()))
            try:  # the log must reach what the co-signer last saw of it: not cut, not rolled back
                self.log.confirm(self._cosigner, token)
            except (AuditError, VaultError) as exc:
                raise UnmaskError(f"{exc}; unmask refused until the log is repaired or investigated") from None
        details["approvals"] = {**given, **{h.public.name: h.signing.sign(signed).hex() for h in self.holders}}
        try:
            entry = self.log.append(self.holders, "unmask", details)
        except AuditError as exc:
            raise UnmaskError(f"{exc}; unmask refused") from None
        if self._cosigner is not None:  # the entry reaches the co-signer before any share is asked for
            try:
                self.log.anchor(entry, self._cosigner, token)
            except CoSignerRefused:
                raise UnmaskError("unmask refused: the co-signer did not take the audit log's checkpoint") from None
        if layers is not None:  # the data keys the quorum peeled down to a holder here, once logged
            self._open_layers(layers)
        # every share now, before any pixel: an outage or refusal stops the unmask before it writes anything
        for (number, cls, track), (segment, header) in sorted(self._sealed_shares.items(), key=lambda kv: kv[0]):
            self._shares[(number, cls, track)] = self._share(segment, header, case, reason)
        self._authorized = True
        return entry

    def _open_layers(self, layers: list[dict]) -> None:
        """The data keys from layers the rest of the quorum peeled: each down to one holder's."""
        holders = {h.public.name: h for h in self.holders}
        for layer in layers:
            try:
                names, peeled = tuple(layer["names"]), int(layer["peeled"])
                number, cls = int(layer["segment"]), str(layer["class"])
                blob = base64.b64decode(layer["blob"], validate=True)
                holder = holders[names[0]]
                if peeled != len(names) - 1 or (number, cls) not in self._wraps:
                    raise ValueError
            except (KeyError, TypeError, ValueError, IndexError):
                raise UnmaskError("the request's key layers are not peeled down to an identity given here") from None
            try:
                self._data_keys[(number, cls)] = peel(names, peeled, blob, holder, key_context(self.ref.camera, number, cls))
            except UnwrapError:
                raise UnmaskError("cannot unmask: the identities given do not open this recording's keys") from None

    def _refused(self, case: str, reason: str, why: str) -> NoReturn:
        """Audit a refusal with its reason, then give the caller one opaque refusal."""
        first = self.holders[0]
        details = {"camera": self.ref.camera, "recording": self.ref.recording, "case": case, "reason": reason,
                   "identities": sorted(h.public.name for h in self.holders), "refused": why}
        details["approvals"] = {first.public.name: first.signing.sign(canonical(details)).hex()}
        self.log.append([first], "unmask-refused", details)
        raise UnmaskError("unmask refused")

    def restore(self, index: int, time_s: float, image: np.ndarray, tolerance_us: int) -> int:
        """Restore the selected regions of the output's frame ``index`` in place; returns how many."""
        if not self._authorized:
            raise RuntimeError("authorize() must write the audit entry before anything is decrypted")
        self.frames_seen += 1
        items = self._frames.pop(self.ref.first_frame + index, None)
        if not items:
            return 0
        expected = self.ref.first_pts_us + round(time_s * 1e6)
        height, width = image.shape[:2]
        for record, at, _, _ in items:
            placement = record.header.placements[at]
            x, y, w, h = placement.box
            if abs(placement.pts_us - expected) > tolerance_us or x + w > width or y + h > height:
                raise UnmaskError("the file does not match its sealed records (cut, re-encoded or edited after "
                                  "redaction?)")
        count = 0
        others = [r.header.placements[at].box for r, at, chosen, _ in items if not chosen]
        for record, at, wanted, segment in items:
            if not wanted:
                continue
            need = self._needs[id(record)]
            crops = self._opened.get(id(record))
            if crops is None:
                crops = self._opened[id(record)] = self._open(record, segment, need[0])
            _paste(image, record.header.placements[at].box, crops[at], others,
                   self._mask_of(record.header.cls, segment, height, width, record.header.placements[at].box))
            count += 1
            need[1] -= 1
            if need[1] == 0:  # every selected frame of the clip is back: let its pictures go
                del self._opened[id(record)]
        self.restored += count
        return count

    def _mask_of(self, cls: str, segment: Segment, height: int, width: int, box: tuple[int, int, int, int]):
        """The zone's mask over ``box`` (None for a detected class: its whole box is put back)."""
        if not cls.startswith("zone:"):
            return None
        if self._zone_mask is None:
            raise UnmaskError(f"{cls}: restoring a privacy zone needs its mask (this unmask was not given the "
                              "policy's zones)")
        x, y, mask = self._zone_mask(cls, self.policies[segment.header.policy_sha256], height, width)
        if (x, y, mask.shape[1], mask.shape[0]) != tuple(box):
            raise UnmaskError("the file does not match its sealed records (its frame size differs from the one the "
                              f"zone {cls} was sealed at)")
        return mask

    @property
    def unused(self) -> int:
        """Selected regions whose frame never came (the file is shorter than what was sealed)."""
        return sum(1 for items in self._frames.values() for _, _, wanted, _ in items if wanted)

    def _open(self, record: Record, segment: Segment, count: int) -> list[np.ndarray]:
        header = record.header
        key = self._track_keys.get((segment.number, header.cls, header.track))
        if key is None:
            data_key = self._data_keys.get((segment.number, header.cls))
            if data_key is None:
                try:
                    data_key = unwrap_key(self._wraps[(segment.number, header.cls)], self.holders,
                                          key_context(header.camera, segment.number, header.cls))
                except UnwrapError:
                    raise UnmaskError("cannot unmask: the identities given do not open this recording's keys") from None
                self._data_keys[(segment.number, header.cls)] = data_key
            if header.version < 3:
                key = track_key(data_key, header.camera, segment.number, header.track)
            else:
                key = shared_track_key(data_key, self._shares[(segment.number, header.cls, header.track)],
                                       header.camera, segment.number, header.cls, header.track)
            self._track_keys[(segment.number, header.cls, header.track)] = key
        try:
            return open_record(key, record, count)
        except RecordError:
            raise UnmaskError("a sealed record does not open (vault damaged?)") from None


    def _share(self, segment: Segment, header: Header, case: str, reason: str) -> bytes:
        """One track's share in one segment, from the co-signer: one request, naming that track."""
        assert self._cosigner is not None
        key = segment_key(segment.header.vault, header.camera, header.cls, segment.number)
        self.shares_asked += 1
        try:
            return self._cosigner.open_share(self._tokens[header.cls], key,
                                             share_context(header.camera, segment.number, header.cls, header.track),
                                             header.share)
        except CoSignerRefused:
            self._refused(case, reason, f"the co-signer refused the share of {header.cls} track {header.track} "
                                        f"in segment {segment.number}")


class UnmaskLog(Protocol):
    """Where an unmask reads and writes the audit log: the vault's own file (:class:`LocalLog`), or
    the gateway's over its API for an unmask on another machine."""

    def entries(self, chain: list[Segment]) -> list[dict]:
        """The log's entries that bear on ``chain`` (the camera's segments), verified; raises
        :class:`AuditError` or :class:`VaultError` if the log or its checkpoints do not hold."""

    def confirm(self, cosigner: CoSigner, token: str) -> None:
        """Check the log against the co-signer's checkpoints (``token``: a person's, just logged in)."""

    def append(self, holders: list[PrivateIdentity], action: str, details: dict) -> dict:
        """Write one entry (``details`` carries every holder's approval); the entry as written."""

    def anchor(self, entry: dict, cosigner: CoSigner, token: str) -> None:
        """Make sure the co-signer's checkpoint covers ``entry`` before any share is asked for."""


class LocalLog:
    """The vault's own audit log file, verified against the segments' and the co-signer's checkpoints."""

    def __init__(self, store: VaultStore) -> None:
        self.store = store

    def entries(self, chain: list[Segment]) -> list[dict]:
        audit = self.store.audit
        if not audit.exists():
            if any(s.audit is None or s.audit[0] > 0 for s in chain):
                raise AuditError("the audit log is missing, but the vault holds segments sealed after entries of it")
            return []
        camera = chain[0].header.camera if chain else ""
        audit.verify(self.store.key_of, [(*s.audit, f"segment {camera}/{segment_name(s.number)}")
                                         for s in chain if s.audit])
        return audit.entries()

    def confirm(self, cosigner: CoSigner, token: str) -> None:
        self.store.audit.verify(self.store.key_of, self.store.cosigner_anchors(cosigner, token))

    def append(self, holders: list[PrivateIdentity], action: str, details: dict) -> dict:
        first = holders[0]
        return self.store.audit.append(first.public.name, first.signing, action, details)

    def anchor(self, entry: dict, cosigner: CoSigner, token: str) -> None:
        seq, head = self.store.audit.head()
        cosigner.checkpoint(self.store.vault_id, seq, head, token)


#: a track's records further apart than this (seconds) are two time ranges of it: it was lost
#: (or behind something) in between and linked again by the tracker
RANGE_GAP = 0.25


@dataclass(frozen=True)
class TrackSummary:
    """One sealed track of a recording, from its record headers (nothing is decrypted). A track
    is one subject: the tracker links a face it lost for a moment back to its id at seal time."""

    cls: str
    track: int
    frames: int  # frames the track was redacted in
    first_s: float  # media time in the redacted output of its first and last record
    last_s: float
    box: tuple[int, int, int, int]  # x, y, w, h of its first sealed box
    #: the time ranges (seconds) it was masked in: more than one when it was lost and linked back
    ranges: tuple[tuple[float, float], ...] = ()


def _placements(store: VaultStore, ref: VaultRef, numbers: Iterable[int] | None = None):
    """(media seconds, header, placement) of every sealed frame of the recording ``ref`` names, in
    time order within each track (records are written as their clips close, not in frame order).
    ``numbers``: the recording's segments, when known (its ``seal`` entry names them); else every
    segment of the camera is read to find them."""
    for number in store.segment_numbers(ref.camera) if numbers is None else numbers:
        segment = store.segment(ref.camera, number)
        if segment.header.recording != ref.recording:
            continue
        for record in segment.records:
            for placement in record.header.placements:
                yield (placement.pts_us - ref.first_pts_us) / 1e6, record.header, placement


def recording_tracks(store: VaultStore, ref: VaultRef, numbers: Iterable[int] | None = None) -> list[TrackSummary]:
    """The tracks sealed for the recording ``ref`` names, ordered by first appearance, then class and id.

    Each segment's signature and digest are checked as it is read; the chain is not (that is
    :func:`keys.verify_vault`'s and :class:`Unmask`'s job).
    """
    tracks: dict[tuple[str, int], list] = {}
    for t, h, p in sorted(_placements(store, ref, numbers), key=lambda item: item[0]):
        item = tracks.setdefault((h.cls, h.track), [0, p.box, []])
        item[0] += 1
        ranges = item[2]
        if ranges and t - ranges[-1][1] <= RANGE_GAP:
            ranges[-1][1] = t
        else:
            ranges.append([t, t])
    ordered = sorted(tracks.items(), key=lambda kv: (kv[1][2][0][0], kv[0]))
    return [TrackSummary(cls, track, frames, ranges[0][0], ranges[-1][1], tuple(box),
                         tuple((a, b) for a, b in ranges))
            for (cls, track), (frames, box, ranges) in ordered]


@dataclass(frozen=True)
class SealedRegion:
    """One sealed region of one frame, from its record's header (nothing is decrypted)."""

    cls: str
    track: int
    box: tuple[int, int, int, int]  # x, y, w, h in pixels of the redacted frame

    def covers(self, x: float, y: float) -> bool:
        bx, by, bw, bh = self.box
        return bx <= x < bx + bw and by <= y < by + bh


def regions_at(store: VaultStore, ref: VaultRef, at_s: float,
               numbers: Iterable[int] | None = None) -> tuple[float, list[SealedRegion]]:
    """The sealed frame nearest to media time ``at_s`` of the recording ``ref`` names: its time and
    its sealed regions, by class and track. Raises :class:`UnmaskError` when no sealed frame is
    within half a second of ``at_s``."""
    frames: dict[float, list[SealedRegion]] = {}
    for t, h, p in _placements(store, ref, numbers):
        frames.setdefault(t, []).append(SealedRegion(h.cls, h.track, tuple(p.box)))
    if not frames:
        raise UnmaskError("the recording has no sealed regions")
    nearest = min(frames, key=lambda t: abs(t - at_s))
    if abs(nearest - at_s) > 0.5:
        raise UnmaskError(f"nothing was sealed near {at_s:.2f} s (nearest sealed frame {nearest:.2f} s)")
    return nearest, sorted(frames[nearest], key=lambda r: (r.cls, r.track))


def tracks_at(store: VaultStore, ref: VaultRef, at_s: float, x: float, y: float,
              numbers: Iterable[int] | None = None) -> list[tuple[str, int]]:
    """The tracks (class, id) whose sealed box contains the point ``(x, y)`` on the frame shown at
    media time ``at_s`` (the sealed frame nearest to it): the subject an investigator pointed at.
    Raises :class:`UnmaskError` when no sealed frame is within half a second of ``at_s``."""
    _, regions = regions_at(store, ref, at_s, numbers)
    return sorted({(r.cls, r.track) for r in regions if r.covers(x, y)})


def _paste(image: np.ndarray, box: tuple[int, int, int, int], pixels: np.ndarray, others: list[tuple],
           mask: np.ndarray | None = None) -> None:
    """Put ``pixels`` back at ``box``, except where an unselected region's box overlaps it, and (with
    ``mask``, a zone's) only where the mask is set."""
    x, y, w, h = box
    target = image[y : y + h, x : x + w]
    keep = None if mask is None else mask.astype(bool)[:, :, None]
    for ox, oy, ow, oh in others:
        x0, y0 = max(x, ox) - x, max(y, oy) - y
        x1, y1 = min(x + w, ox + ow) - x, min(y + h, oy + oh) - y
        if x1 > x0 and y1 > y0:
            if keep is None:
                keep = np.ones((h, w, 1), dtype=bool)
            elif not keep.flags.writeable or keep.base is not None:
                keep = keep.copy()
            keep[y0:y1, x0:x1] = False
    if keep is None:
        target[:] = pixels  # no overlap: a plain copy
    else:
        np.copyto(target, pixels, where=keep)
