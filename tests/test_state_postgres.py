"""The shared state in a real PostgreSQL (tests/postgres_support.py): tokens and grants round trip
(hashes only), content-addressed policy documents, revocation, signatures used once across
nodes, and two versions activated at once on one camera: the last commit wins and every node
that follows the notifications ends on it."""

from __future__ import annotations

import hashlib
import threading
import time

import psycopg
import pytest

from gateway.api.access import Denied, SignatureChecker, TokenStore
from gateway.config import Cluster
from gateway.live.activation import Activations
from gateway.state import (
    SCHEMA_VERSION,
    AuditCopy,
    AuditTable,
    CameraConflict,
    CameraTable,
    FailureTable,
    PolicyTable,
    RosterTable,
    SchemaError,
    SeenTable,
    SharedRoster,
    StateDatabase,
    StateFollower,
    StateUnavailable,
    TokenTable,
)
from keys import (
    AuditError,
    AuditLog,
    EscrowError,
    KeyDirectory,
    VaultStore,
    canonical,
    verify_lines,
)

FACES = {"name": "faces", "classes": {"plate": {"enabled": False}}}
PIXELATE = {"name": "pixelate", "classes": {"plate": {"enabled": False}, "face": {"method": "pixelate"}}}


def _cluster(postgres, conninfo: str, node: str = "n1") -> Cluster:
    return Cluster(node=node, url=f"http://{node}.test:8080", database=conninfo,
                   password_file=postgres.password_file, lease_s=3.0)


@pytest.fixture
def nodes(postgres):
    """Two nodes' connections to one fresh database, its schema set up."""
    conninfo = postgres.database("state")
    opened = [StateDatabase(_cluster(postgres, conninfo, name)) for name in ("n1", "n2")]
    for database in opened:
        database.set_up()
    yield opened
    for database in opened:
        database.close()


def _rows(postgres, database: StateDatabase, query: str, *args):
    with psycopg.connect(database.config.database, password=postgres.password_file.read_text().strip()) as connection:
        return connection.execute(query, args).fetchall()


def test_schema_is_versioned_and_a_newer_one_is_refused(postgres, nodes):
    a, _ = nodes
    a.set_up()  # again: nothing changes
    assert _rows(postgres, a, "SELECT version FROM state_schema_version") == [(SCHEMA_VERSION,)]
    a.run(lambda cur: cur.execute("UPDATE state_schema_version SET version = %s", (SCHEMA_VERSION + 1,)))
    with pytest.raises(SchemaError, match="upgrade this node"):
        a.set_up()


def test_a_version_1_database_is_upgraded(postgres, nodes):
    """Then nodes of version 1 refuse to start (above): they would run their files' cameras over the
    changes kept in camera_changes."""
    a, b = nodes
    a.run(lambda cur: cur.execute("UPDATE state_schema_version SET version = 1"))
    b.set_up()
    assert _rows(postgres, a, "SELECT version FROM state_schema_version") == [(SCHEMA_VERSION,)] and SCHEMA_VERSION > 1


def test_a_camera_change_is_written_only_at_the_revision_its_node_took_in(postgres, nodes):
    a, b = CameraTable(nodes[0], "n1"), CameraTable(nodes[1], "n2")
    document = canonical(FACES)
    version = hashlib.sha256(document).hexdigest()
    entry = {"source": "/clips/gate.mp4", "policy": version}
    assert a.put("gate", entry, 0, document) == 1
    assert b.entry("gate") == (1, entry) and b.load() == {"gate": (1, entry)}
    assert PolicyTable(nodes[1]).document(version) == document  # the policy it names travels with it
    with pytest.raises(CameraConflict, match=r"changed on node n1 meanwhile \(revision 1; this node had none\)"):
        b.put("gate", {**entry, "source": "/clips/other.mp4"}, 0, None)  # an add over an add
    PolicyTable(nodes[1]).put("gate", version, {"gate": version})
    assert b.put("gate", {"removed": True, "policy": version}, 1, None) == 2
    with pytest.raises(CameraConflict, match=r"\(revision 2; this node had 1\)"):
        a.put("gate", {**entry, "source": "/clips/third.mp4"}, 1, None)  # an edit over the removal
    assert a.entry("gate") == (2, {"removed": True, "policy": version})
    assert PolicyTable(nodes[0]).activation("gate") is None  # the entry names what it ran: no activation over it
    with pytest.raises(StateUnavailable, match="ForeignKeyViolation"):  # a version no node can read
        a.put("lobby", {"source": "/clips/lobby.mp4", "policy": "0" * 64}, 0, None)
    assert a.entry("lobby") is None


