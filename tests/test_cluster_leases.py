"""Camera leases against a real PostgreSQL (tests/postgres_support.py): claim, spread, renewal,
expiry, take-over, epochs, hand-back, NOTIFY, and a node that loses the database stopping in time."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from gateway.cluster import (
    CHANNEL,
    SCHEMA_VERSION,
    ClusterNode,
    Leases,
    SchemaError,
    claim_limit,
)
from gateway.config import Cluster

pytestmark = pytest.mark.realtime

CAMERAS = [f"cam{i}" for i in range(6)]


_OPEN: list[psycopg.Connection] = []


@pytest.fixture
def database(postgres):
    yield postgres.database("leases")
    while _OPEN:
        _OPEN.pop().close()


def _leases(postgres, conninfo, node, capacity=10, lease_s=2.0, rtsp=True) -> Leases:
    password = postgres.password_file.read_text().strip()
    _OPEN.append(connection := psycopg.connect(conninfo, password=password))
    leases = Leases(connection, node, f"http://{node}.test:8080", capacity, lease_s,
                    f"rtsp://{node}.test:8554" if rtsp else None)
    leases.set_up()
    return leases


def _rows(postgres, conninfo):
    with psycopg.connect(conninfo, password=postgres.password_file.read_text().strip()) as connection:
        return {camera: (owner, epoch) for camera, owner, epoch in
                connection.execute("SELECT camera, owner, epoch FROM camera_leases").fetchall()}


def _settle(nodes, rounds=12):
    """Rounds in turn, handing back what a round sheds, until nothing changes."""
    for _ in range(rounds):
        changed = False
        for leases in nodes:
            result = leases.round(CAMERAS)
            if result.shed:
                leases.release([result.shed])
            changed |= bool(result.claimed or result.shed)
        if not changed:
            return


def test_schema_is_created_once_and_a_newer_one_is_refused(postgres, database):
    first = _leases(postgres, database, "a")
    _leases(postgres, database, "b")  # a second node finds it there
    with first.connection.cursor() as cur:
        assert cur.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        cur.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    first.connection.commit()
    with pytest.raises(SchemaError, match="upgrade this node"):
        _leases(postgres, database, "c")


def test_a_node_setting_up_while_another_runs_a_round_does_not_deadlock(postgres, database):
    """Nodes starting together: one runs the schema's statements while another is in a round (its
    heartbeat written, its leases next). The set-up takes the tables in the round's order, so it waits
    for the round instead of the two deadlocking (which failed a round: perf/bench_cluster.py saw it)."""
    first = _leases(postgres, database, "a")
    with first.connection.transaction(), first.connection.cursor() as cur:  # a round, held between two statements
        cur.execute("UPDATE gateway_nodes SET heartbeat = now() WHERE name = 'a'")
        errors: list[Exception] = []

        def set_up():
            try:
                _leases(postgres, database, "b")
            except psycopg.Error as exc:
                errors.append(exc)

        starting = threading.Thread(target=set_up)
        starting.start()
        time.sleep(0.5)  # the set-up is waiting for the round now
        cur.execute("INSERT INTO camera_leases (camera) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                    (CAMERAS,))
    starting.join(10)
    assert not starting.is_alive() and errors == []


def test_claim_limit_spreads_one_ahead_of_the_least_loaded_and_never_beyond_capacity():
    assert claim_limit(0, 4, None) == 4  # alone: up to capacity
    assert claim_limit(2, 4, 2) == 1  # one ahead of the least loaded other node
    assert claim_limit(3, 4, 1) == 0
    assert claim_limit(0, 1, 0) == 1 and claim_limit(1, 1, 0) == 0


def test_six_cameras_spread_two_two_two_with_late_joiners_and_capacity(postgres, database):
    a = _leases(postgres, database, "a", capacity=4)
    first = a.round(CAMERAS)
    assert len(first.claimed) == 4 and first.held == {c: 1 for c in first.claimed}  # alone, up to capacity
    b, c = _leases(postgres, database, "b", capacity=4, rtsp=False), _leases(postgres, database, "c", capacity=4)
    _settle([a, b, c])
    owners = [owner for owner, _ in _rows(postgres, database).values()]
    assert sorted(owners.count(n) for n in "abc") == [2, 2, 2], owners
    result = c.round(CAMERAS)
    assert result.load == {"a": 2, "b": 2, "c": 2}
    assert set(result.elsewhere.values()) == {"http://a.test:8080", "http://b.test:8080"}
    # RTSP clients are sent to the owner's RTSP address; b serves no RTSP: none for its cameras
    assert result.rtsp_elsewhere == {camera: "rtsp://a.test:8554" for camera, url in result.elsewhere.items()
                                     if url == "http://a.test:8080"} and result.rtsp_elsewhere
    # a node of capacity 1 never takes more, even with cameras free
    d_db = postgres.database("cap")
    d = _leases(postgres, d_db, "d", capacity=1)
    assert len(d.round(CAMERAS).held) == 1 and len(d.round(CAMERAS).held) == 1


def test_renewal_keeps_a_lease_expiry_frees_it_and_a_takeover_bumps_the_epoch(postgres, database):
    a, b = _leases(postgres, database, "a", lease_s=1.5), _leases(postgres, database, "b", lease_s=1.5)
    assert a.round(["x"]).held == {"x": 1}
    for _ in range(3):  # renewed every half lease: b never gets it
        time.sleep(0.75)
        assert a.round(["x"]).held == {"x": 1}
        assert b.round(["x"]).held == {}
    time.sleep(1.7)  # a stops renewing; its lease expires
    taken = b.round(["x"])
    assert taken.held == {"x": 2} and taken.taken_over == ["x"]
    assert a.round(["x"]).held == {}  # the old owner finds it gone (it must not renew an expired lease)
    assert _rows(postgres, database) == {"x": ("b", 2)}


def test_a_camera_no_longer_given_is_not_renewed_and_nobody_claims_it(postgres, database):
    """A camera removed at run time: its owner stops it at once and lets its lease lapse."""
    a, b = _leases(postgres, database, "a", lease_s=1.5), _leases(postgres, database, "b", lease_s=1.5)
    assert a.round(["x", "y"]).held == {"x": 1, "y": 1}
    time.sleep(0.75)
    assert a.round(["y"]).held == {"y": 1}  # x is not renewed
    time.sleep(0.9)  # x's lease has ended, y's (renewed since) has not
    assert b.round(["y"]).held == {}
    assert b.round([]).held == {}  # no node that knows of the removal claims x
    assert a.round(["y"]).held == {"y": 1}
    assert b.round(["x"]).taken_over == ["x"]  # free: only a node still running the old list would take it


def test_a_released_lease_is_announced_and_claimed_at_once(postgres, database):
    a, b = _leases(postgres, database, "a"), _leases(postgres, database, "b")
    a.round(["x"])
    listener = psycopg.connect(database, password=postgres.password_file.read_text().strip(), autocommit=True)
    listener.execute(f"LISTEN {CHANNEL}")
    a.release(["x"])
    notices = list(listener.notifies(timeout=2, stop_after=1))
    assert [n.payload for n in notices] == ["a"]
    claimed = b.round(["x"])
    assert claimed.claimed == ["x"]
    listener.close()
    # b knows whose history it continues (a handed it back), which is not a lease that expired
    assert claimed.handed_over == ["x"] and claimed.taken_over == []
    previous, released_at, claimed_at = claimed.previous["x"]
    assert previous == "a" and released_at <= claimed_at


def test_a_release_is_believed_for_its_own_tenure_only(postgres, database):
    """A node that does not know the release columns (an older version) claims and hands back without
    touching them: the next claimer must not take the release of an earlier tenure for that one's."""
    a, b, c = (_leases(postgres, database, name) for name in "abc")
    a.round(["x"])
    a.release(["x"])
    assert b.round(["x"]).handed_over == ["x"]
    with psycopg.connect(database, password=postgres.password_file.read_text().strip()) as older:  # b, older
        older.execute("UPDATE camera_leases SET owner = NULL, expires_at = NULL WHERE camera = 'x'")
    again = c.round(["x"])
    assert again.claimed == ["x"] and again.handed_over == [] and "x" not in again.previous
    c.release(["x"])
    assert a.round(["x"]).previous["x"][0] == "c"


