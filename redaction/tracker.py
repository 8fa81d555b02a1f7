"""Link detections across frames into tracks with stable integer ids.

Tracks are the unit of selective unmasking later, so ids are stable for the life of a
stream and never reused. The tracker sees only detection frames; :class:`Step` answers what
to mask on the frames held back between two detection frames:

* a track detected on both sides is interpolated (centre moves linearly) and its box is
  never smaller than either detection; when the two detections were linked only because the
  track's velocity (or a new track's possible speed) put them within reach, not because they
  overlap or lie close, the frames between get the hull of both boxes: when unsure whether it
  is one object that moved, both places are masked;
* a track first detected now is back-filled over the held-back frames before it;
* a track found again by a much smaller box inside its own, less surely than before, keeps its
  box (grown to take that one in): a detector that finds a part of a face has not found a face
  that shrank;
* a track no longer detected stays masked at its last box for ``persist`` seconds, and in any
  case (unless ``persist`` is 0) up to the first detection frame that misses it
  (:data:`MISSES_MASKED`).

Association, on each detection frame: each track's centre moves by a constant-velocity Kalman
filter (:class:`_Motion`), and detections are matched to where it puts them, by overlap or, for
small fast boxes, by centre distance within a reach that grows with the time since the track was
last found, between boxes of about one size. As in ByteTrack, tracks found at the last detection frame are matched first, to the
confident detections (score >= 0.5), then to the doubtful ones; lost tracks only to the
detections left, looked for both where their motion puts them and where they were last. A lost track is looked
for for ``link`` seconds, though masked only for ``persist``: found again, it goes on under its
id, so a face that was behind another or missed for a moment stays one subject. A lost track
whose place another track's detection covers is hidden there (not masked twice) but stays
linkable. A library tracker (Roboflow's ``trackers``, ``norfair``) was not used: they drop or
leave without id the low-score and unconfirmed detections that must still be masked and sealed
under an id, work frame by frame where this works across held-back strides, and would bring
supervision, rich and requests into the redaction engine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .regions import Region, iou_matrix, overlap_of_smaller, same_object

_IOU_MATCH = 0.25
_CONFIDENT = 0.5  # detections at least this sure are matched to the tracks being followed first
_CENTRE_MATCH = 0.6  # centre distance, as a fraction of the larger box side, for a match without overlap
#: how far (box sides per second) an object may have gone beyond its predicted place between two
#: detections: a small, fast box (an 8 px face walking 60 px/s) leaves its own width behind
#: within one detection stride, and must keep its track for the frames between to be masked
#: along its path; tracks with a velocity are looked for where it puts them
_NEW_SPEED = 8.0  # a track seen once: its velocity is unknown
_KNOWN_SPEED = 2.0  # a track with a velocity: how much it may change
#: a detection matched to a track by centre distance (not overlap) is at most this many times its
#: size or this many times smaller (the larger side of each box): the Hamilton clip's close-up
#: face, 165 px, was taken by a 42 px flicker beside it, seen once and so with a wide reach
_RESIZE = 2.0
_RESIZE_JITTER = 8.0  # pixels more: a 6 px face may be found as a 13 px one on the next frame
#: an interpolated box grows on every side by this share of how far its centre moved between the
#: two detections, times 4f(1 - f) at fraction f of the way (most in the middle, none at the ends):
#: objects do not move in straight lines at constant speed, and small ones move by more than their
#: own size between detections (measured: 7 px faces 4 px off the line after 26 px in 0.3 s)
_PATH_SLACK = 0.25
#: a lost track stays masked up to and including the detection frames that miss it, this many in
#: a row, however short ``persist`` is (if not 0): one miss is no evidence that a face left; the
#: frames after it are let go only when the next detection frame misses it too. Detection frames
#: come ``interval`` apart (0.2 s by default), within ``persist`` (0.5 s); on a machine that falls
#: behind they come later, and a face whose score dipped for one frame (the Hamilton clip's frame
#: 58, found by nothing, between scores of 0.12 and 0.11) was let go on that frame, unmasked,
#: when it came more than ``persist`` after the detection frame before it (the serve overload test).
#: The same holds for the tracks a scene cut ends: the Hamilton clip's pan from a close-up to the
#: audience, 0.8 s between two detection frames, read as a cut, and its first frame left with nothing
#: masked (found by nothing, as above) when the ended tracks masked only within ``persist``
MISSES_MASKED = 1


#: a detection matched to a track is taken for a part of its object (the track keeps masking its
#: whole box, see :func:`_part_of`) when it is at most this share of the track's area ...
_PART_AREA = 0.5
#: ... and at least this share of it lies inside the track's box
_PART_INSIDE = 0.8


#: the centre's motion model: detections jitter by about this share of the box side ...
_JITTER = 0.15
#: ... and an object's velocity changes by about this many box sides per second, per second
_ACCELERATION = 1.0


class _Motion:
    """A constant-velocity Kalman filter on a box centre (x and y alike, independent), in pixels.

    Detection frames come every 0.1-0.5 s, so the velocity between the last two detections of a
    small box is mostly jitter (a 10 px face found 2 px off reads as 10 px/s at 0.2 s); the filter
    weighs each new centre against where the velocity so far puts it, by their uncertainties.
    """

    def __init__(self, centre: np.ndarray, velocity: np.ndarray, side: float, elapsed: float) -> None:
        self.state = np.stack([centre, velocity], axis=1)  # rows x, y; columns position, velocity
        r = (_JITTER * side) ** 2
        # the first velocity is the difference of two jittered centres
        self.cov = np.array([[r, r / elapsed], [r / elapsed, 2 * r / elapsed**2]])

    def update(self, centre: np.ndarray, side: float, elapsed: float) -> None:
        f = np.array([[1.0, elapsed], [0.0, 1.0]])
        q = (_ACCELERATION * side) ** 2 * np.array([[elapsed**3 / 3, elapsed**2 / 2], [elapsed**2 / 2, elapsed]])
        state = self.state @ f.T
        cov = f @ self.cov @ f.T + q
        r = (_JITTER * side) ** 2
        gain = cov[:, 0] / (cov[0, 0] + r)  # the position is measured
        state = state + (centre - state[:, 0])[:, None] * gain[None, :]
        self.cov = cov - np.outer(gain, cov[0, :])
        self.state = state

    @property
    def velocity(self) -> np.ndarray:
        return self.state[:, 1].copy()


@dataclass
class _Track:
    id: int
    cls: str
    shape: str
    box: np.ndarray  # last detected x, y, w, h
    score: float
    seen: float  # time of the last detection
    velocity: np.ndarray | None = None  # of the box centre, pixels per second (None: seen once)
    motion: _Motion | None = None  # the filtered centre and velocity (from the second detection on)
    #: lost where another track's detection is (behind it, or a duplicate of it): not masked,
    #: still looked for until ``link`` runs out
    hidden: bool = False
    #: a scene cut came after it: masked at its last box while it persists or is held
    #: (:data:`MISSES_MASKED`), never matched again
    ended: bool = False
    #: detection frames in a row that did not find it, since it was last seen
    misses: int = 0


@dataclass(frozen=True)
class _Span:
    """What one track looked like at the previous and at the current detection frame."""

    id: int
    cls: str
    shape: str
    before: np.ndarray | None  # box masked at the previous detection frame
    after: np.ndarray | None  # box detected now
    score_before: float
    score_after: float
    seen: float
    hull: bool = False  # linked only by reach: the frames between get the hull of both boxes
    #: lost, and its place is another track's detection now: masked on the frames between, not after
    absorbed: bool = False
    #: the same object at the same place on both sides of a scene cut whose frame is known (a logo, a
    #: face that stayed): the track before it is masked up to the cut, the one after it from the cut
    #: on, not both over every frame between
    split: bool = False
    #: lost, but missed too few times in a row to be let go: masked up to this frame whatever ``persist`` says
    held: bool = False


class Step:
    """The outcome of one detection frame: its own regions and those of held-back frames."""

    def __init__(self, time: float, previous: float | None, spans: list[_Span], persist: float,
                 cut: float | None = None) -> None:
        """``cut``: the time of the first frame after a scene cut between the previous detection frame
        and this one, when it is known (see :attr:`_Span.split`)."""
        self.time = time
        self.previous = previous
        self._spans = spans
        self._persist = persist
        self._cut = cut

    @property
    def current(self) -> list[Region]:
        """Regions to mask on the detection frame itself: detected or still persisting."""
        return self.at(self.time)

    def at(self, time: float) -> list[Region]:
        """Regions to mask on a frame at ``time``, between the previous detection frame and this one."""
        out = []
        for span in self._spans:
            box, score = self._box_at(span, time)
            if box is not None:
                out.append(Region(span.cls, *map(float, box), score, span.shape, span.id))
        return out

    def _box_at(self, span: _Span, time: float) -> tuple[np.ndarray | None, float]:
        if span.split and self._cut is not None and (time < self._cut) == (span.after is not None):
            return None, 0.0  # the other side of the cut, where the other track masks the same place
        if span.after is not None and span.before is not None and self.previous is not None:
            if time >= self.time:
                return span.after, span.score_after
            if span.hull:
                return _hull(span.before, span.after), min(span.score_before, span.score_after)
            f = (time - self.previous) / max(self.time - self.previous, 1e-9)
            f = min(max(f, 0.0), 1.0)
            centre_before = span.before[:2] + span.before[2:] / 2
            centre_after = span.after[:2] + span.after[2:] / 2
            centre = centre_before + f * (centre_after - centre_before)
            slack = _PATH_SLACK * np.linalg.norm(centre_after - centre_before) * 4 * f * (1 - f)
            size = np.maximum(span.before[2:], span.after[2:]) + 2 * slack
            return np.concatenate([centre - size / 2, size]), min(span.score_before, span.score_after)
        if span.after is not None:  # first detection: back-fill the held-back frames
            return span.after, span.score_after
        if (span.before is not None and (time - span.seen <= self._persist or span.held)
                and not (span.absorbed and time >= self.time)):
            return span.before, span.score_before
        return None, 0.0


def _hull(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest ``x, y, w, h`` box holding both boxes."""
    corner = np.minimum(a[:2], b[:2])
    return np.concatenate([corner, np.maximum(a[:2] + a[2:], b[:2] + b[2:]) - corner])