def test_a_token_issued_on_one_node_works_on_the_other_and_only_its_hashes_are_kept(postgres, nodes, tmp_path):
    a = TokenStore(tmp_path / "a", rows=TokenTable(nodes[0]))
    b = TokenStore(tmp_path / "b", rows=TokenTable(nodes[1]))
    token, record = a.issue("viewer", ["cam0"], 600.0, "officer")
    with pytest.raises(Denied, match="invalid token"):
        b.check(token)  # not heard of yet: the follower's notification brings it
    assert b.refresh_token(record.id) == record
    assert b.check(token) == record
    secret = token.rsplit("_", 1)[1]
    (row,) = _rows(postgres, nodes[0], "SELECT * FROM access_tokens")
    assert secret not in repr(row) and hashlib.sha256(secret.encode()).hexdigest() in row
    assert not (tmp_path / "a").exists()  # nothing on the node's disk

    revoked = a.revoke(record.id)
    assert b.check(token) == record  # until told
    assert b.refresh_token(record.id) == revoked
    with pytest.raises(Denied, match="token revoked"):
        b.check(token)
    # a revocation is never undone, and the first time stays (another node revoking it later)
    later = b.revoke(record.id)
    assert later.revoked == revoked.revoked
    assert TokenStore(tmp_path / "c", rows=TokenTable(nodes[1])).tokens() == [revoked]  # a restart reads it back


def test_grants_round_trip_and_one_taken_away_is_not_given_back_by_a_nodes_old_files(postgres, nodes, tmp_path):
    a = TokenStore(tmp_path / "a", rows=TokenTable(nodes[0]))
    b = TokenStore(tmp_path / "b", rows=TokenTable(nodes[1]))
    a.grant("viewer", ["cam1", "cam0", "cam0"])
    assert b.refresh_grants("viewer") == frozenset({"cam0", "cam1"}) == b.granted("viewer")
    # a node joining with its own files: what the shared state lacks is taken in, the rest wins
    local = TokenStore(tmp_path / "local")
    local.grant("viewer", ["cam9"])
    local.grant("investigator", ["cam2"])
    kept, _ = local.issue("viewer", None, 600.0, "officer")
    table = TokenTable(nodes[1])
    assert table.adopt(*local._rows.load()) == 2  # the token and investigator's grant
    a.grant("viewer", [])
    assert table.adopt(*local._rows.load()) == 0  # again: nothing; viewer's grant stays taken away
    b.refresh()
    assert b.granted("viewer") == frozenset() and b.grants() == {"investigator": ["cam2"]}
    assert b.check(kept).identity == "viewer"


def test_a_signed_request_is_accepted_once_across_nodes(nodes):
    first, second = SeenTable(nodes[0]), SeenTable(nodes[1])
    now = time.time()
    assert first.first_use(b"sig-1", now + 300, now)
    assert not second.first_use(b"sig-1", now + 300, now)  # replayed at another node
    assert second.first_use(b"sig-2", now + 300, now)
    assert first.first_use(b"sig-1", now + 700, now + 400)  # its window is over: forgotten
    assert SignatureChecker(seen=first)._seen is first


