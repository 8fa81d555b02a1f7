"""Signing keys per node, on two real `privacy-gateway serve` nodes sharing one PostgreSQL.

Both nodes start at once, each with a copy of the same key directory: each makes its own key
(``<data_dir>/node-<name>.key``, 0600) and certifies it in the shared roster under the cluster's
lock, so the database's roster ends up certifying both and each node's copy too. Each runs one
camera and signs its audit entries and segments as ``node:<name>``; any node verifies the other's
log (its copy in PostgreSQL). When one is killed, the other takes its camera over with a signed
hand-over naming the dead node's last seal of it (keys/handover.py), which verification follows;
once both are down, `audit verify` and `vault verify` pass for both.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import shutil
import stat

import psycopg
import pytest
from cluster_harness import ServeNode, small_clip, stop_all, wait_for
from serve_harness import FACES, add_people

from gateway.api.access import TokenStore
from gateway.cli.main import main
from keys import KeyDirectory, VaultStore

pytestmark = pytest.mark.realtime

CAMERAS = ("cam0", "cam1")


def _get(port, path, token):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw[:1] in (b"{", b"[") else raw
    except OSError:
        return None, None
    finally:
        connection.close()


class Node(ServeNode):
    def __init__(self, name, tmp, keys, access, clip, postgres, database, openbao):
        super().__init__(name, tmp)
        self.data = self.dir / "data"
        shutil.copytree(keys, self.data / "keys")
        shutil.copytree(access, self.data / "access")
        (self.dir / "faces.yaml").write_text(json.dumps({**FACES, "unmask": {"watermark": "optional"}}))
        self.config = {
            "cameras": {camera: {"source": str(clip), "policy": str(self.dir / "faces.yaml"), "holdback_ms": 1000,
                                 "renditions": ["h264"]} for camera in CAMERAS},
            "storage": {"data_dir": str(self.data), "recording_seconds": 2.0, "recording_preset": "ultrafast"},
            "listen": {"host": "127.0.0.1", "port": self.port}, "escrow": openbao.config(),
            "cluster": {"node": name, "url": self.url, "database": database,
                        "password_file": str(postgres.password_file), "capacity": 2, "lease_s": 3.0},
        }
        self.start(self.config)

    def audit(self):
        return [json.loads(line) for line in (self.data / "vault" / "audit.log").read_bytes().splitlines()]


@pytest.fixture(scope="module")
def cluster(postgres, openbao, data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nodekeys")
    clip = small_clip(data / "videos" / "short_hamilton_clip.mp4", tmp / "small.mp4")
    database = postgres.database("nodekeys")
    keys = tmp / "keys"
    add_people(keys, tmp / "people")
    store = TokenStore(tmp / "access")
    officer, _ = store.issue("officer", None, 3600.0, "test")
    nodes = [Node(name, tmp, keys, tmp / "access", clip, postgres, database, openbao) for name in ("n1", "n2")]
    try:
        def sealed(node):  # a seal entry of its own camera, signed by the node
            try:
                return any(e["action"] == "seal" for e in node.audit())
            except FileNotFoundError:
                return False

        wait_for(lambda: all(sealed(node) for node in nodes), 120, "a sealed recording on each node")
        wait_for(lambda: all(_get(node.port, "/health", officer)[0] in (200, 503) for node in nodes), 30,
                 "both nodes answering")
        yield nodes, officer, postgres, database
    finally:
        stop_all(nodes)


def _verified_on(node, officer):
    status, body = _get(node.port, "/api/audit/verify", officer)
    return body if status == 200 else None


def test_each_node_signs_with_its_own_certified_key_and_both_verify(cluster):
    nodes, officer, postgres, database = cluster
    with psycopg.connect(database, password=postgres.password_file.read_text().strip()) as connection:
        (document,) = connection.execute("SELECT document FROM key_roster").fetchone()
    shared = json.loads(bytes(document))["roster"]
    certified = {record["name"]: record for record in shared["nodes"]}
    assert set(certified) == {"n1", "n2"}, shared["nodes"]  # started at once: neither certification lost

    for node in nodes:
        key_file = node.data / f"node-{node.name}.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert not (node.data / "keys" / f"node-{node.name}.key").exists()  # never beside the shared gateway key
        # its own signatures: every entry it logged (after its start) and every segment it sealed
        actors = {e["actor"] for e in node.audit() if e["action"] in ("seal", "recorded", "take-over")}
        assert actors == {f"node:{node.name}"}, actors
        store = VaultStore.open(node.data / "vault", KeyDirectory.open(node.data / "keys"))
        signers = {store.segment(c, n).signer for c in store.cameras() for n in store.segment_numbers(c)}
        assert signers == {f"node:{node.name}"}, signers
        # and the other node verifies this one's log (its copy in PostgreSQL) with the certified key
        other = next(n for n in nodes if n is not node)
        verified = wait_for(lambda other=other: _verified_on(other, officer), 30,
                            "the audit logs verified on the other node")
        assert verified["valid"] and set(verified["nodes"]) == {"n1", "n2"}, verified

    # the two key pairs differ, and neither is the gateway key
    gateway = KeyDirectory.open(nodes[0].data / "keys").gateway_public
    assert len({certified["n1"]["signing"], certified["n2"]["signing"]}) == 2
    assert all(base64.b64decode(r["signing"]) != gateway for r in certified.values())


def test_a_take_over_is_a_signed_hand_over_from_the_dead_nodes_last_seal(cluster):
    nodes, officer = cluster[:2]
    dead, heir = nodes

    def sealed_and_copied():  # a camera the node to be killed runs, with a seal of it in the shared copy
        owns = (_get(dead.port, "/health", officer)[1] or {}).get("cluster", {}).get("owns", {})
        status, seen = _get(heir.port, f"/api/audit?node={dead.name}", officer)
        copied = {e["details"]["camera"] for e in (seen or {}).get("entries", []) if e["action"] == "seal"}
        return status == 200 and sorted(set(owns) & copied)

    camera = wait_for(sealed_and_copied, 60, "a seal of the dead node's camera copied to the database")[0]
    dead.process.kill()  # kill -9: it logs nothing more
    dead.process.wait(10)

    def took_over():  # (a camera handed back at the start, to even out the load, is a take-over too: "released")
        return [e for e in heir.audit() if e["action"] == "take-over" and e["details"]["camera"] == camera
                and not e["details"].get("released")]

    (entry,) = wait_for(took_over, 30, f"{heir.name} taking {camera} over")
    assert entry["actor"] == f"node:{heir.name}" and entry["details"]["previous"] == dead.name
    link = entry["details"]["handover"]
    assert link is not None, entry
    line = (dead.data / "vault" / "audit.log").read_bytes().splitlines()[link["seq"] - 1]
    handed = json.loads(line)
    assert handed["action"] == "seal" and handed["details"]["camera"] == camera
    assert hashlib.sha256(line).hexdigest() == link["line"] and handed["details"]["head"] == link["head"]

    verified = wait_for(lambda: _verified_on(heir, officer), 30, "the logs and the hand-over verified")
    assert verified["valid"] and verified["handovers"] >= 1, verified


def _rewritten_hand_over_fails(heir, cluster, config, capsys):
    """The entry handed over, rewritten in the database (by someone who may write it): the heir's
    `audit verify` fails (exit 1), naming the dead node's copy; put back, it passes again."""
    _, _, postgres, database = cluster
    (take,) = [e for e in heir.audit() if e["action"] == "take-over" and not e["details"].get("released")]
    seq = take["details"]["handover"]["seq"]
    password = postgres.password_file.read_text().strip()
    with psycopg.connect(database, password=password, autocommit=True) as connection:
        (line,) = connection.execute("SELECT line FROM audit_entries WHERE node = 'n1' AND seq = %s", (seq,)).fetchone()
        forged = bytes(line).replace(b'"head":"', b'"head":"0', 1)
        connection.execute("UPDATE audit_entries SET line = %s WHERE node = 'n1' AND seq = %s", (forged, seq))
        try:
            assert main(["audit", "verify", "--config", str(config)]) == 1
            assert "node n1's audit log" in capsys.readouterr().err
        finally:
            connection.execute("UPDATE audit_entries SET line = %s WHERE node = 'n1' AND seq = %s", (bytes(line), seq))
    assert main(["audit", "verify", "--config", str(config)]) == 0


def test_audit_and_vault_verify_pass_for_both_nodes_once_stopped(cluster, capsys):
    nodes = cluster[0]
    stop_all(nodes)
    capsys.readouterr()
    for node in nodes:
        config = node.dir / "gateway.yaml"
        assert main(["audit", "verify", "--config", str(config)]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "chain, signatures and checkpoints intact" in out
        if node is nodes[1]:  # the heir's log links to the dead node's, checked against its copy in PostgreSQL
            # (its own take-overs only: those of the dead node's log, e.g. of a camera handed back at the start,
            # are the dead node's to check)
            links = sum(bool(e["details"].get("handover")) for e in node.audit() if e["action"] == "take-over")
            assert f"{links} hand-over(s) checked against the previous owners' logs" in out and links >= 1, out
            _rewritten_hand_over_fails(node, cluster, config, capsys)
        assert main(["vault", "verify", "--config", str(config)]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "segments and" in out and " 0 segments" not in out, out
        if node is nodes[1]:  # the heir: its take-over printed as a gap that continues the dead node's entry
            assert "taken over from node n1, continuing its audit entry" in out, out
