"""The running cameras of one configuration: opened, wired, watched and stopped (composition only).

:class:`Runtime` opens the data directory (key directory, vault; in a cluster this node's own
signing key, certified in the shared roster before anything is signed: keys/nodes.py), builds one
:class:`~gateway.live.camera.LiveCamera` per configured camera under the policy in force (see
:mod:`.activation`), runs the watchdog thread that blanks frames past their hold-back and the
view thread that looks for moved cameras (:mod:`.moved`), and switches a camera's policy live. Cameras are added, replaced (an edit) and removed while the
others run; those changes are kept for the next start by :mod:`.camera_changes`. With a ``cluster``
section the configured cameras are shared with other nodes (:mod:`gateway.cluster`): this runtime
starts a camera when its node takes the camera's lease and stops it when the lease goes, and its
frames leave blanked whenever the lease is in doubt; the cameras changed at run time and the policy
activations are those of the shared state (:mod:`gateway.state`), which every node takes in within a
second (:meth:`Runtime.follow_camera`, :meth:`Runtime.follow_shared`): the node running an edited
camera stops it and starts it again as edited, a removed camera stops wherever it runs. It knows
nothing of HTTP or of who is asking: the network entry points (WHEP, WHIP, RTSP, the API) are
built over it by :mod:`gateway.api`.

:attr:`Runtime.cameras` is copy-on-write: a change builds a new dict and swaps it in, so the
watchdog, retention, metrics and the WHEP/RTSP lookups, which read it from other threads without
a lock, iterate a dict that never changes under them. Changes (and policy activations) are
serialised by one lock. A camera leaves the dict before it is stopped: new viewers find it gone
(or, during an edit, "not ready yet": :meth:`Runtime.known`), and stopping it releases what it
held in order: its source, then its pipeline (undecided frames leave blanked, never raw; its
sealer closes its segment and logs the recording), then its output (the encoders flush, the
recording file is finished, every viewer track ends).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

import cv2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys import (
    AuditError,
    CoSigner,
    DirectoryError,
    KeyDirectory,
    NodeSigner,
    Sealer,
    actor_of,
    check_grants,
    grants_of,
    handover_link,
    node_key_path,
)
from redaction import Policy, default_threads

from ..cluster import ClusterNode, TakeOver
from ..config import Camera, ConfigError, GatewayConfig
from ..state import (
    AuditCopy,
    AuditTable,
    CameraTable,
    PolicyTable,
    RosterTable,
    SchemaError,
    SharedRoster,
    StateDatabase,
    StateUnavailable,
)
from ..storage import Recordings, open_vault
from ..webrtc import Codec
from .activation import Activations
from .camera import LiveCamera
from .camera_changes import CameraChanges, Change
from .cosigning import open_cosigner
from .keyring import prepare_keys
from .pipeline import CameraPipeline, watch
from .retention import Retention

log = logging.getLogger(__name__)

#: seconds between two wake-ups of the view thread (each camera is looked at every view_check.period_s)
_VIEW_TICK = 0.1
#: why /health finds a configured camera that is not running
_NOT_RUNNING = "not running: an edit could start neither it nor the camera as it was; edit it again, or restart"


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
        data = config.storage.data_dir
        #: the cluster's shared state (None: this node's files)
        self.state = None if config.cluster is None else StateDatabase(config.cluster)
        #: the key directory's roster kept in step with the cluster's (None: single node)
        self.shared_roster: SharedRoster | None = None
        #: what this node signs its audit entries, segments and key files with: the gateway key on a
        #: single gateway ("gateway"), its own certified key in a cluster ("node:<name>", keys/nodes.py)
        self.signer: Ed25519PrivateKey | NodeSigner = self.directory.signer
        if self.state is not None:
            node = config.cluster.node
            try:
                signer = NodeSigner.load_or_create(node_key_path(data, node), node)
            except DirectoryError as exc:
                raise ConfigError(f"cluster.node: {exc}") from None
            try:
                self.state.set_up()
                self.shared_roster = SharedRoster(RosterTable(self.state), config.keys_dir, config.cluster)
                self.shared_roster.sync()  # before anything reads the people or signs
            except (StateUnavailable, SchemaError, DirectoryError) as exc:
                raise ConfigError(f"cluster.database: {exc}") from None
            try:  # this node's key in the cluster's roster (a revoked one: it does not start)
                self.directory = self.shared_roster.certify(signer)
            except StateUnavailable as exc:
                raise ConfigError(f"cluster.database: {exc}") from None
            except DirectoryError as exc:
                raise ConfigError(f"cluster.node: {exc}") from None
            self.signer = signer
        directory = self.directory
        self.recordings = data / "recordings"  # <camera>/<recording>.mp4, written by each camera's recorder
        self.store = store = open_vault(config, directory, cosigner=cosigner, manages_access=manages_access)
        #: the finished recordings: moved to the bucket once logged, with storage.objects.s3
        self.archive = Recordings.of(config)
        self._began = time.time()
        self.activations = Activations(data / "active-policies.json", store,
                                       None if self.state is None else PolicyTable(self.state))
        self.changes = CameraChanges(data / "cameras.json", store, self.activations.fetch,
                                     None if self.state is None else CameraTable(self.state, config.cluster.node))
        if self.state is not None and self.changes.path.exists():
            announce(f"{self.changes.path} is not read in a cluster: the cameras changed at run time are those "
                     f"of {self.changes.where}")
        cameras, policies, self._retired = self.changes.apply(config.cameras, policies, announce)
        self.config = config = config.model_copy(update={"cameras": cameras})
        #: this node's audit log copied to the shared state, where every node reads every node's (its own
        #: connection: a copy never waits behind the state's other users, nor they behind it)
        self.audit_copy = None if self.state is None else AuditCopy(
            AuditTable(StateDatabase(config.cluster)), config.cluster.node, store.audit)
        self._following = threading.Lock()  # reading the shared activation and applying it are one step
        restored = self.activations.restore(config.cameras, announce)
        self.cameras: dict[str, LiveCamera] = {}
        self._changing = threading.Lock()  # one change of the cameras (or of a camera's policy) at a time
        self._starting: frozenset[str] = frozenset()  # cameras being added or edited: known, not running yet
        self._closed = False
        self._policies = {name: restored.get(name, policies[name]) for name in config.cameras}
        for name, camera in config.cameras.items():
            self.activations.started(name, self._policies[name])
            if config.cluster is None:
                self.cameras[name] = self._build(name, camera, self._policies[name], directory.identities)
        #: the cluster node whose leases say which cameras run here (None: every camera runs here)
        self.cluster = None if config.cluster is None else ClusterNode(
            config.cluster, lambda: list(self.config.cameras), self.run_camera, self.park_camera,
            config.rtsp_address)
        if self.cluster is not None:
            self.cluster.on_takeover = self._took_over
            if self.audit_copy is not None:
                self.cluster.before_release = self.audit_copy.flush
        #: told (on the cluster's thread) of a camera stopped because its lease went: (name, the camera)
        self.on_parked: Callable[[str, LiveCamera], None] | None = None
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._tick, name="watchdog", daemon=True)
        self._views = threading.Thread(target=self._look, name="views", daemon=True)
        quota = config.storage.quota_gb
        self.retention = Retention(
            store, self.signer, data, data / "recordings",
            lambda: {**self._retired, **{name: camera.policy for name, camera in self.cameras.items()}},
            lambda: {c.recorder.current for c in self.cameras.values() if c.recorder and c.recorder.current},
            config.storage.retention_check_s, None if quota is None else int(quota * 1e9),
            sealing=lambda: set(self.cameras), archive=self.archive)

    def _build(self, name: str, camera: Camera, policy: Policy, identities: list) -> LiveCamera:
        """``name`` wired (its sealer open, nothing started) under ``policy``, sealing to ``identities``."""
        data = self.config.storage.data_dir
        sealer = Sealer(self.store, self.signer, name, policy.model_dump(mode="json"), grants_of(policy), identities,
                        segment_seconds=None)
        try:
            live = LiveCamera(name, camera, policy, sealer, recordings=data / "recordings",
                              recording_seconds=self.config.storage.recording_seconds,
                              recording_preset=self.config.storage.recording_preset,
                              codecs=self.codecs(name, camera), cores=self._cores(), recorded=self._recorded,
                              reopen=partial(self._reopen, name), views=data / "views", event=self._view_event)
        except BaseException:
            sealer.close(complete=False)
            raise
        # its zones were drawn on the view it has: the watch compares with the one kept for this version
        live.view.start(policy, self.store.store_policy(policy.model_dump(mode="json")))
        return live

    def _cores(self) -> int:
        """A camera's share of the cores for detection: equal shares of the cameras configured now
        (two single-threaded sessions working at once do 1.8x the inferences of one, two
        two-threaded sessions fighting over two cores only 1.6x), split among its models, which then
        run side by side (:func:`redaction.engine.detection_threads`). Cameras running already keep
        the share they started with."""
        cameras = len(self.config.cameras)
        if self.config.cluster is not None:
            cameras = min(cameras, self.config.cluster.capacity)
        return max(1, default_threads() // max(1, cameras))

    def _reopen(self, camera: str, policy: Policy, identities: list, first_frame: int, first_pts_us: int) -> Sealer:
        """A camera's sealer opened anew after a failure, as a restart would (it recovers what the
        failed one left), its first recording starting at ``first_frame``."""
        return Sealer(self.store, self.signer, camera, policy.model_dump(mode="json"), grants_of(policy), identities,
                      segment_seconds=None, first_frame=first_frame, first_pts_us=first_pts_us)

    def _recorded(self, path, ref, frames: int) -> None:
        """Move a finished recording to the bucket (with one), then log its frame count (on its
        camera's output thread): what ``vault verify --recordings`` and ``unmask`` compare the file
        with. In that order: a node killed in between leaves a file that no entry names (unmask
        still restores it), never an entry whose file is on a disk nobody else can read."""
        try:
            self.archive.archive(path)
        except OSError as exc:  # it stays on this disk, where it is served from; the next start moves it
            log.error("camera %s: recording %s stays on this node for now: %s", path.parent.name, path.name, exc)
        if ref is not None:
            self.store.audit.append(actor_of(self.signer), self.signer, "recorded", {
                "camera": ref.camera, "recording": ref.recording, "file": path.name, "frames": frames})

    def _took_over(self, event: TakeOver) -> None:
        """Log a camera taken over from a node that stopped renewing its lease: the gap in its footage
        (``vault verify`` reports it as a gap, not as damage), signed by this node, and the hand-over: the
        previous owner's last seal of the camera in the cluster's copy of its log (keys/handover.py)."""
        handover = None
        try:
            found = AuditTable(self.state).last_seal(event.previous, event.camera) if self.state else None
            handover = None if found is None else handover_link(*found)
        except (StateUnavailable, ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("cluster: camera %s taken over from %s without a hand-over link (its log's copy cannot be "
                        "read: %s)", event.camera, event.previous, exc)
        self.store.audit.append(actor_of(self.signer), self.signer, "take-over",
                                {**event.details(), "handover": handover})

    def codecs(self, camera: str, config: Camera | None = None) -> tuple[Codec, ...]:
        """The renditions viewers may pick: the camera's WHEP codecs, plus H.264 for RTSP egress."""
        config = config or self.config.cameras[camera]
        wanted = [*config.renditions, *(["h264"] if self.config.rtsp else [])]
        return tuple(dict.fromkeys(wanted))

    # --- policies ------------------------------------------------------------------------------

    def active_version(self, camera: str) -> str:
        return self.activations.version(camera)

    def activate(self, camera: str, policy: Policy, version: str) -> bool:
        """Switch a camera's policy live (blocking): see :meth:`CameraPipeline.activate`; raises
        :class:`KeyError` if the camera is not running (removed, or being edited, meanwhile)."""
        with self._changing:
            return self._activate(camera, policy, version, shared=False)

    def _activate(self, camera: str, policy: Policy, version: str, shared: bool) -> bool:
        """(Under the change lock) ``shared``: the shared state says so already: nothing to record."""
        switched = self.cameras[camera].pipeline.activate(policy)  # raises with the old policy in force
        self._policies[camera] = policy  # what it runs if it starts again here (cluster)
        if shared:
            self.activations.followed(camera, version)
        else:
            try:
                self.activations.activated(camera, version)
            except OSError:
                log.exception("camera %s: policy %s is in force but could not be recorded; the configured policy "
                              "returns at the next start", camera, version[:12])
        self.cameras[camera].view.rebase(policy, version)  # its zones were drawn on the view it has now
        return switched

    def follow_shared(self, camera: str) -> bool:
        """Cluster: make ``camera`` follow the policy version activated on it in the shared state
        (blocking): switched live between two frames if it runs here (the single node's path), else
        remembered for when it starts here. Reading and applying are one step, so whoever reads
        last applies what was committed last. Returns whether a running camera switched; raises
        :class:`OSError` (the shared state unreachable), what :meth:`activate` raises (the previous
        policy stays), :class:`keys.EscrowError` or :class:`redaction.PolicyError` (a bad document)."""
        if not self.activations.rows.shared or camera not in self.config.cameras:
            return False
        with self._following:
            version = self.activations.rows.activation(camera)
            if version is None or version == self.activations.versions().get(camera):
                return False
            policy = self.activations.fetch(version)
            self._roster(policy)  # its grants can be met here, or it stays out
            with self._changing:
                if camera in self.cameras:
                    switched = self._activate(camera, policy, version, shared=True)
                    log.info("camera %s: policy %s activated through the shared state", camera, version[:12])
                    return switched
                self._policies[camera] = policy
                self.activations.followed(camera, version)
                return False

    def roster(self, policy: Policy) -> list:
        """The key directory's identities now, checked against ``policy``'s unmask grants; raises
        :class:`keys.EscrowError` if they cannot be met (blocking)."""
        return self._roster(policy)

    # --- cameras at run time -----------------------------------------------------------------

    def known(self, camera: str) -> bool:
        """Whether ``camera`` runs, or is being edited and will run again in a moment (viewers retry)."""
        return camera in self.cameras or camera in self._starting

    def expected(self, camera: str) -> bool:
        """:meth:`known`, or in a cluster a configured camera: it runs on another node, or will run on
        one once its lease moves or its node has started it (viewers are told to retry, not 404)."""
        return self.known(camera) or (self.cluster is not None and camera in self.config.cameras)

    def add_camera(self, name: str, camera: Camera, policy: Policy) -> LiveCamera | None:
        """Start a new camera ``name`` (blocking): kept in ``cameras.json`` first, then opened and
        started. Raises :class:`ValueError` if the name is taken, and whatever opening it raised
        (:class:`keys.EscrowError`: its grants cannot be met, the vault or co-signer refused;
        :class:`OSError`) with nothing changed. Re-adding a removed camera's name continues its
        vault chain; its recordings are kept beside the earlier ones. In a cluster it is kept in the
        shared state and runs on the node that claims its lease (:meth:`_share`; returns None)."""
        with self._changing:
            self._open_for_changes()
            if name in self.config.cameras:
                raise ValueError("the id is taken")
            identities = self._roster(policy)
            if self.cluster is not None:
                return self._share(name, camera, policy)
            before, version = self.changes.entries(), self.store.store_policy(policy.model_dump(mode="json"))
            self.changes.kept(name, camera, version)
            self._starting |= {name}
            try:
                self._configure(name, camera)
                live = self._build(name, camera, policy, identities)
                live.start()
            except BaseException:
                self._configure(name, None)
                self._undo(before)
                raise
            else:
                self._install(name, live, version)
            finally:
                self._starting -= {name}
            self._retired = {k: v for k, v in self._retired.items() if k != name}
            log.info("camera %s: added (%s)", name, camera.kind)
            return live

    def replace_camera(self, name: str, camera: Camera, policy: Policy) -> tuple[LiveCamera | None, LiveCamera | None]:
        """Edit camera ``name`` (blocking): the running one is stopped whole (its source, then its
        pipeline: undecided frames blanked, its sealer closed; then its output: the recording
        finished, viewers' tracks ended), then ``camera`` is started under ``policy``, continuing
        the vault chain of that name. What can be checked beforehand is (the policy's grants, the
        co-signer): on such a failure nothing changes. If the new camera cannot start after all,
        the old one is started again and the error raised. Returns (old, new); old is None if the
        camera was not running (an earlier edit failed). In a cluster the edit is kept in the shared
        state and the node that runs the camera restarts it (:meth:`_share`; returns (None, None))."""
        with self._changing:
            self._open_for_changes()
            if name not in self.config.cameras:
                raise KeyError(name)
            identities = self._roster(policy)
            self.store.cosigner.check()  # the new sealer needs it: rather fail before the old one stops
            if self.cluster is not None:
                return None, self._share(name, camera, policy)
            previous, old = self.config.cameras[name], self.cameras.get(name)
            before, version = self.changes.entries(), self.store.store_policy(policy.model_dump(mode="json"))
            self.changes.kept(name, camera, version)
            self._starting |= {name}
            try:
                self.cameras = {k: v for k, v in self.cameras.items() if k != name}
                if old is not None:
                    self._stop_camera(old)
                self._configure(name, camera)
                try:
                    live = self._build(name, camera, policy, identities)
                    live.start()
                except BaseException:
                    log.exception("camera %s: the edited camera cannot start; starting it as it was", name)
                    self._configure(name, previous)
                    self._undo(before)
                    if old is not None:
                        self._restart(name, previous, old.policy, identities)
                    raise
                self._install(name, live, version)
            finally:
                self._starting -= {name}
            log.info("camera %s: edited (%s)", name, camera.kind)
            return old, live

    def _restart(self, name: str, camera: Camera, policy: Policy, identities: list) -> None:
        """Start ``name`` again as it was, after an edit failed; if that fails too it stays out
        (``/health`` says so) until an edit or the next start."""
        try:
            live = self._build(name, camera, policy, identities)
            live.start()
        except Exception:
            log.exception("camera %s: cannot be started again as it was; it is not running", name)
            return
        self._running(name, live)

    def _install(self, name: str, live: LiveCamera, version: str) -> None:
        """``live`` (running) is camera ``name`` from now on, under policy ``version``; cannot fail."""
        try:
            self.activations.running(name, version)
        except OSError:
            log.exception("camera %s: an earlier activation over HTTP could not be forgotten; it is in force "
                          "again after the next start", name)
            self.activations.running(name, version)  # the file is as it was: nothing left to write
        self._running(name, live)

    def remove_camera(self, name: str) -> LiveCamera | None:
        """Stop camera ``name`` for good (blocking): kept as removed in ``cameras.json`` first (with
        its last policy, which retention keeps applying to its recordings), then stopped as an edit
        stops it. Its sealed data and recordings stay. Raises :class:`KeyError` if there is none. In a
        cluster it is kept as removed in the shared state, and stops wherever it runs (:meth:`_share`)."""
        with self._changing:
            self._open_for_changes()
            if name not in self.config.cameras:
                raise KeyError(name)
            if self.cluster is not None:
                return self._share(name, None, None)
            live = self.cameras.get(name)
            policy = live.policy if live is not None else None
            version = self.activations.versions().get(name)
            self.changes.removed(name, version)
            self.cameras = {k: v for k, v in self.cameras.items() if k != name}
            self._configure(name, None)
            if policy is not None:
                self._retired = {**self._retired, name: policy}
            self.activations.removed(name)
            if live is not None:
                self._stop_camera(live)
            log.info("camera %s: removed", name)
            return live

    def _open_for_changes(self) -> None:
        if self._closed:
            raise RuntimeError("the gateway is stopping")

    # --- cameras changed at run time in a cluster ------------------------------------------------

    def _share(self, name: str, camera: Camera | None, policy: Policy | None) -> None:
        """Cluster (under the change lock): ``name`` added or edited as ``camera`` under ``policy``, or
        removed (None), kept in the shared state first, then taken in here as every node takes it
        in. Raises :class:`~gateway.state.CameraConflict` (another node changed it first) or
        :class:`~gateway.state.StateUnavailable` with nothing changed anywhere."""
        if camera is None:
            policy, version = self._policies.get(name), self.activations.versions().get(name)
            self.changes.removed(name, version)
        else:
            version = self.store.store_policy(policy.model_dump(mode="json"))
            self.changes.kept(name, camera, version)
        self._take_in(Change(name, camera, policy, version))

    def follow_camera(self, name: str) -> None:
        """Cluster: take in camera ``name`` as the shared state holds it now, if it changed since
        (added, edited or removed on any node; blocking). Reading and applying are one step under
        the change lock, so whoever reads last applies what was committed last. An entry that
        cannot run here (its source file missing on this node, say) takes the camera out of this
        node's cameras: it runs on another node, never here as it was. Raises :class:`OSError`
        (the shared state unreachable: the follower reads everything again once it is back)."""
        with self._changing:
            if self._closed:
                return
            try:
                change = self.changes.follow(name)
            except ConfigError as exc:
                log.error("camera %s: as changed in %s it cannot run on this node, which leaves it to the others:\n%s",
                          name, self.changes.where, exc)
                change = Change(name, None, None, None)
            if change is not None:
                self._take_in(change)

    def follow_cameras(self) -> None:
        """Cluster: :meth:`follow_camera` for every camera changed since this node took it in (after
        the follower (re)connected)."""
        for name in self.changes.stale():
            self.follow_camera(name)

    def _take_in(self, change: Change) -> None:
        """(Under the change lock) ``change`` is in the shared state: this node's cameras follow it. A
        removed camera running here stops now; an edited one is restarted by the cluster node (its
        old definition stopped before the new one starts, under the same lease); the leases are
        renewed and claimed over the new list at once."""
        name = change.name
        if change.camera is None:
            self._configure(name, None)
            self._policies.pop(name, None)
            if change.policy is not None:
                self._retired = {**self._retired, name: change.policy}
            self.activations.adopted(name, None)
            live = self.cameras.get(name)
            if live is not None:
                self.cameras = {k: v for k, v in self.cameras.items() if k != name}
                self._stop_camera(live)
                if self.on_parked is not None:
                    self.on_parked(name, live)
            log.info("camera %s: removed (%s)", name, self.changes.where)
        else:
            self._configure(name, change.camera)
            self._policies[name] = change.policy
            self._retired = {k: v for k, v in self._retired.items() if k != name}
            self.activations.adopted(name, change.version)
            if name in self.cameras:
                self.cluster.restart(name)
            log.info("camera %s: %s (%s, policy %s)", name, "edited" if name in self.cameras else "taken in",
                     self.changes.where, change.version[:12])
        self.cluster.changed()

    # --- cameras that follow a cluster's leases --------------------------------------------------

    def run_camera(self, name: str) -> None:
        """This node took ``name``'s lease: start it (blocking; a new recording and vault segment, as
        at a restart). Its frames leave only while the lease is surely held. Raises what opening it
        raised (the cluster node tries again later)."""
        self.follow_camera(name)  # as the shared state defines it now, whatever this node heard (else not at all)
        try:
            self.follow_shared(name)  # the policy activated on it last, whatever this node heard
        except Exception:  # it starts with what this node knew; the follower retries
            log.exception("camera %s: the policy activated on it could not be read; it starts with %s", name,
                          self.activations.versions().get(name, "its configured policy")[:12])
        with self._changing:
            if self._closed or name in self.cameras or name not in self.config.cameras:
                return
            policy = self._policies[name]
            live = self._build(name, self.config.cameras[name], policy, self._roster(policy))
            live.pipeline.fence = partial(self.cluster.may_release, name)
            live.start()
            self._running(name, live)
            log.info("camera %s: started on node %s (its lease)", name, self.cluster.name)

    def park_camera(self, name: str) -> None:
        """``name``'s lease went (handed back, or in doubt), or it is restarted as edited: stop it as an
        edit stops it (blocking)."""
        with self._changing:
            live = self.cameras.get(name)
            if live is None:
                return
            self.cameras = {k: v for k, v in self.cameras.items() if k != name}
            self._stop_camera(live)
        log.info("camera %s: stopped on node %s (its lease went, or it was edited)", name, self.cluster.name)
        if self.on_parked is not None:
            self.on_parked(name, live)

    def owner_url(self, camera: str) -> str | None:
        """The base URL of the node running ``camera`` when that is another node (cluster); else None."""
        return None if self.cluster is None or camera in self.cameras else self.cluster.owner_url(camera)

    def owner_rtsp_url(self, camera: str) -> str | None:
        """The RTSP address of the node running ``camera`` when that is another node serving RTSP; else None."""
        return None if self.cluster is None or camera in self.cameras else self.cluster.owner_rtsp_url(camera)

    def _roster(self, policy: Policy) -> list:
        """The key directory's identities now (people added since the start count), checked against
        ``policy``'s unmask grants; raises :class:`keys.EscrowError` if they cannot be met."""
        identities = KeyDirectory.open(self.config.keys_dir).identities
        check_grants(grants_of(policy), identities)
        return identities

    def _configure(self, name: str, camera: Camera | None) -> None:
        cameras = dict(self.config.cameras)  # an edited camera keeps its place
        if camera is None:
            cameras.pop(name, None)
        else:
            cameras[name] = camera
        self.config = self.config.model_copy(update={"cameras": cameras})

    def _running(self, name: str, live: LiveCamera) -> None:
        """Swap in the cameras with ``live`` as ``name``, in the configuration's order (copy-on-write)."""
        running = {**self.cameras, name: live}
        self.cameras = {k: running[k] for k in self.config.cameras if k in running}

    def _undo(self, entries: dict[str, dict]) -> None:
        try:
            self.changes.restore(entries)
        except OSError:
            log.exception("%s could not be put back after a failed change", self.changes.path)

    def _stop_camera(self, camera: LiveCamera) -> None:
        try:
            camera.stop_input()
        finally:
            camera.stop_output()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        # OpenCV runs each call on the calling thread: the cameras' threads are the parallelism here,
        # and OpenCV's own pool (a thread per core, waking and waiting around every resize, blur and
        # colour conversion) cost one fixed camera 4.5 % of a core for nothing (perf/bench_gateway.py,
        # the output stage 6.0 -> 1.5 %; detection's time unchanged). Process-wide; offline `redact`,
        # one frame at a time, keeps the pool (its whole-frame plate passes took 28 % longer without).
        cv2.setNumThreads(1)
        for camera in self.cameras.values():
            camera.pipeline.start()
        self._watchdog.start()
        self._views.start()
        for camera in self.cameras.values():
            camera.source.start(camera.pipeline.offer)
        self.retention.start()
        if self.audit_copy is not None:
            self.audit_copy.start()
        if self.cluster is not None:
            self.cluster.start()
        if self.archive.objects is not None:
            threading.Thread(target=self._archive_left, name="archive", daemon=True).start()

    def _archive_left(self) -> None:
        """Recordings an earlier run left on this disk (the bucket was down, or the node stopped first)."""
        try:
            moved = self.archive.archive_left(self._began)
        except OSError as exc:
            log.error("recordings left on this node could not be moved to %s (the next start tries again): %s",
                      self.archive, exc)
            return
        if moved:
            log.info("moved %d recordings left on this node to %s", moved, self.archive)

    def stop(self) -> None:
        """Stop every camera: sources first, then pipelines (undecided frames leave blanked, sealers
        close), then the watchdog, then the sinks (what they hold is written). A change under way
        finishes first; none starts after."""
        with self._changing:
            self._closed = True
        if self.cluster is not None:
            self.cluster.close()  # its cameras stop and are handed back one by one, their leases renewed meanwhile
        if self.state is not None:
            self.state.close()
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
        if self.audit_copy is not None:  # after the cameras' last entries
            self.audit_copy.close()
        self._stop_openbao()

    def _stop_openbao(self) -> None:
        if self._openbao is not None:
            self._openbao.stop()

    def _tick(self) -> None:
        logged = -60.0

        def failed(pipeline: CameraPipeline, exc: Exception) -> None:  # the watchdog must outlive any one camera's fault
            nonlocal logged
            now = time.monotonic()
            if now - logged >= 10.0:
                logged = now
                log.error("camera %s: the watchdog failed", pipeline.camera, exc_info=exc)

        watch(lambda: [camera.pipeline for camera in self.cameras.values()], self._stop, failed)

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

    def _view_event(self, action: str, details: dict) -> None:
        """An audit entry of a camera's view watch (a reference taken, a camera held or released)."""
        try:
            self.store.audit.append(actor_of(self.signer), self.signer, action, details)
        except AuditError:  # the hold is in force whatever the log says; the log's own faults are reported by it
            log.exception("camera %s: the audit entry %s could not be written", details.get("camera"), action)

    def camera_health(self) -> dict[str, dict]:
        """Per camera an officer is told of: :meth:`health`'s for the cameras here and, in a cluster, for
        every other camera of the cluster where it runs (``status`` ``elsewhere``, ``runs_at``: its
        node's URL, where its health is) or that no node runs it now (``unowned``: it is claimed within
        a lease, or it cannot start on any node)."""
        cameras = self.health()["cameras"]
        if self.cluster is not None:
            elsewhere = self.cluster.elsewhere()
            for name in self.config.cameras:
                if name not in cameras and name not in self._starting:
                    url = elsewhere.get(name)
                    cameras[name] = {"status": "elsewhere" if url else "unowned", "runs_at": url,
                                     "reasons": [f"runs on the node at {url}" if url else "runs on no node now"]}
        return cameras

    def health(self) -> dict:
        """``ok`` when every camera is (see :meth:`LiveCamera.health`), else ``degraded``; per camera
        its state, why, and its counters. A configured camera that is not running (an edit could
        start neither the new camera nor the old one again) is degraded, and says so."""
        cameras = {name: camera.health() for name, camera in self.cameras.items()}
        for name in self.config.cameras:
            if name not in cameras and name not in self._starting and self.cluster is None:
                cameras[name] = {"status": "degraded", "reasons": [_NOT_RUNNING]}
        ok = all(c["status"] == "ok" for c in cameras.values())
        report = {"status": "ok" if ok else "degraded", "cameras": cameras}
        if self.cluster is not None:
            node = self.cluster
            report["cluster"] = {"node": node.name, "owns": node.owned(), "elsewhere": node.elsewhere(),
                                 "load": dict(node.stats.load), "takeovers": node.stats.takeovers,
                                 "error": node.stats.error}
            if node.stats.error is not None:
                report["status"] = "degraded"
        return report