def _vault(tmp_path, name) -> VaultStore:
    return VaultStore.for_sealing(tmp_path / f"vault-{name}", KeyDirectory.init(tmp_path / f"keys-{name}"))


def test_policy_documents_are_content_addressed_and_copied_into_each_nodes_vault(postgres, nodes, tmp_path):
    a = Activations(tmp_path / "a.json", _vault(tmp_path, "a"), PolicyTable(nodes[0]))
    b = Activations(tmp_path / "b.json", _vault(tmp_path, "b"), PolicyTable(nodes[1]))
    version = a.store.store_policy(PIXELATE)
    a.share("cam0", version)
    assert a.rows.documents() == [version] and b.rows.document(version) == canonical(PIXELATE)
    assert hashlib.sha256(b.rows.document(version)).hexdigest() == version
    with pytest.raises(EscrowError):
        b.store.load_policy(version)  # not in b's vault until fetched
    assert b.fetch(version).model_dump(mode="json")["name"] == "pixelate"
    assert b.store.load_policy(version) == a.store.load_policy(version)
    assert b.restore(["cam0", "cam1"], lambda line: None).keys() == {"cam0"}
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()
    # a document altered in the database is refused, whatever its version says
    other = a.store.store_policy(FACES)
    a.rows.put_document(other, canonical({**FACES, "name": "altered"}))
    with pytest.raises(EscrowError, match="digest mismatch"):
        b.fetch(other)


