"""Cameras added, edited and removed over the API of any node of a cluster, kept in the shared state.

Two real `privacy-gateway serve` nodes and one PostgreSQL: a camera added through node A runs on
whichever node claims it and releases redacted frames; edited through the node that does not run
it, the node that runs it stops it and starts it again as edited (the time from the PUT to the new definition releasing
frames is printed); an edit made at a revision another node changed first is refused 409, one
the database cannot take 503, each with nothing changed; removed through A, it stops wherever it
runs (removed through the node that does not run it) and does not come back when its node restarts. No recording of it shows a face unredacted.
The tests run in order over one pair of nodes.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import psycopg
import pytest
from cluster_harness import stop_all, wait_for
from serve_harness import FACES, add_people, assert_faces_redacted
from test_cluster_nodes import LEASE_S, Node, _recorded, _request, clip  # noqa: F401  (clip: a fixture)

pytestmark = pytest.mark.realtime

CAMERA = "added"
#: the bound asserted on a propagation (the target is a second plus a camera's start; the machine is slow)
BOUND_S = 30.0


def _json(node, method, path, body=None):
    status, _, raw = _request(node.port, method, path, node.token, body=None if body is None else json.dumps(body),
                              headers={"Content-Type": "application/json"} if body is not None else None)
    return status, json.loads(raw) if raw[:1] in (b"{", b"[") else raw


def _config(node, camera=CAMERA):
    """``camera``'s settings as ``node`` runs it (None: it does not run there, where officers are told where it runs)."""
    status, answer = _json(node, "GET", f"/api/cameras/{camera}")
    return answer.get("config") if status == 200 and "runs_at" not in answer else None


def _taken_in(node, camera=CAMERA) -> int:
    """How many changes of ``camera`` ``node`` took in while not running it."""
    return (node.dir / "serve.log").read_text().count(f"camera {camera}: taken in (the shared state")


def _runs(node, camera=CAMERA) -> int:
    """Frames ``camera`` released on ``node`` (0: not running there, or not yet)."""
    report = node.health() or {}
    return report.get("cameras", {}).get(camera, {}).get("released", 0) if camera in node.owns() else 0


def _starts(node, camera=CAMERA) -> list[str]:
    return [line for line in (node.dir / "serve.log").read_text().splitlines()
            if f"camera {camera}: started on node" in line or f"camera {camera}: stopped on node" in line]


def _edited(cluster, holdback_ms) -> dict:
    """The body of an edit (a PUT gives every field): the other clip, this hold-back."""
    return {"source": str(cluster.clips[1]), "holdback_ms": holdback_ms, "renditions": ["h264"]}


class Cluster:
    def __init__(self, a, b, postgres, database, clips):
        self.a, self.b, self.postgres, self.database, self.clips = a, b, postgres, database, clips
        self.times: dict[str, float] = {}

    def sql(self, query, *args):
        with psycopg.connect(self.database, password=self.postgres.password_file.read_text().strip()) as connection:
            return connection.execute(query, args).fetchall()

    def owner(self):
        return next((node for node in (self.a, self.b) if _runs(node) > 0), None)


@pytest.fixture(scope="module")
def cluster(postgres, openbao, clip, tmp_path_factory, request):
    path, _, _ = clip
    tmp = tmp_path_factory.mktemp("cameras")
    keys = tmp / "keys"
    add_people(keys, tmp / "people")
    other = shutil.copy(path, tmp / "other.mp4")  # the edited camera's source: the same pictures
    database = postgres.database("cameras")
    nodes = [Node(name, tmp, keys, path, postgres, database, openbao, cameras=["cam0"], capacity=2)
             for name in ("n1", "n2")]
    try:
        wait_for(lambda: any(_runs(node, "cam0") > 0 for node in nodes), 120, "cam0 releasing frames on one node")
        for node in nodes:  # both answer: each test speaks to a given node
            node.wait_serving(BOUND_S)
        found = Cluster(*nodes, postgres, database, (path, other))
        yield found
        times = ", ".join(f"{what} {seconds:.2f} s" for what, seconds in found.times.items())
        with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print(f"\ncameras changed over the API in a cluster: {times}")
    finally:
        stop_all(nodes)


