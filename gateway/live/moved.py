"""A moved camera: blanked, fail-closed, while its privacy zones may miss what they were drawn on.

Zones are fixed polygons of the picture. When a camera's view changes for good (re-aimed,
covered, out of focus), compared with the view its zones were drawn on, the camera is *held*:
every frame leaves blanked (still redacted and sealed, so recordings stay aligned with their
records) and an alert is raised (``/health`` degraded with the reason, a metric, an audit entry,
the console's banner) until an officer confirms the zones still fit, which takes the current
view as the new reference. Only cameras whose policy in force has zones are watched.

    release path ──observe(redacted image)──▶ latest frame (a reference, O(1))
    view thread, every period_s ──check()──▶ sample (64 x 36 thumbnail, sharpness) ──▶ Judge
    Judge: the median of the last WINDOW samples against the reference ──▶ different for after_s? hold

The reference is the median of WINDOW samples taken after a policy with zones is activated (or
at the first start with zones, or when the zones changed while the gateway was stopped), or the
current view when an officer confirms. It is kept, with the hold if any, in
``<data>/views/<camera>.json`` (a 64 x 36 grey thumbnail of released frames, zones masked as
released), so a camera held stays held across a restart, and a camera moved while the gateway
was stopped is found moved at the next start. The measures: :mod:`.views`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from keys import write_durably
from redaction import Policy

from ..config import ViewCheck
from .views import (
    THUMB,
    Comparison,
    Sample,
    ViewPrint,
    compare,
    difference,
    sample,
    valid_mask,
    view_print,
)

log = logging.getLogger(__name__)

#: samples whose median is a view: a passer-by in one of three is left out
WINDOW = 3
#: the file format of a kept reference
_FORMAT = 1


class ViewError(Exception):
    """A view cannot be confirmed (the camera delivers no released frames to take as reference)."""


@dataclass(frozen=True)
class Hold:
    """Why a camera is blanked for a moved view, and since when (UTC, ISO 8601)."""

    kind: str  # covered, defocused, changed, shifted
    reason: str
    since: str
    measures: dict


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def zones_digest(policy: Policy) -> str:
    """What a reference was taken for: the zones' polygons (a reference outlives other policy changes)."""
    zones = {name: [list(p) for p in zone.polygon] for name, zone in sorted(policy.zones.items())}
    return hashlib.sha256(json.dumps(zones, sort_keys=True).encode()).hexdigest()


class Judge:
    """The decision alone (no threads, files or clocks of its own): samples in, a difference out
    once it has lasted ``after_s``. ``perf/eval_moved.py`` and the tests run it on real clips."""

    def __init__(self, settings: ViewCheck, policy: Policy) -> None:
        self.settings = settings
        self.valid = valid_mask(policy)
        self.reference: ViewPrint | None = None
        self.recent: deque[tuple[Sample, float]] = deque(maxlen=WINDOW)
        self.different_since: float | None = None
        self.last: Comparison | None = None
        self._pending: list[Sample] = []
        self._not_before = 0.0

    def rebase(self, not_before: float) -> None:
        """Take a new reference from the next WINDOW samples taken at ``not_before`` or later."""
        self.reference, self._pending, self._not_before = None, [], not_before
        self.different_since, self.last = None, None

    def adopt(self, reference: ViewPrint) -> None:
        self.reference, self._pending, self.different_since = reference, [], None

    def current(self) -> ViewPrint | None:
        return view_print([s for s, _ in self.recent]) if self.recent else None

    def add(self, item: Sample, at: float) -> tuple[str, str] | None:
        """Take a sample (seen at ``at``); returns ``(kind, words)`` when the view has been different
        for ``after_s`` (again at every later sample while it stays different)."""
        self.recent.append((item, at))
        if self.reference is None:
            if at >= self._not_before:
                self._pending.append(item)
                if len(self._pending) >= WINDOW:
                    self.adopt(view_print(self._pending))
            return None
        self.last = compare(self.reference, self.current(), self.valid)  # type: ignore[arg-type]
        found = difference(self.last, self.settings)
        if found is None:
            self.different_since = None
            return None
        if self.different_since is None:
            self.different_since = at
        return found if at - self.different_since >= self.settings.after_s else None