class _Cameras:
    """What a node's runtime is told: started and stopped cameras, with when."""

    def __init__(self):
        self.running: set[str] = set()
        self.events: list[tuple[str, str, float]] = []
        self.changed = threading.Event()

    def start(self, camera):
        self.running.add(camera)
        self.events.append(("start", camera, time.monotonic()))
        self.changed.set()

    def stop(self, camera):
        self.running.discard(camera)
        self.events.append(("stop", camera, time.monotonic()))
        self.changed.set()


def _node(postgres, database, name, cameras, lease_s=1.5, capacity=10):
    config = Cluster(node=name, url=f"http://{name}.test:8080", database=database,
                     password_file=postgres.password_file, capacity=capacity, lease_s=lease_s)
    node = ClusterNode(config, lambda: ["x", "y"], cameras.start, cameras.stop)
    node.start()
    return node


def _wait(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_node_that_loses_the_database_stops_before_its_lease_ends_and_another_takes_over(postgres, database):
    first, second = _Cameras(), _Cameras()
    a = _node(postgres, database, "a", first)
    try:
        _wait(lambda: first.running == {"x", "y"})
        assert a.may_release("x") and a.owned().keys() == {"x", "y"}
        b = _node(postgres, database, "b", second)
        try:
            _wait(lambda: b.owner_url("x") == "http://a.test:8080")
            # the lease table locked by someone else: a's rounds time out (as if partitioned)
            blocker = psycopg.connect(database, password=postgres.password_file.read_text().strip())
            blocker.execute("LOCK TABLE camera_leases IN ACCESS EXCLUSIVE MODE")
            _wait(lambda: not first.running, timeout=5)
            stopped = max(t for what, _, t in first.events if what == "stop")
            assert stopped < a._valid_until, "a stopped only after its lease could have ended"
            assert not a.may_release("x")
            blocker.rollback()
            blocker.close()
            # its leases ran out unrenewed: whoever claims them first (b, or a once it reconnects) runs them,
            # never both at once
            _wait(lambda: len(first.running | second.running) == 2, timeout=10)
            assert not first.running & second.running
        finally:
            b.close()
    finally:
        a.close()


def test_a_node_that_stops_hands_its_cameras_over_at_once(postgres, database):
    first, second = _Cameras(), _Cameras()
    a = _node(postgres, database, "a", first, lease_s=9.0)  # expiry alone would take 9 s
    b = None
    try:
        _wait(lambda: first.running == {"x", "y"})
        b = _node(postgres, database, "b", second, lease_s=9.0)
        handed = []
        b.on_takeover = handed.append
        _wait(lambda: len(second.running) == 1 and len(first.running) == 1, timeout=10)  # spread: one each
        began = time.monotonic()
        a.close()
        _wait(lambda: second.running == {"x", "y"}, timeout=5)
        assert time.monotonic() - began < 3, "the hand-back waited for a round instead of the NOTIFY"
        # both moves are hand-overs from a (the rebalancing one and the stop), for the audit log; no lease expired
        assert sorted(e.camera for e in handed) == ["x", "y"]
        assert all(e.previous == "a" and e.released and e.details()["released"] and 0 <= e.gap_s < 5 for e in handed), [(e.camera, e.epoch, e.released, e.gap_s) for e in handed]
        assert b.stats.takeovers == 0 and set(b.stats.gaps) == {"x", "y"}
    finally:
        a.close() if b is None else b.close()


def test_a_node_whose_cameras_are_slow_to_stop_still_hands_each_back_rather_than_letting_it_expire(postgres, database):
    """Stopping a camera (its recording finished, its originals sealed) took a second or more on a busy
    machine; a node holding three stopped them all before handing any back, with its leases no longer
    renewed, and the next owner took them over as from a dead node (the site test, on a slow machine).
    Here each stop takes 1.2 s against a 1.5-s lease: every camera must still be handed back."""

    class Slow(_Cameras):
        def stop(self, camera):
            time.sleep(1.2)
            super().stop(camera)

    def node(name, cameras):
        config = Cluster(node=name, url=f"http://{name}.test:8080", database=database,
                         password_file=postgres.password_file, capacity=10, lease_s=1.5)
        return ClusterNode(config, lambda: ["x", "y", "z"], cameras.start, cameras.stop)

    first, second = Slow(), _Cameras()
    a, b = node("a", first), node("b", second)
    handed = []
    b.on_takeover = handed.append
    a.start()
    try:
        _wait(lambda: first.running == {"x", "y", "z"})
        b.start()
        _wait(lambda: len(first.running) == 2 and len(second.running) == 1)  # the spread: a hands one back
        a.close()
        _wait(lambda: second.running == {"x", "y", "z"}, timeout=10)
        assert sorted(e.camera for e in handed) == ["x", "y", "z"]
        assert all(e.previous == "a" and e.released for e in handed), [e.details() for e in handed]
        assert b.stats.takeovers == 0
    finally:
        a.close()
        b.close()