def test_a_camera_added_on_one_node_runs_on_the_node_that_claims_it(cluster):
    a, b = cluster.a, cluster.b
    status, stored = _json(a, "POST", "/api/policies", {**FACES, "unmask": {"watermark": "optional"}})
    assert status == 201, stored
    began = time.monotonic()
    status, answer = _json(a, "POST", "/api/cameras", {
        "id": CAMERA, "source": str(cluster.clips[0]), "policy": stored["version"], "holdback_ms": 1000,
        "renditions": ["h264"]})
    assert status == 201, answer
    owner = wait_for(cluster.owner, BOUND_S + 60, "the added camera releasing frames on a node")
    cluster.times["added on a, releasing on its owner"] = time.monotonic() - began
    # every node knows it, as the shared state keeps it, under the stored policy
    other = b if owner is a else a
    assert _config(owner)["source"] == str(cluster.clips[0]) and _taken_in(other) == 1
    assert all(_json(node, "GET", f"/api/cameras/{CAMERA}/policy")[1]["version"] == stored["version"]
               for node in (a, b))
    ((revision, entry, policy),) = cluster.sql("SELECT revision, entry, policy FROM camera_changes WHERE camera = %s",
                                               CAMERA)
    assert revision == 1 and entry["source"] == str(cluster.clips[0]) and policy == stored["version"]
    assert CAMERA not in other.owns()
    # the officer's list on either node holds it: the other node says where it runs (its counters are there)
    def listed(node):
        status, answer = _json(node, "GET", "/api/cameras")
        return {c["id"]: c for c in answer["cameras"]}.get(CAMERA) if status == 200 else None

    assert listed(owner)["status"] == "ok" and "runs_at" not in listed(owner)
    seen = wait_for(lambda: (listed(other) or {}).get("runs_at"), 10, "the other node to know where it runs")
    assert seen == owner.url and listed(other)["status"] == "elsewhere"
    assert listed(other)["config"]["source"] == str(cluster.clips[0])
    status, one = _json(other, "GET", f"/api/cameras/{CAMERA}")
    assert status == 200 and one["runs_at"] == owner.url
    # the name is taken, on either node
    assert _json(b, "POST", "/api/cameras", {"id": CAMERA, "source": str(cluster.clips[0])})[0] == 409


def test_a_camera_edited_on_the_other_node_restarts_on_its_owner_as_edited(cluster):
    a, b = cluster.a, cluster.b
    owner = cluster.owner()
    assert owner is not None
    other = b if owner is a else a
    before = len(_starts(owner))
    began = time.monotonic()
    status, answer = _json(other, "PUT", f"/api/cameras/{CAMERA}", _edited(cluster, 800))
    assert status == 200 and answer["restarted"], answer

    def restarted():
        events = _starts(owner)[before:]
        return len(events) >= 2 and "started on node" in events[-1] and _runs(owner) > 0 and events

    events = wait_for(restarted, BOUND_S, "the owner to run the edited camera", step=0.05)
    cluster.times["edited on the other node, the new definition releasing on its owner"] = time.monotonic() - began
    # the old definition stopped before the new one started, on the owner only; the lease stayed
    assert "stopped on node" in events[0] and "started on node" in events[1], events
    assert CAMERA in owner.owns() and CAMERA not in other.owns()
    assert _config(owner)["holdback_ms"] == 800 and _config(owner)["source"] == str(cluster.clips[1])
    assert _taken_in(other) == 2 and not _starts(other)  # added, edited (its own edit, once written)


