"""Live: each camera's frames decided, redacted, sealed and released in order (the middle stage).

:mod:`.pipeline` is the fail-closed core (hold-back, watchdog blanking, in-order release);
:mod:`.camera` wires one camera's source → pipeline → sinks; :mod:`.runtime` composes every
camera of a configuration and its watchdog, and adds, replaces and removes cameras while the
others run; :mod:`.camera_changes` keeps those changes for the next start; :mod:`.activation`
keeps which policy runs where; :mod:`.moved` holds (blanks) a camera whose view moved away from
the one its zones were drawn on (the measures: :mod:`.views`); :mod:`.keyring` opens (or
creates) the key directory the cameras seal with.

May import :mod:`gateway.frames`, :mod:`gateway.config`, :mod:`gateway.cluster`, :mod:`gateway.sealing`,
:mod:`gateway.ingest`, :mod:`gateway.egress`, :mod:`gateway.webrtc` and the public API of
``keys`` and ``redaction``; never ``api`` or ``cli``.
"""

from .activation import Activations
from .camera import LiveCamera
from .camera_changes import CameraChanges
from .keyring import prepare_keys
from .moved import Judge, ViewError, ViewWatch
from .pipeline import WATCHDOG_PERIOD, CameraPipeline, PipelineStats, watch
from .runtime import Runtime

__all__ = [
    "WATCHDOG_PERIOD",
    "Activations",
    "CameraChanges",
    "CameraPipeline",
    "Judge",
    "LiveCamera",
    "PipelineStats",
    "Runtime",
    "ViewError",
    "ViewWatch",
    "prepare_keys",
    "watch",
]