def test_two_versions_activated_at_once_the_last_commit_wins_and_both_nodes_agree(postgres, nodes, tmp_path):
    conninfo = nodes[0].config.database
    tables = [PolicyTable(database) for database in nodes]
    vault = _vault(tmp_path, "a")
    versions = [vault.store_policy(FACES), vault.store_policy(PIXELATE)]
    for version in versions:
        tables[0].put_document(version, canonical(vault.load_policy(version)))
    seen = {"n1": [], "n2": []}
    reading = []

    def follower(name):
        reading.append(StateDatabase(_cluster(postgres, conninfo, name)))
        own = PolicyTable(reading[-1])
        return StateFollower(_cluster(postgres, conninfo, name),
                             {"activation": lambda camera: seen[name].append(own.activation(camera))}, lambda: None)

    followers = [follower("n1"), follower("n2")]
    for one in followers:
        one.start()
    try:
        for one in followers:
            assert one.following.wait(10)
        for _ in range(10):  # both nodes write at once, over and over
            start = threading.Barrier(2)

            def write(table, version, start=start):
                start.wait()
                table.put("cam0", version, {})

            threads = [threading.Thread(target=write, args=(t, v)) for t, v in zip(tables, versions, strict=True)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        (final,), = _rows(postgres, nodes[0], "SELECT version FROM policy_activations WHERE camera = 'cam0'")
        deadline = time.monotonic() + 5
        while not all(len(s) == 20 for s in seen.values()):
            assert time.monotonic() < deadline, seen
            time.sleep(0.02)
        assert seen["n1"][-1] == seen["n2"][-1] == final  # the last notification read what was committed last
    finally:
        for one in followers:
            one.close()
        for database in reading:
            database.close()


def test_with_the_database_gone_a_change_fails_whole_and_checks_go_on_from_memory(nodes, tmp_path):
    database = nodes[0]
    store = TokenStore(tmp_path / "a", rows=TokenTable(database))
    token, record = store.issue("viewer", None, 600.0, "officer")
    store.grant("viewer", ["cam0"])

    def unreachable():
        raise psycopg.OperationalError("connection refused (test)")

    database.close()
    database._connector = unreachable
    with pytest.raises(StateUnavailable, match="connection refused"):
        store.issue("viewer", None, 600.0, "officer")
    with pytest.raises(StateUnavailable):
        store.revoke(record.id)
    with pytest.raises(StateUnavailable):
        store.grant("viewer", [])
    assert store.tokens() == [record] and store.check(token) == record  # nothing changed here either
    assert store.granted("viewer") == frozenset({"cam0"})


def test_a_nodes_audit_log_is_copied_whole_and_caught_up_after_the_database_was_away(postgres, tmp_path):
    """Appends never wait for the database: the copy queues them, and while the database cannot be
    reached it drops the queue and, once it answers, copies from the file what the table lacks
    (entries of before the copy started too). The copy verifies as the log does; a line the table
    holds differently is reported, never overwritten."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    conninfo = postgres.database("audit")
    signer = Ed25519PrivateKey.generate()
    audit = AuditLog(tmp_path / "audit.log")
    audit.append("gateway", signer, "start", {"n": 0})  # before the copy exists: caught up at its start
    away = threading.Event()
    cluster = _cluster(postgres, conninfo)
    database = StateDatabase(cluster)
    database.set_up()
    table = AuditTable(database)

    def connect():
        if away.is_set():
            raise psycopg.OperationalError("connection refused (the test's outage)")
        return psycopg.connect(conninfo, password=postgres.password_file.read_text().strip(), autocommit=True)

    def copied(count):
        deadline = time.monotonic() + 30
        while table.last("n1") < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return table.last("n1")

    copy = AuditCopy(AuditTable(StateDatabase(cluster, connector=connect)), "n1", audit)
    copy.start()
    try:
        assert copied(1) == 1  # what the log held before the copy started
        away.set()  # the database goes away: its connections cut, new ones refused
        database.run(lambda cur: cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                             "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        for n in range(1, 6):
            began = time.monotonic()
            audit.append("gateway", signer, "tick", {"n": n})
            assert time.monotonic() - began < 1.0  # the database being away costs an append nothing
        deadline = time.monotonic() + 30
        while not copy.failures and time.monotonic() < deadline:
            time.sleep(0.05)
        assert copy.failures >= 1 and table.last("n1") == 1
        assert not copy.flush(0.5)  # a hand-back waits for the copy at most its timeout, and knows it is behind
        away.clear()  # it answers again: the copy catches up with the whole file
        assert copied(6) == 6
        audit.append("gateway", signer, "tick", {"n": 6})  # and goes on with new entries
        assert copy.flush(10) and table.last("n1") == 7  # flushed: the line just appended is in the table
        assert table.lines("n1") == audit.lines()
        assert verify_lines(table.lines("n1"), lambda actor: signer.public_key()) == 7
        assert table.nodes() == ["n1"]

        # rewritten in the database: verification names the entry, the copy reports and keeps it
        forged = audit.lines()[2].replace(b'"n":2', b'"n":9')
        database.run(lambda cur: cur.execute("UPDATE audit_entries SET line = %s WHERE node = 'n1' AND seq = 3",
                                             (forged,)))
        with pytest.raises(AuditError, match="entry 3"):
            verify_lines(table.lines("n1"), lambda actor: signer.public_key(), log="n1's copy")
        assert table.put("n1", [(3, audit.lines()[2])]) == [3] and table.lines("n1")[2] == forged
    finally:
        copy.close()
        database.close()


# --- the key directory's roster, shared -----------------------------------------------------------------

def test_the_roster_is_shared_verified_against_each_nodes_gateway_key_and_changes_queue_up(postgres, tmp_path):
    """Two copies of one key directory (one gateway key) follow the cluster's roster: a person added
    through one node is taken in by the other; a roster signed by another gateway key is refused
    and changes nothing; changes made through two nodes at once queue up on the cluster-wide lock
    and both stand; a change made apart at the same serial is kept aside, never silently lost."""
    import shutil

    from keys import DirectoryError, PrivateIdentity

    conninfo = postgres.database("roster")
    KeyDirectory.init(tmp_path / "k1")
    shutil.copytree(tmp_path / "k1", tmp_path / "k2")
    databases = [StateDatabase(_cluster(postgres, conninfo, n)) for n in ("n1", "n2")]
    for database in databases:
        database.set_up()
    r1, r2 = (SharedRoster(RosterTable(database), tmp_path / k, database.config)
              for database, k in zip(databases, ("k1", "k2"), strict=True))
    table = RosterTable(databases[0])

    def names(k):
        return sorted(i.name for i in KeyDirectory.open(tmp_path / k).identities)

    def person(name):
        return PrivateIdentity.generate(name, ["viewer"]).public

    try:
        assert (r1.sync(), r2.sync()) == ("pushed", "same")
        with r1.changing():
            KeyDirectory.open(tmp_path / "k1").add(person("ivan"))
        assert table.get()[0] == 1 and r2.sync() == "pulled" and names("k2") == ["ivan"]

        # a roster signed by another gateway key (someone who can write the database, not the key)
        other = KeyDirectory.init(tmp_path / "k3")
        other.add(person("mallory"))
        other.add(person("mallet"))
        before = (tmp_path / "k2" / "roster.json").read_bytes()
        serial, document = table.get()
        assert table.put(2, other.signed_roster(), serial)
        with pytest.raises(DirectoryError, match="not signed by this directory's gateway key"):
            r2.sync()
        assert (tmp_path / "k2" / "roster.json").read_bytes() == before
        assert table.put(serial, document, 2)

        # two nodes change the roster at once: the second waits for the first, and sees its change
        first_in = threading.Event()

        def slow_change():
            with r1.changing():
                first_in.set()
                KeyDirectory.open(tmp_path / "k1").add(person("olga"))
                time.sleep(0.4)

        thread = threading.Thread(target=slow_change)
        thread.start()
        assert first_in.wait(10)
        with r2.changing():
            assert "olga" in names("k2")  # taken in under the lock, before this change
            KeyDirectory.open(tmp_path / "k2").add(person("pia"))
        thread.join()
        assert r1.sync() == "pulled" and names("k1") == names("k2") == ["ivan", "olga", "pia"]

        # a change made apart (`keys add-identity` on n2's host) at the serial another node reached first
        KeyDirectory.open(tmp_path / "k2").add(person("quinn"))
        with r1.changing():
            KeyDirectory.open(tmp_path / "k1").add(person("rita"))
        assert r2.sync() == "diverged" and names("k2") == ["ivan", "olga", "pia", "rita"]
        (aside,) = (tmp_path / "k2").glob("roster.json.diverged-4-*")
        assert "quinn" in aside.read_text()
    finally:
        for database in databases:
            database.close()


# --- failed logins, counted over the nodes -------------------------------------------------------------

def test_an_addresss_failed_logins_count_on_every_node(postgres):
    """Guesses spread over two nodes meet the limit one gateway sets: 6 failures on n1 and 5 on n2
    (each under the limit of 10 alone) stop the address on both; another address is not touched."""
    from gateway.api.access import FailureLimiter

    conninfo = postgres.database("failures")
    databases = [StateDatabase(_cluster(postgres, conninfo, n)) for n in ("n1", "n2")]
    databases[0].set_up()
    limiters = [FailureLimiter(shared=FailureTable(database, database.config.node)) for database in databases]
    try:
        for limiter, count in zip(limiters, (6, 5), strict=True):
            for _ in range(count):
                limiter.failed("192.0.2.7", None, "bad token")
        limiters[0].failed("192.0.2.8", None, "bad token")
        assert all(limiter.retry_after("192.0.2.7") == 0 for limiter in limiters)  # not yet exchanged
        deadline = time.monotonic() + 10
        while not all(limiter.retry_after("192.0.2.7") > 0 for limiter in limiters) and time.monotonic() < deadline:
            time.sleep(0.05)
        waits = [limiter.retry_after("192.0.2.7") for limiter in limiters]
        assert all(0 < wait <= 60 for wait in waits), waits
        assert [limiter.retry_after("192.0.2.8") for limiter in limiters] == [0, 0]
    finally:
        for limiter in limiters:
            limiter.close()