def test_an_edit_made_over_a_change_it_has_not_seen_is_refused_409(cluster):
    a, b = cluster.a, cluster.b
    # another node's change committed, its notification not yet taken in here: a loses
    (revision,) = cluster.sql("UPDATE camera_changes SET revision = revision + 1 WHERE camera = %s RETURNING revision",
                              CAMERA)[0]
    status, answer = _json(a, "PUT", f"/api/cameras/{CAMERA}", _edited(cluster, 900))
    assert status == 409 and "changed on node" in answer["error"] and "nothing was changed" in answer["error"], answer
    assert cluster.sql("SELECT revision, entry->>'holdback_ms' FROM camera_changes WHERE camera = %s", CAMERA) \
        == [(revision, "800")]
    owner = cluster.owner()
    assert owner is not None and _config(owner)["holdback_ms"] == 800

    # edits made at once on both nodes: each either wins or is refused, and the camera runs the winner's
    cluster.sql("SELECT pg_notify('privacy_gateway_state', 'camera:' || %s)", CAMERA)  # now they take it in
    wait_for(lambda: _json(a, "PUT", f"/api/cameras/{CAMERA}", _edited(cluster, 850))[0] == 200, 10,
             "a to take the revision in", step=0.5)
    for round_ in range(3):
        start = threading.Barrier(2)
        answers = {}

        def put(node, holdback, start=start, answers=answers):
            start.wait()
            answers[node.name] = _json(node, "PUT", f"/api/cameras/{CAMERA}", _edited(cluster, holdback))

        threads = [threading.Thread(target=put, args=(node, 700 + 10 * round_ + i)) for i, node in enumerate((a, b))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = sorted(status for status, _ in answers.values())
        assert statuses in ([200, 200], [200, 409]), answers
        ((final,),) = cluster.sql("SELECT (entry->>'holdback_ms')::int FROM camera_changes WHERE camera = %s", CAMERA)
        wait_for(lambda final=final: any((_config(node) or {}).get("holdback_ms") == final for node in (a, b)),
                 BOUND_S, "the camera running the edit committed last")
    wait_for(lambda: cluster.owner() is not None, BOUND_S, "the camera releasing frames again")


def test_a_change_the_database_cannot_take_is_refused_and_changes_nothing(cluster):
    a = cluster.a
    owner = wait_for(cluster.owner, BOUND_S, "the camera running")
    before = _config(owner)
    blocker = psycopg.connect(cluster.database, password=cluster.postgres.password_file.read_text().strip())
    try:
        blocker.execute("LOCK TABLE camera_changes IN ACCESS EXCLUSIVE MODE")  # as if gone: every write times out
        began = time.monotonic()
        status, answer = _json(a, "PUT", f"/api/cameras/{CAMERA}", _edited(cluster, 1500))
        waited = time.monotonic() - began
        assert status == 503 and "the shared state (PostgreSQL)" in answer["error"], answer
        assert "nothing was changed" in answer["error"]
        assert waited < LEASE_S + 2  # bounded by the statement timeout (a third of a lease), not hanging
        assert _json(a, "DELETE", f"/api/cameras/{CAMERA}")[0] == 503
    finally:
        blocker.close()
    assert _config(owner) == before
    assert cluster.sql("SELECT (entry->>'holdback_ms')::int FROM camera_changes WHERE camera = %s", CAMERA) \
        == [(before["holdback_ms"],)]
    assert cluster.owner() is not None  # it kept running as the database holds it


def test_a_definition_that_cannot_run_on_a_node_is_never_run_there_as_it_was(cluster):
    """Fail closed: a row a node cannot run (here its source file is missing on every node) takes the
    camera out of that node's list; it does not go on running the earlier definition."""
    owner = wait_for(cluster.owner, BOUND_S, "the camera running")
    good = cluster.sql("SELECT entry FROM camera_changes WHERE camera = %s", CAMERA)[0][0]
    missing = str(cluster.clips[1].parent / "gone.mp4")
    cluster.sql("WITH changed AS (UPDATE camera_changes SET revision = revision + 1, entry = entry || %s "
                "WHERE camera = %s RETURNING camera) SELECT pg_notify('privacy_gateway_state', 'camera:' || camera) "
                "FROM changed", json.dumps({"source": missing}), CAMERA)
    wait_for(lambda: CAMERA not in (owner.health() or {"cameras": {CAMERA: 1}})["cameras"], BOUND_S,
             "the owner to stop it")
    time.sleep(2 * LEASE_S)
    assert all(CAMERA not in node.owns() for node in (cluster.a, cluster.b))
    assert all(f"cameras.{CAMERA}.source: no such file {missing}" in (node.dir / "serve.log").read_text()
               for node in (cluster.a, cluster.b))
    # a node that starts meanwhile starts without it (it neither refuses to start nor runs it as it was)
    owner.stop()
    owner.start(json.loads((owner.dir / "gateway.yaml").read_text()))
    wait_for(lambda: owner.health() is not None, 60, "the restarted node answering")
    assert "it cannot run on this node, which leaves it to the others" in (owner.dir / "serve.log").read_text()
    assert CAMERA not in owner.owns()
    # put right in the database: taken in, claimed and run again
    cluster.sql("WITH changed AS (UPDATE camera_changes SET revision = revision + 1, entry = %s WHERE camera = %s "
                "RETURNING camera) SELECT pg_notify('privacy_gateway_state', 'camera:' || camera) FROM changed",
                json.dumps(good), CAMERA)
    wait_for(cluster.owner, BOUND_S, "the camera running again")


def test_a_camera_removed_on_the_other_node_stops_everywhere_and_stays_removed_after_a_restart(cluster, clip):
    a, b = cluster.a, cluster.b
    owner = wait_for(cluster.owner, BOUND_S, "the camera running")
    began = time.monotonic()
    status, answer = _json(b if owner is a else a, "DELETE", f"/api/cameras/{CAMERA}")
    assert status == 200 and answer["removed"], answer
    def stopped():
        report = owner.health()
        return report is not None and CAMERA not in report["cameras"]

    wait_for(stopped, BOUND_S, "the owner to stop it", 0.05)
    cluster.times["removed on the other node, stopped on its owner"] = time.monotonic() - began
    assert all(_json(node, "PUT", f"/api/cameras/{CAMERA}", _edited(cluster, 900))[0] == 404 for node in (a, b))
    assert cluster.sql("SELECT entry->>'removed' FROM camera_changes WHERE camera = %s", CAMERA) == [("true",)]
    wait_for(lambda: all(CAMERA not in node.owns() for node in (a, b)), 2 * LEASE_S, "its lease to lapse")

    # the owner restarts: it neither runs the camera nor lists it; nor does any node claim it
    owner.stop()
    owner.start(json.loads((owner.dir / "gateway.yaml").read_text()))
    wait_for(lambda: owner.health() is not None, 60, "the restarted node answering")
    time.sleep(2 * LEASE_S)
    assert all(CAMERA not in node.owns() for node in (a, b))
    assert all(_json(node, "PUT", f"/api/cameras/{CAMERA}", _edited(cluster, 900))[0] == 404 for node in (a, b))
    assert "removed at run time (camera_changes)" in (owner.dir / "serve.log").read_text()

    # nothing unredacted of it left either node
    _, frames, faces = clip
    checked = 0
    for node in (a, b):
        images, unreadable = _recorded(node.dir / "data")
        assert unreadable == 0
        checked += assert_faces_redacted(images, frames, faces)
    assert checked > 0
