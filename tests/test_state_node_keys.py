"""Node keys in the cluster's roster, in a real PostgreSQL (tests/postgres_support.py): nodes
certifying their keys at the same moment all end up in the shared roster, on every node; a node
certifies once; a revocation made with `keys revoke-node --config` reaches every node through the
database, and the revoked node cannot certify its key again (it does not start)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.config import Cluster
from gateway.state import RosterTable, SharedRoster, StateDatabase
from keys import DirectoryError, KeyDirectory, NodeSigner

NAMES = ("n1", "n2", "n3")
CLIP = Path(__file__).resolve().parent / "data" / "vault-v1" / "clip.mp4"


def _cluster(postgres, conninfo: str, node: str) -> Cluster:
    return Cluster(node=node, url=f"http://{node}.test:8080", database=conninfo,
                   password_file=postgres.password_file, lease_s=3.0)


@pytest.fixture
def cluster(postgres, tmp_path):
    """Three nodes, each with a copy of one key directory and its own node key, on one fresh database."""
    conninfo = postgres.database("nodekeys")
    KeyDirectory.init(tmp_path / "keys")
    nodes = {}
    for name in NAMES:
        shutil.copytree(tmp_path / "keys", tmp_path / name / "keys")
        database = StateDatabase(_cluster(postgres, conninfo, name))
        database.set_up()
        nodes[name] = (database, SharedRoster(RosterTable(database), tmp_path / name / "keys", database.config),
                       NodeSigner.load_or_create(tmp_path / name / f"node-{name}.key", name))
    yield nodes, conninfo
    for database, _, _ in nodes.values():
        database.close()


def _certified(tmp_path, name) -> dict[str, bytes]:
    return {k.name: k.signing for k in KeyDirectory.open(tmp_path / name / "keys").nodes if k.revoked is None}


def test_nodes_certifying_at_once_all_end_up_in_the_roster_of_every_node(cluster, tmp_path):
    nodes, _ = cluster
    start, failures = threading.Barrier(len(nodes)), []

    def certify(name):
        _, roster, signer = nodes[name]
        start.wait()
        try:
            roster.certify(signer)
        except Exception as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)

    threads = [threading.Thread(target=certify, args=(name,)) for name in NAMES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures
    expected = {name: signer.public for name, (_, _, signer) in nodes.items()}
    for name, (_, roster, _) in nodes.items():
        roster.sync()
        assert _certified(tmp_path, name) == expected, name
    serial = KeyDirectory.open(tmp_path / "n1" / "keys").serial
    assert serial == len(NAMES)  # one change per node, none lost, none repeated
    nodes["n1"][1].certify(nodes["n1"][2])  # a restart: nothing to change
    assert KeyDirectory.open(tmp_path / "n1" / "keys").serial == serial


def test_a_node_key_revoked_through_one_node_reaches_the_others_and_cannot_come_back(cluster, tmp_path, postgres):
    nodes, conninfo = cluster
    for name in NAMES:
        nodes[name][1].certify(nodes[name][2])
    (tmp_path / "faces.yaml").write_text(json.dumps({"name": "faces"}))
    config = tmp_path / "n2" / "gateway.yaml"
    config.write_text(json.dumps({
        "cameras": {"lobby": {"source": str(CLIP), "policy": str(tmp_path / "faces.yaml")}},
        "storage": {"data_dir": str(tmp_path / "n2"), "keys": str(tmp_path / "n2" / "keys")},
        "cluster": {"node": "n2", "url": "http://n2.test:8080", "database": conninfo,
                    "password_file": str(postgres.password_file)}}))
    assert main(["keys", "revoke-node", str(tmp_path / "n2" / "keys"), "n3", "--config", str(config)]) == 0
    shared = json.loads(RosterTable(nodes["n1"][0]).get()[1])["roster"]
    assert [r["name"] for r in shared["nodes"] if r.get("revoked")] == ["n3"]  # in the database at once
    assert nodes["n1"][1].sync() == "pulled" and set(_certified(tmp_path, "n1")) == {"n1", "n2"}
    with pytest.raises(DirectoryError, match="was revoked at .*never certified again"):
        nodes["n3"][1].certify(nodes["n3"][2])  # the node refuses to start with it
    # its key file removed, it makes and certifies a new key; the revoked one stays revoked
    (tmp_path / "n3" / "node-n3.key").unlink()
    fresh = NodeSigner.load_or_create(tmp_path / "n3" / "node-n3.key", "n3")
    nodes["n3"][1].certify(fresh)
    assert _certified(tmp_path, "n3")["n3"] == fresh.public
