"""The running cameras of one configuration: opened, wired, watched and stopped (composition only).

:class:`Runtime` opens the data directory (key directory, vault), builds one
:class:`~gateway.live.camera.LiveCamera` per configured camera under the policy in force (see
:mod:`.activation`), runs the watchdog thread that blanks frames past their hold-back and the
view thread that looks for moved cameras (:mod:`.moved`), and switches a camera's policy live. It knows nothing of HTTP or of who is asking: the network
entry points (WHEP, WHIP, RTSP, the API) are built over it by :mod:`gateway.api`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

from keys import GATEWAY_ACTOR, AuditError, CoSigner, Sealer, VaultStore, grants_of
from redaction import Policy, default_threads

from ..config import GatewayConfig
from ..webrtc import Codec
from .activation import Activations
from .camera import LiveCamera
from .cosigning import open_cosigner
from .keyring import prepare_keys
from .retention import Retention

log = logging.getLogger(__name__)

#: seconds between two deadline checks of the watchdog: the resolution of the hold-back, and far
#: below a frame's spacing (33 ms at 30 fps)
WATCHDOG_PERIOD = 0.005
#: seconds between two wake-ups of the view thread (each camera is looked at every view_check.period_s)
_VIEW_TICK = 0.1


class Runtime:
    """Every camera of a configuration, wired and (after :meth:`start`) running."""

    def __init__(self, config: GatewayConfig, policies: dict[str, Policy],
                 announce: Callable[[str], None] = print) -> None:
        self.config = config
        data = config.storage.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self.directory = prepare_keys(config, announce)
        cosigner, manages_access, self._openbao = open_cosigner(config, announce)
        try:
            self._open(config, policies, cosigner, manages_access, announce)
        except BaseException:
            self._stop_openbao()
            raise

    def _open(self, config: GatewayConfig, policies: dict[str, Policy], cosigner: CoSigner, manages_access: bool,
              announce: Callable[[str], None]) -> None:
        data, directory = config.storage.data_dir, self.directory
        self.recordings = data / "recordings"  # <camera>/<recording>.mp4, written by each camera's recorder
        self.store = store = VaultStore.for_sealing(data / "vault", directory, cosigner, manages_access=manages_access)
        self.signer = directory.signer
        self.activations = Activations(data / "active-policies.json", store)
        restored = self.activations.restore(config.cameras, announce)
        self.cameras: dict[str, LiveCamera] = {}
        # each camera's detection gets an equal share of the cores: two single-threaded sessions
        # working at once do 1.8x the inferences of one, two two-threaded sessions fighting over
        # two cores only 1.6x (perf/README.md, thread placement)
        cores = max(1, default_threads() // max(1, len(config.cameras)))
        for name, camera in config.cameras.items():
            policy = restored.get(name, policies[name])
            self.activations.started(name, policy)
            sealer = Sealer(store, directory.signer, name, policy.model_dump(mode="json"), grants_of(policy),
                            directory.identities, segment_seconds=None)
            self.cameras[name] = LiveCamera(name, camera, policy, sealer, recordings=data / "recordings",
                                            recording_seconds=config.storage.recording_seconds,
                                            recording_preset=config.storage.recording_preset,
                                            codecs=self.codecs(name), cores=cores, recorded=self._recorded,
                                            reopen=partial(self._reopen, name), views=data / "views",
                                            event=self._view_event)
            self.cameras[name].view.start(policy, self.activations.version(name))
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._tick, name="watchdog", daemon=True)
        self._views = threading.Thread(target=self._look, name="views", daemon=True)
        quota = config.storage.quota_gb
        self.retention = Retention(
            store, directory.signer, data, data / "recordings",
            lambda: {name: camera.policy for name, camera in self.cameras.items()},
            lambda: {c.recorder.current for c in self.cameras.values() if c.recorder and c.recorder.current},
            config.storage.retention_check_s, None if quota is None else int(quota * 1e9))

    def _reopen(self, camera: str, policy: Policy, identities: list, first_frame: int, first_pts_us: int) -> Sealer:
        """A camera's sealer opened anew after a failure, as a restart would (it recovers what the
        failed one left), its first recording starting at ``first_frame``."""
        return Sealer(self.store, self.signer, camera, policy.model_dump(mode="json"), grants_of(policy), identities,
                      segment_seconds=None, first_frame=first_frame, first_pts_us=first_pts_us)

    def _recorded(self, path, ref, frames: int) -> None:
        """Log a finished recording's frame count (on its camera's output thread): what
        ``vault verify --recordings`` and ``unmask`` compare the file with."""
        if ref is not None:
            self.store.audit.append(GATEWAY_ACTOR, self.signer, "recorded", {
                "camera": ref.camera, "recording": ref.recording, "file": path.name, "frames": frames})

    def _view_event(self, action: str, details: dict) -> None:
        """An audit entry of a camera's view watch (a reference taken, a camera held or released)."""
        try:
            self.store.audit.append(GATEWAY_ACTOR, self.signer, action, details)
        except AuditError:  # the hold is in force whatever the log says; the log's own faults are reported by it
            log.exception("camera %s: the audit entry %s could not be written", details.get("camera"), action)

    def codecs(self, camera: str) -> tuple[Codec, ...]:
        """The renditions viewers may pick: the camera's WHEP codecs, plus H.264 for RTSP egress."""
        wanted = [*self.config.cameras[camera].renditions, *(["h264"] if self.config.rtsp else [])]
        return tuple(dict.fromkeys(wanted))

    # --- policies ------------------------------------------------------------------------------

    def active_version(self, camera: str) -> str:
        return self.activations.version(camera)

    def activate(self, camera: str, policy: Policy, version: str) -> bool:
        """Switch a camera's policy live (blocking): see :meth:`CameraPipeline.activate`."""
        switched = self.cameras[camera].pipeline.activate(policy)  # raises with the old policy in force
        try:
            self.activations.activated(camera, version)
        except OSError:
            log.exception("camera %s: policy %s is in force but could not be recorded; the configured policy "
                          "returns at the next start", camera, version[:12])
        self.cameras[camera].view.rebase(policy, version)  # its zones were drawn on the view it has now
        return switched

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        for camera in self.cameras.values():
            camera.pipeline.start()
        self._watchdog.start()
        self._views.start()
        for camera in self.cameras.values():
            camera.source.start(camera.pipeline.offer)
        self.retention.start()

    def stop(self) -> None:
        """Stop every camera: sources first, then pipelines (undecided frames leave blanked, sealers
        close), then the watchdog, then the sinks (what they hold is written)."""
        self.retention.stop()
        for camera in self.cameras.values():
            try:
                camera.stop_input()
            except Exception:  # one camera's failure must not leave the others running
                log.exception("camera %s: stopping failed", camera.name)
        self._stop.set()
        if self._watchdog.is_alive():
            self._watchdog.join(5)
        if self._views.is_alive():
            self._views.join(5)
        for camera in self.cameras.values():
            camera.stop_output()
        self._stop_openbao()

    def _stop_openbao(self) -> None:
        if self._openbao is not None:
            self._openbao.stop()

    def _tick(self) -> None:
        logged = -60.0
        while not self._stop.is_set():
            now = time.monotonic()
            for camera in self.cameras.values():
                try:
                    camera.pipeline.tick(now)
                except Exception:  # the watchdog must outlive any one camera's fault
                    if now - logged >= 10.0:
                        logged = now
                        log.exception("camera %s: the watchdog failed", camera.name)
            self._stop.wait(WATCHDOG_PERIOD)

    def _look(self) -> None:
        """The view thread: each watched camera's newest released frame against its reference."""
        logged = -60.0
        while not self._stop.is_set():
            now = time.monotonic()
            for camera in self.cameras.values():
                if not camera.view.due(now):
                    continue
                try:
                    camera.view.check(now)
                except Exception:  # one camera's fault must not stop the others' watch
                    if now - logged >= 10.0:
                        logged = now
                        log.exception("camera %s: looking at the view failed", camera.name)
            self._stop.wait(_VIEW_TICK)

    def health(self) -> dict:
        """``ok`` when every camera is (see :meth:`LiveCamera.health`), else ``degraded``; per camera
        its state, why, and its counters."""
        cameras = {name: camera.health() for name, camera in self.cameras.items()}
        ok = all(c["status"] == "ok" for c in cameras.values())
        return {"status": "ok" if ok else "degraded", "cameras": cameras}