class ViewWatch:
    """One camera's watch: fed released frames, checked every ``period_s``, holding the camera
    (``hold(reason)``; ``hold(None)`` releases it) while its view differs from the reference."""

    def __init__(self, camera: str, settings: ViewCheck, path: Path, hold: Callable[[str | None], None],
                 event: Callable[[str, dict], None], holdback: float, clock: Callable[[], float] = time.monotonic) -> None:
        """``path``: where the reference is kept; ``event(action, details)``: an audit entry (the
        gateway's); ``holdback``: how long frames decided under an older policy may still leave."""
        self.camera, self.settings, self.path = camera, settings, Path(path)
        self._hold, self._event, self._holdback, self._clock = hold, event, holdback, clock
        self._lock = threading.Lock()
        self._latest: tuple[np.ndarray, float] | None = None  # the newest redacted frame released (or withheld)
        self._taken: tuple[np.ndarray, float] | None = None
        self._next_check = 0.0
        self.held: Hold | None = None
        self.changes: dict[str, int] = {}  # kind -> times the camera was held for it
        self.policy_version: str | None = None
        self.judge: Judge | None = None  # None: not watched (no zones, or view_check off)
        self._digest: str | None = None
        self._taken_at: str | None = None  # when the reference in force was taken

    # --- the release path (O(1)) ------------------------------------------------------------------

    def observe(self, image: np.ndarray) -> None:
        """A redacted frame is being released (or withheld while held): keep a reference to it."""
        self._latest = (image, self._clock())

    # --- policies ---------------------------------------------------------------------------------

    def start(self, policy: Policy, version: str) -> None:
        """The policy the camera starts with; a kept reference (and hold) is taken up if it was made
        for the same zones, a kept hold in any case (fail closed across restarts)."""
        kept = self._load()
        with self._lock:
            self._set_policy(policy, version)
            if kept is not None and kept.get("held") and self.judge is not None:
                h = kept["held"]
                self.held = Hold(h["kind"], h["reason"], h["since"], h.get("measures", {}))
            reference = _reference(kept) if kept is not None and kept.get("zones") == self._digest else None
            if self.judge is not None and reference is not None:
                self.judge.adopt(reference)
                self._taken_at = kept.get("taken")
            elif self.judge is not None:
                self.judge.rebase(self._clock())
            held = self.held
        if held is not None:
            self._hold(held.reason)
            log.warning("camera %s: still blanked for a moved view (%s, since %s) until an officer confirms "
                        "the zones still fit", self.camera, held.reason, held.since)

    def rebase(self, policy: Policy, version: str) -> None:
        """A policy was activated: a new reference is taken from the frames it redacts (not while
        held: then only an officer's confirmation ends the hold, unless the policy has no zones)."""
        released = None
        with self._lock:
            self._set_policy(policy, version)
            if self.judge is None and self.held is not None:
                released, self.held = self.held, None
            elif self.judge is not None and self.held is None:
                self.judge.rebase(self._clock() + self._holdback)
        if released is not None:
            self._hold(None)
            self._save()
            self._event("view-unheld", {"camera": self.camera, "policy": version,
                                        "why": "the policy in force has no zones (or view_check is off)",
                                        "held": released.reason})

    def _set_policy(self, policy: Policy, version: str) -> None:
        watched = self.settings.enabled and bool(policy.zones)
        old = self.judge
        self.policy_version, self._digest = version, zones_digest(policy)
        self.judge = Judge(self.settings, policy) if watched else None
        if self.judge is not None and old is not None:
            self.judge.reference, self.judge.recent = old.reference, old.recent

    # --- the view thread --------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        return now >= self._next_check

    def check(self, now: float | None = None) -> None:
        """Look at the newest released frame, if there is a new one (the view thread, every period)."""
        now = self._clock() if now is None else now
        self._next_check = now + self.settings.period_s
        latest = self._latest
        if latest is None or latest is self._taken or self.judge is None:
            return
        self._taken = latest
        item = sample(latest[0])  # the cv2 work, outside the lock
        adopted = found = None
        with self._lock:
            judge = self.judge
            if judge is None:
                return
            had = judge.reference
            found = judge.add(item, latest[1])
            if had is None and judge.reference is not None:
                adopted, self._taken_at = judge.reference, _now_iso()
            if found is not None and self.held is None:
                self.held = Hold(found[0], found[1], _now_iso(), judge.last.as_dict() if judge.last else {})
                self.changes[found[0]] = self.changes.get(found[0], 0) + 1
            else:
                found = None
            held = self.held
        if adopted is not None:
            self._save()
            self._event("view-reference", {"camera": self.camera, "policy": self.policy_version,
                                           "trigger": "activation or start"})
        if found is not None and held is not None:
            self._hold(held.reason)
            log.warning("camera %s: the view changed (%s); its frames are blanked until an officer confirms "
                        "the zones still fit", self.camera, held.reason)
            self._save()
            self._event("view-moved", {"camera": self.camera, "policy": self.policy_version, "kind": held.kind,
                                       "reason": held.reason, "measures": held.measures})

    # --- the officer --------------------------------------------------------------------------------

    def confirm(self) -> dict:
        """The zones still fit the current view: it becomes the reference and the hold (if any) ends.
        Raises :class:`ViewError` if no released frame was seen lately to take as the reference."""
        now = self._clock()
        fresh = now - (WINDOW + 2) * self.settings.period_s
        latest = self._latest
        with self._lock:
            judge = self.judge
            if judge is None:
                raise ViewError(f"camera {self.camera} is not watched for a moved view (its policy has no zones)")
            recent = [s for s, at in judge.recent if at >= fresh]
            if not recent and latest is not None and latest[1] >= fresh:
                recent = [sample(latest[0])]
            if not recent:
                raise ViewError(f"camera {self.camera} has released no frame lately: there is no current view "
                                "to confirm (is the camera delivering?)")
            judge.adopt(view_print(recent[-WINDOW:]))
            judge.recent.clear()
            released, self.held, self._taken_at = self.held, None, _now_iso()
        self._save()
        if released is not None:
            self._hold(None)
            log.warning("camera %s: an officer confirmed the zones still fit; frames are released again", self.camera)
        return {"camera": self.camera, "was_held": released is not None,
                "held_reason": released.reason if released is not None else None}

    def held_image(self) -> np.ndarray | None:
        """While held: the newest redacted frame withheld (for the officer judging the zones), else None."""
        latest = self._latest
        return latest[0] if self.held is not None and latest is not None else None

    def state(self) -> dict:
        with self._lock:
            judge, held = self.judge, self.held
            return {
                "watched": judge is not None,
                "reference": None if judge is None else
                ("pending" if judge.reference is None else {"taken": self._taken_at, "policy": self.policy_version}),
                "held": None if held is None else {"kind": held.kind, "reason": held.reason, "since": held.since,
                                                   "measures": held.measures},
                "last": judge.last.as_dict() if judge is not None and judge.last is not None else None,
            }

    # --- the kept reference -----------------------------------------------------------------------

    def _load(self) -> dict | None:
        try:
            kept = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("camera %s: the kept view %s is unreadable (%s): a new reference is taken", self.camera,
                      self.path, exc)
            return None
        if not isinstance(kept, dict) or kept.get("format") != _FORMAT:
            log.error("camera %s: the kept view %s is not one this version reads: a new reference is taken",
                      self.camera, self.path)
            return None
        return kept

    def _save(self) -> None:
        with self._lock:
            judge, held = self.judge, self.held
            reference = judge.reference if judge is not None else None
            data = {"format": _FORMAT, "camera": self.camera, "policy": self.policy_version, "zones": self._digest,
                    "taken": self._taken_at, "size": list(THUMB),
                    "grey": _encode(reference.grey) if reference is not None else None,
                    "sharpness": reference.sharpness if reference is not None else None,
                    "held": None if held is None else {"kind": held.kind, "reason": held.reason, "since": held.since,
                                                       "measures": held.measures}}
        if data["grey"] is None and data["held"] is None:
            return  # nothing worth keeping yet
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_durably(self.path, json.dumps(data, indent=1).encode(), mode=0o600)
        except OSError:
            log.exception("camera %s: the view reference could not be kept in %s (it holds until the next start)",
                          self.camera, self.path)


def _reference(kept: dict) -> ViewPrint | None:
    """The reference a kept file holds, or None if it holds none (or a damaged one)."""
    try:
        return ViewPrint(_decode(kept["grey"]), float(kept["sharpness"])) if kept.get("grey") else None
    except (KeyError, TypeError, ValueError) as exc:
        log.error("camera %s: the kept view reference is damaged (%s): a new one is taken", kept.get("camera"), exc)
        return None


def _encode(grey: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(grey, np.uint8).tobytes()).decode()


def _decode(text: str) -> np.ndarray:
    data = np.frombuffer(base64.b64decode(text), np.uint8)
    if data.size != THUMB[0] * THUMB[1]:
        raise ValueError(f"a kept view has {data.size} pixels, not {THUMB[0] * THUMB[1]}")
    return data.reshape(THUMB[1], THUMB[0]).copy()