def _predicted(track: _Track, time: float) -> np.ndarray:
    """The track's last box where its velocity puts it at ``time``."""
    box = track.box.copy()
    if track.velocity is not None:
        box[:2] += track.velocity * (time - track.seen)
    return box


def _part_of(box: np.ndarray, score: float, track: _Track, predicted: np.ndarray) -> bool:
    """Whether a detection matched to ``track`` is likely a part of the object the track has: at most
    :data:`_PART_AREA` of its box, almost all (:data:`_PART_INSIDE`) inside it where its motion puts
    it, and found no more surely than the track was. No object halves in a detection stride; a
    detector that reads a face on a blocky frame finds a part of it now and then. Live, on the
    Hamilton clip over WebRTC, a 53x67 px face found at 0.89 was found as a 36x28 px box round its
    mouth at 0.54 on the next two detection frames, and its eyes were released on the frames between.
    ``predicted``: the track's box where its motion puts it (:func:`_predicted`)."""
    if score > track.score or box[2] * box[3] > _PART_AREA * track.box[2] * track.box[3]:
        return False
    # the detection is the smaller box: the share of it inside the track's
    return bool(overlap_of_smaller(box[None], predicted[None])[0, 0] >= _PART_INSIDE)


class Tracker:
    """Greedy IoU tracker (with a centre-distance fallback for small, fast boxes)."""

    def __init__(self, persist: float, link: float | None = None) -> None:
        """``persist``: seconds a lost track stays masked at its last box; ``link``: seconds a lost
        track is still looked for (at least ``persist``; default ``persist``): found again where
        its motion puts it, it goes on under its id, one subject, though unmasked in between."""
        if persist < 0:
            raise ValueError(f"persist must be >= 0 seconds, got {persist}")
        if link is not None and link < 0:
            raise ValueError(f"link must be >= 0 seconds, got {link}")
        self.persist = persist
        self.link = max(persist, persist if link is None else link)
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._time: float | None = None

    def update(self, time: float, detections: list[Region], cut: bool = False, cut_at: float | None = None) -> Step:
        """Match ``detections`` found at ``time`` (seconds) to live tracks; ``cut``: a scene cut came
        since the previous detection frame (:mod:`~redaction.cuts`): the face at a track's place is
        somebody else's now, so every track ends there (masked as a lost one, never matched again)
        and each detection starts a track of its own. ``cut_at``: the time of the cut's first frame,
        when it is known: where a new track starts at an ended one's place (a logo, a face that
        stayed), the ended one is masked up to it, the new one from it on; every other ended track
        persists, and every other new one is back-filled, over the frames between: the cut's place
        is measured, and on which side an undetected face was is not."""
        if self._time is not None and time < self._time:
            raise ValueError(f"time went backwards: {time} after {self._time}")
        previous = self._time
        live = [t for t in self._tracks
                if time - t.seen <= self.link or previous is not None and t.seen >= previous or self._held(t)]
        if cut:
            for track in live:
                track.ended = True
        # a track persisting at the previous frame contributes its last box there
        before = {t.id: (t.box.copy(), t.score) for t in live
                  if not t.hidden and (previous is None or previous - t.seen <= self.persist or self._held(t))}
        # tracks found at the last detection frame take their detections first, confident ones
        # before doubtful ones (a flicker beside a face must not take the face's track); then the
        # lost tracks may link to what is left (a track lost for a while must not take a
        # detection, or break a nearest-neighbour tie, that the track beside it is following)
        active = [t for t in live if not t.ended and previous is not None and t.seen >= previous]
        lost = [t for t in live if not t.ended and not (previous is not None and t.seen >= previous)]
        matches: dict[int, _Track] = {}
        reached: set[int] = set()
        for tracks, confident in ((active, True), (active, False), (lost, None)):
            taken = {t.id for t in matches.values()}
            rest = [i for i, d in enumerate(detections)
                    if i not in matches and (confident is None or (d.score >= _CONFIDENT) == confident)]
            more, more_reached = self._match([t for t in tracks if t.id not in taken],
                                             [detections[i] for i in rest], time, lost=confident is None)
            matches.update({rest[i]: track for i, track in more.items()})
            reached |= {rest[i] for i in more_reached}
        spans: list[_Span] = []
        matched_tracks = set()
        # at a cut: the detections at an ended track's place
        kept_place = self._same_place([t for t in live if t.ended], detections) if cut_at is not None else set()
        for det_index, det in enumerate(detections):
            track = matches.get(det_index)
            box = np.array(det.box, dtype=np.float64)
            if track is None:
                track = _Track(self._next_id, det.cls, det.shape, box, det.score, time)
                self._next_id += 1
                self._tracks.append(track)
                prior = None
            else:
                prior = before.get(track.id)
                predicted = _predicted(track, time)
                if _part_of(box, det.score, track, predicted):
                    # a part of the object the track has (a face found only by its mouth and the
                    # microphone before it): the whole stays masked, at the place its motion puts it
                    box = _hull(predicted, box)
                    det = replace(det, score=track.score)
                if time > track.seen:
                    centre, side = box[:2] + box[2:] / 2, float(max(box[2:]))
                    if track.motion is None:
                        velocity = (centre - track.box[:2] - track.box[2:] / 2) / (time - track.seen)
                        track.motion = _Motion(centre, velocity, side, time - track.seen)
                    else:
                        track.motion.update(centre, side, time - track.seen)
                    track.velocity = track.motion.velocity
                track.box, track.score, track.seen, track.shape = box, det.score, time, det.shape
                track.hidden, track.misses = False, 0
            matched_tracks.add(track.id)
            spans.append(
                _Span(track.id, det.cls, det.shape, None if prior is None else prior[0], box,
                      0.0 if prior is None else prior[1], det.score, time, det_index in reached,
                      split=cut_at is not None and det_index in kept_place)
            )
        absorbed = self._absorbed([t for t in live if t.id not in matched_tracks], detections)
        for track in live:
            if track.id in matched_tracks:
                continue
            track.misses += 1
            if track.id in before:
                spans.append(_Span(track.id, track.cls, track.shape, track.box, None, track.score, 0.0, track.seen,
                                   absorbed=track.id in absorbed, split=cut_at is not None and track.id in absorbed,
                                   held=self._held(track)))
        for track in live:
            if track.id in absorbed:
                track.hidden = True
        self._tracks = [t for t in self._tracks
                        if t.id in matched_tracks or self._held(t)
                        or time - t.seen <= (self.persist if t.ended else self.link)]
        self._time = time
        return Step(time, previous, spans, self.persist, cut_at if cut else None)

    def tracks(self, current: bool = False) -> list[Region]:
        """Every live track at its last box, with its id; ``current``: only those found (or carried
        on) at the last detection frame, not those merely persisting after a miss."""
        return [Region(t.cls, *map(float, t.box), t.score, t.shape, t.id) for t in self._tracks
                if t.seen == self._time or not current and (self._time - t.seen <= self.persist or self._held(t))]

    def _held(self, track: _Track) -> bool:
        """Masked whatever ``persist`` says: missed too few times in a row to be let go (with
        ``persist`` 0, lost tracks are not masked at all). A track ended by a scene cut too: the cut
        says the face at its place is somebody else's, not that nobody is there; and after a gap in
        detection (a machine falling behind) a pan may read as a cut."""
        return self.persist > 0 and track.misses <= MISSES_MASKED

    @staticmethod
    def _same_place(tracks: list[_Track], detections: list[Region]) -> set[int]:
        """The indices of ``detections`` that are the same object as one of the ``tracks``' last boxes."""
        if not tracks or not detections:
            return set()
        a = np.array([t.box for t in tracks], dtype=np.float64)
        b = np.array([d.box for d in detections], dtype=np.float64)
        same = same_object(a, b) & np.array([[t.cls == d.cls for d in detections] for t in tracks])
        return set(np.flatnonzero(same.any(axis=0)).tolist())

    @staticmethod
    def _absorbed(lost: list[_Track], detections: list[Region]) -> set[int]:
        """The lost tracks whose last box is the same object as one of this frame's detections
        (:func:`~redaction.regions.merge_duplicates`' rule): another track found it there (a face
        passing in front, or a duplicate), so masking the lost one on there too would mask (and
        seal) those pixels twice. It stays masked on the frames before this one, then is hidden:
        not masked, but still looked for, so a face that was behind another one comes out under
        its own id."""
        if not lost or not detections:
            return set()
        a = np.array([t.box for t in lost], dtype=np.float64)
        b = np.array([d.box for d in detections], dtype=np.float64)
        same = same_object(a, b) & np.array([[t.cls == d.cls for d in detections] for t in lost])
        return {t.id for t, row in zip(lost, same) if row.any()}

    def _match(self, tracks: list[_Track], detections: list[Region], time: float,
               lost: bool = False) -> tuple[dict[int, _Track], set[int]]:
        """Detection index -> its track, and the detections linked only by reach (see the module
        docstring); ``lost``: the tracks were not found at the last detection frame, and are looked
        for at their last place too (the velocity of a face that stopped, or of a close-up head that
        swung, puts it off the frame half a second on)."""
        if not tracks or not detections:
            return {}, set()
        elapsed = np.array([time - t.seen for t in tracks])
        shift = np.array([t.velocity if t.velocity is not None else (0.0, 0.0) for t in tracks]) * elapsed[:, None]
        last_boxes = np.array([t.box for t in tracks], dtype=np.float64)
        track_boxes = last_boxes.copy()
        track_boxes[:, :2] += shift  # where each track should be now
        det_boxes = np.array([d.box for d in detections], dtype=np.float64)
        ious = iou_matrix(det_boxes, track_boxes)
        same_class = np.array([[d.cls == t.cls for t in tracks] for d in detections])
        centre_d = det_boxes[:, None, :2] + det_boxes[:, None, 2:] / 2
        centre_t = track_boxes[None, :, :2] + track_boxes[None, :, 2:] / 2
        distance = np.linalg.norm(centre_d - centre_t, axis=2)
        if lost:
            ious = np.maximum(ious, iou_matrix(det_boxes, last_boxes))
            distance = np.minimum(distance, np.linalg.norm(centre_d - (last_boxes[None, :, :2] + last_boxes[None, :, 2:] / 2), axis=2))
        side = np.maximum(det_boxes[:, None, 2:].max(axis=2), track_boxes[None, :, 2:].max(axis=2))
        near = distance / np.maximum(side, 1e-9)
        speed = np.array([_NEW_SPEED if t.velocity is None else _KNOWN_SPEED for t in tracks])
        # fractions of the larger side; a track lost for longer than it stays masked is looked for
        # no further than one masked that long (it is linked, not chased across the frame)
        reach = _CENTRE_MATCH + speed * np.minimum(elapsed, max(self.persist, 1e-9))
        # beyond the usual centre distance a link is made only between mutual nearest neighbours of
        # one class: in a crowd, a face missed on this frame must not hand its track to a neighbour
        apart = np.where(same_class, near, np.inf)
        mutual = (apart == apart.min(axis=1, keepdims=True)) & (apart == apart.min(axis=0, keepdims=True))
        # and only between boxes of about one size: a face does not grow or shrink by more than
        # :data:`_RESIZE` between two detection frames (a flicker beside a close-up face is not it)
        sides_d, sides_t = det_boxes[:, None, 2:].max(axis=2), track_boxes[None, :, 2:].max(axis=2)
        alike = np.maximum(sides_d, sides_t) <= _RESIZE * np.minimum(sides_d, sides_t) + _RESIZE_JITTER
        reachable = ((near <= _CENTRE_MATCH) | ((near <= reach[None, :]) & mutual)) & alike
        # score: IoU first; boxes that do not overlap enough may still match by centre distance
        score = np.where(ious >= _IOU_MATCH, 2.0 + ious, np.where(reachable, 1.0 - near / reach[None, :], 0.0))
        score[~same_class] = 0.0
        by_reach = (ious < _IOU_MATCH) & (near > _CENTRE_MATCH)
        matches: dict[int, _Track] = {}
        reached: set[int] = set()
        used: set[int] = set()
        for flat in np.argsort(-score, axis=None, kind="stable"):
            d, t = divmod(int(flat), len(tracks))
            if score[d, t] <= 0.0:
                break
            if d in matches or t in used:
                continue
            matches[d] = tracks[t]
            used.add(t)
            if by_reach[d, t]:
                reached.add(d)
        return matches, reached
