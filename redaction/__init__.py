"""Find, track and redact faces and licence plates.

Data flow: :class:`Analyzer` runs the policy's detectors (:mod:`.faces`, :mod:`.plates`) and
finishes their regions; :class:`StreamRedactor` adds tracking, hold-back, interpolation and
motion-gated detection (:mod:`.gating`, :mod:`.motion`) for video; :func:`redact_frame` applies the policy's methods with the Numba kernels in
:mod:`.kernels`.
"""

from .detector import Detector, default_threads
from .engine import (
    Analyzer,
    Decision,
    Frame,
    StreamRedactor,
    build_detectors,
    detector_settings,
)
from .kernels import warmup as warmup_kernels
from .policy import (
    ZONE_PREFIX,
    Policy,
    PolicyError,
    StrictModel,
    Zone,
    format_validation_error,
    load_document,
    load_policy,
    parse_policy,
)
from .redact import redact_frame
from .regions import Region, coverage_mask
from .tracker import Tracker
from .zones import zone_mask, zone_regions

__all__ = [
    "ZONE_PREFIX",
    "Analyzer",
    "Decision",
    "Detector",
    "Frame",
    "Policy",
    "PolicyError",
    "Region",
    "StreamRedactor",
    "StrictModel",
    "Tracker",
    "Zone",
    "build_detectors",
    "coverage_mask",
    "default_threads",
    "detector_settings",
    "format_validation_error",
    "load_document",
    "load_policy",
    "parse_policy",
    "redact_frame",
    "warmup_kernels",
    "zone_mask",
    "zone_regions",
]
