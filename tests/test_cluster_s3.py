"""Two real `privacy-gateway serve` nodes sharing one SeaweedFS bucket and one PostgreSQL.

Each node keeps its vault, the copy of its audit log and its finished recordings under its own
prefix of the bucket. `kill -9` of the node running a camera: the other takes the camera over,
logs a `take-over` entry and exports the gap; with the dead node's data directory deleted, every
segment and recording it finished verifies and unmasks from the bucket alone.
"""

from __future__ import annotations

import shutil
import time

import cluster_harness
import pytest
from cluster_harness import unmask_one, wait_for
from serve_harness import add_people
from test_cluster_nodes import Node

from gateway.cli import main
from keys import AuditLog

pytestmark = pytest.mark.realtime

CAMERAS = ["cam0", "cam1"]


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory, data):
    return cluster_harness.small_clip(data / "videos" / "short_hamilton_clip.mp4", tmp_path_factory.mktemp("s3nodes") / "small.mp4")


@pytest.fixture
def nodes(postgres, openbao, seaweedfs, small_clip, tmp_path):
    """``start(name)``: a node of a two-camera cluster whose storage is one shared bucket."""
    bucket = seaweedfs.bucket()
    objects = seaweedfs.config(bucket, tmp_path / "s3.secret")
    database = postgres.database("s3nodes")
    keys = tmp_path / "keys"
    people = add_people(keys, tmp_path / "people")
    started = []

    def start(name):
        started.append(Node(name, tmp_path, keys, small_clip, postgres, database, openbao, cameras=CAMERAS,
                            objects=objects, capacity=2))
        return started[-1]

    yield start, people, seaweedfs.objects(bucket)
    for node in started:
        node.stop()


def _gauge(metrics: str, name: str, camera: str, node: str) -> float | None:
    prefix = f'{name}{{camera="{camera}",node="{node}"}} '
    return next((float(line[len(prefix):]) for line in metrics.splitlines() if line.startswith(prefix)), None)


def test_a_killed_nodes_finished_footage_verifies_and_unmasks_from_the_bucket(nodes, tmp_path, capsys):
    start, people, bucket = nodes
    first = start("n1")
    wait_for(lambda: first.owns() == set(CAMERAS), 90, "n1 to claim both cameras")
    second = start("n2")
    # n1 keeps both until n2 is live, then hands one back: wait for the 1/1 spread
    wait_for(lambda: len(first.owns()) == 1 and len(second.owns()) == 1, 60, "the cameras spread 1/1")
    camera = next(iter(first.owns()))

    # recordings land in the bucket, under n1's prefix, once finished (the open one stays on the node)
    def finished_in_bucket():
        return [n for n in bucket.list(f"n1/recordings/{camera}/") if n.endswith(".mp4")]

    wait_for(lambda: len(finished_in_bucket()) >= 2, 90, "two finished recordings of n1 in the bucket")
    names = set(bucket.list("n1/"))
    assert {"n1/vault.json", "n1/escrow.json"} <= names
    assert any(n.startswith(f"n1/segments/{camera}/") for n in names)
    assert any(n.startswith("n1/audit/") for n in names)  # the audit log's copy, one object per entry
    # moved, not copied: the node removes its file just after the upload, so wait out that instant
    in_bucket = {n.rsplit("/", 1)[1] for n in finished_in_bucket()}
    wait_for(lambda: not in_bucket & {p.name for p in (first.dir / "data" / "recordings" / camera).glob("*.mp4")},
             10, "n1 to remove the recordings it put in the bucket")

    first.process.kill()
    killed = time.monotonic()
    first.process.wait(10)
    wait_for(lambda: camera in second.owns() and second.released(camera) > 0, 60, "n2 to run the killed node's camera")
    took = time.monotonic() - killed
    entries = wait_for(lambda: [e for e in AuditLog(second.dir / "data" / "vault" / "audit.log").entries()
                             if e["action"] == "take-over" and not e["details"].get("released")], 20,
                       "the take-over audit entry")  # (not the hand-over of the camera n1 gave back at n2's start)
    details = entries[0]["details"]
    assert details["camera"] == camera and details["previous"] == "n1" and details["epoch"] >= 2
    assert 0 < details["gap_s"] < 60 and details["expired_at"] < details["claimed_at"]
    gap = wait_for(lambda: _gauge(second.metrics(), "privacy_gateway_camera_gap_seconds", camera, "n2"), 10, "the gap")
    assert gap == details["gap_s"] or abs(gap - details["gap_s"]) < 0.01
    with capsys.disabled():
        print(f"\nbucket take-over: camera {camera} ran again on n2 {took:.1f} s after kill -9 of n1; gap logged "
              f"{details['gap_s']:.1f} s")
    second.stop()

    # the dead node's disk is gone: everything it finished is read from the bucket
    shutil.rmtree(first.dir / "data")
    capsys.readouterr()
    assert main(["vault", "verify", "--config", str(second.dir / "gateway.yaml"), "--node", "n1", "--recordings"]) == 0
    out = capsys.readouterr().out
    assert "cameras" in out and "verified" in out
    assert main(["vault", "verify", "--config", str(second.dir / "gateway.yaml"), "--recordings"]) == 0
    out = capsys.readouterr().out
    assert f"camera {camera}: a gap of at most" in out and "taken over from node n1" in out

    recorded = [e for e in AuditLog(second.dir / "data" / "vault" / "nodes" / "n1" / "audit.log").entries()
                if e["action"] == "recorded" and e["details"]["camera"] == camera]
    assert len(recorded) >= 2
    assert unmask_one(second.dir / "gateway.yaml", "n1", people["investigator"], tmp_path / "unmasked", capsys)
    # the unmask entries went to n1's log, copied to the bucket, and it still verifies
    assert any(e["action"] == "unmask" for e in AuditLog(second.dir / "data" / "vault" / "nodes" / "n1" /
                                                          "audit.log").entries())
    shutil.rmtree(second.dir / "data" / "vault" / "nodes")
    assert main(["vault", "verify", "--config", str(second.dir / "gateway.yaml"), "--node", "n1"]) == 0
