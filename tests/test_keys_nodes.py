"""Signing keys per cluster node (keys/nodes.py): certified in the signed roster, used for audit
entries, segments, checkpoints and key files as ``node:<name>``, refused when uncertified, forged
or revoked (by time), and the gateway-signed format of a single gateway unchanged."""

import base64
import dataclasses
import hashlib
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from vault_files import key_file

from gateway.cli.main import main
from keys import (
    AuditError,
    DirectoryError,
    IntegrityError,
    KeyDirectory,
    NodeSigner,
    PrivateIdentity,
    VaultError,
    VaultStore,
    verify_audit,
    verify_vault,
)
from keys.clips import ClipCoder
from keys.identity import canonical
from keys.record import Placement
from keys.vault import SegmentHeader, read_segment
from keys.wrap import Grant

V1 = Path(__file__).resolve().parent / "data" / "vault-v1"
GRANTS = {"face": Grant(("investigator",))}
BEFORE, REVOKED, AFTER = "2026-12-01T10:00:00+00:00", "2026-12-01T12:00:00+00:00", "2026-12-01T13:00:00+00:00"


@pytest.fixture()
def directory(tmp_path):
    directory = KeyDirectory.init(tmp_path / "keys")
    directory.add(PrivateIdentity.generate("ivan", ["investigator"]).public)
    return directory


def node(tmp_path, name="gw-1") -> NodeSigner:
    return NodeSigner.load_or_create(tmp_path / f"node-{name}.key", name)


def certified(directory, signer, time=None):
    directory.certify_node(signer.name, signer.public, time)
    return KeyDirectory.open(directory.path)


def sealing_node(tmp_path, directory, time=None):
    """A node key made and certified (at ``time``), and a vault opened for sealing with the directory
    that certifies it: (signer, directory, store)."""
    signer = node(tmp_path)
    directory = certified(directory, signer, time)
    return signer, directory, VaultStore.for_sealing(tmp_path / "vault", directory)


def seal(store, signer, number=1, previous="0" * 64, ended=None):
    """One segment of camera lobby with one clip, signed by ``signer``; returns its digest."""
    header = SegmentHeader("lobby", number, 1, "ab" * 32, "rec-1", "2026-12-01T09:00:00+00:00", previous,
                           vault=store.vault_id)
    writer = store.open_segment(header, GRANTS, store.identities, signer)
    codec, size, coded = ClipCoder("lossless").encode([np.zeros((4, 4, 3), np.uint8)])
    writer.add_clip(1, "face", (Placement(0, 0, (1, 1, 4, 4)),), codec, size, coded,
                    (hashlib.sha256(b"share").digest(), "test:share"))
    return writer.close(ended=ended)


# --- the key file and the roster ----------------------------------------------------------------

def test_a_node_key_is_made_once_owner_only_and_kept(tmp_path):
    signer = node(tmp_path)
    path = tmp_path / "node-gw-1.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signer.actor == "node:gw-1"
    assert node(tmp_path).public == signer.public  # the second start reads the same key


def test_certified_in_the_signed_roster_and_refused_when_added_by_hand(tmp_path, directory):
    signer = node(tmp_path)
    directory = certified(directory, signer)
    (key,) = directory.nodes
    assert (key.name, key.signing, key.revoked) == ("gw-1", signer.public, None)
    assert directory.certify_node("gw-1", signer.public) == key  # again: nothing changes
    serial = directory.serial
    assert KeyDirectory.open(directory.path).serial == serial

    # a node record written into roster.json by someone without the gateway key breaks its signature
    other = node(tmp_path, "gw-2")
    document = json.loads((directory.path / "roster.json").read_text())
    document["roster"]["nodes"].append({**document["roster"]["nodes"][0], "name": "gw-2",
                                         "signing": base64.b64encode(other.public).decode()})
    (directory.path / "roster.json").write_text(json.dumps(document))
    with pytest.raises(DirectoryError, match="fails its signature check"):
        KeyDirectory.open(directory.path)


def test_a_key_is_one_nodes_and_a_revoked_one_is_never_certified_again(tmp_path, directory):
    signer = node(tmp_path)
    directory = certified(directory, signer)
    with pytest.raises(DirectoryError, match="already the key of node 'gw-1'"):
        directory.certify_node("gw-2", signer.public)
    person = PrivateIdentity.generate("mallory", ["investigator"]).public
    with pytest.raises(DirectoryError, match="the signing key of 'mallory' is the key of node 'gw-1'"):
        directory.add(dataclasses.replace(person, signing=signer.public))
    directory.revoke_node("gw-1")
    with pytest.raises(DirectoryError, match="never certified again"):
        directory.certify_node("gw-1", signer.public)
    with pytest.raises(DirectoryError, match="no certified key"):
        directory.revoke_node("gw-1")


# --- audit entries ----------------------------------------------------------------------------------

def test_entries_signed_by_a_certified_node_key_verify(tmp_path, directory):
    signer, directory, store = sealing_node(tmp_path, directory)
    store.audit.append("gateway", directory.signer, "start", {})
    store.audit.append(signer.actor, signer, "take-over", {"camera": "lobby"})
    assert store.audit.verify(store.key_of) == 2
    assert [e["actor"] for e in store.audit.entries()] == ["gateway", "node:gw-1"]
    # and read from the vault's copy of the roster, without the key directory
    assert verify_audit(VaultStore.open(tmp_path / "vault")) == 2


def test_an_entry_by_an_uncertified_node_key_is_refused(tmp_path, directory):
    signer = node(tmp_path)  # never certified
    store = VaultStore.for_sealing(tmp_path / "vault", directory)
    store.audit.append(signer.actor, signer, "seal", {})
    with pytest.raises(AuditError, match="signed by 'node:gw-1', whose key the key directory does not certify"):
        store.audit.verify(store.key_of)


def test_an_entry_claiming_a_node_but_signed_by_another_key_is_refused(tmp_path, directory):
    signer, directory, store = sealing_node(tmp_path, directory)
    store.audit.append(signer.actor, Ed25519PrivateKey.generate(), "seal", {})
    with pytest.raises(AuditError, match="entry 1 .*signature does not verify"):
        store.audit.verify(store.key_of)
    # nor does the gateway key pass as a node's
    other = tmp_path / "other"
    other.mkdir()
    log = VaultStore.for_sealing(other / "vault", directory).audit
    log.append(signer.actor, directory.signer, "seal", {})
    with pytest.raises(AuditError, match="signature does not verify"):
        log.verify(store.key_of)


def test_a_revoked_node_keys_earlier_entries_verify_and_later_ones_do_not(tmp_path, directory):
    signer, directory, store = sealing_node(tmp_path, directory, "2026-12-01T00:00:00+00:00")
    store.audit.append(signer.actor, signer, "seal", {"n": 1}, time=BEFORE)
    directory.revoke_node("gw-1", REVOKED)
    assert store.audit.verify(store.key_of) == 1  # re-read the changed roster: still verifies
    store.audit.append(signer.actor, signer, "seal", {"n": 2}, time=AFTER)
    with pytest.raises(AuditError, match=r"entry 2 .*signed by node 'gw-1' at 2026-12-01T13:00:00\+00:00, after its "
                                         r"key .* was revoked at 2026-12-01T12:00:00\+00:00"):
        store.audit.verify(store.key_of)


def test_a_replaced_node_key_keeps_its_past_and_the_new_key_signs_on(tmp_path, directory):
    old = node(tmp_path)
    directory = certified(directory, old, "2026-12-01T00:00:00+00:00")
    store = VaultStore.for_sealing(tmp_path / "vault", directory)
    store.audit.append(old.actor, old, "seal", {"n": 1}, time=BEFORE)
    (tmp_path / "node-gw-1.key").unlink()  # the node's disk was replaced: it makes a new key
    new = node(tmp_path)
    assert new.public != old.public
    directory.certify_node("gw-1", new.public, REVOKED)
    assert [k.reason for k in KeyDirectory.open(directory.path).nodes] == ["replaced", None]
    store.audit.append(new.actor, new, "seal", {"n": 2}, time=AFTER)
    assert store.audit.verify(store.key_of) == 2
    store.audit.append(old.actor, old, "seal", {"n": 3}, time=AFTER)
    with pytest.raises(AuditError, match="entry 3 .*was replaced at"):
        store.audit.verify(store.key_of)


def test_a_node_is_never_an_approver(tmp_path, directory):
    signer, directory, store = sealing_node(tmp_path, directory)
    details = {"camera": "lobby"}
    store.audit.append("gateway", directory.signer, "unmask",
                       {**details, "approvals": {signer.actor: signer.sign(canonical(details)).hex()}})
    with pytest.raises(AuditError, match="approval by unknown identity 'node:gw-1'"):
        store.audit.verify(store.key_of)


# --- segments, checkpoints and key files ---------------------------------------------------------------

def test_segments_sealed_by_a_node_name_it_and_verify(tmp_path, directory):
    signer, directory, store = sealing_node(tmp_path, directory)
    seal(store, signer)
    (segment,) = store.verify_chain("lobby")
    assert segment.signer == "node:gw-1"
    assert store.wraps("lobby", segment)  # the key file, signed by the node too
    store.audit.append(signer.actor, signer, "seal", {"camera": "lobby", "recording": "rec-1", "segments": [1, 1]})
    report = verify_vault(VaultStore.open(tmp_path / "vault"))  # the roster copy certifies the node
    assert (report.segments, report.entries) == (1, 1)


def test_a_segment_by_an_uncertified_or_forged_node_key_is_refused(tmp_path, directory):
    signer = node(tmp_path)
    store = VaultStore.for_sealing(tmp_path / "vault", directory)
    seal(store, signer)
    with pytest.raises(VaultError, match="00000001.pgv: signed by 'node:gw-1', whose key the key directory does not "
                                         "certify"):
        store.segment("lobby", 1)
    # certified now, but a segment claiming the node and signed with another key does not verify
    directory = certified(directory, signer)
    impostor = NodeSigner("gw-1", Ed25519PrivateKey.generate())
    other = VaultStore.for_sealing(tmp_path / "other", directory)
    seal(other, impostor)
    with pytest.raises(VaultError, match="signature does not verify"):
        other.segment("lobby", 1)


def test_a_segment_a_revoked_node_key_finished_after_its_revocation_is_refused(tmp_path, directory):
    signer, directory, store = sealing_node(tmp_path, directory, "2026-12-01T00:00:00+00:00")
    digest = seal(store, signer, 1, ended=BEFORE)
    seal(store, signer, 2, digest, ended=AFTER)
    directory.revoke_node("gw-1", REVOKED)
    opened = VaultStore.open(tmp_path / "vault", KeyDirectory.open(directory.path))
    assert opened.segment("lobby", 1).signer == "node:gw-1"
    with pytest.raises(VaultError, match="00000002.pgv: signed by node 'gw-1' at 2026-12-01T13:00:00\\+00:00, after"):
        opened.segment("lobby", 2)
    with pytest.raises(IntegrityError, match="revoked"):
        verify_vault(opened)


def test_a_partial_a_node_left_is_recovered_under_its_checkpoints(tmp_path, directory):
    signer, directory, store = sealing_node(tmp_path, directory)
    header = SegmentHeader("lobby", 1, 1, "ab" * 32, "rec-1", "2026-12-01T09:00:00+00:00", vault=store.vault_id)
    writer = store.open_segment(header, GRANTS, store.identities, signer)
    codec, size, coded = ClipCoder("lossless").encode([np.zeros((4, 4, 3), np.uint8)])
    writer.add_clip(1, "face", (Placement(0, 0, (1, 1, 4, 4)),), codec, size, coded,
                    (hashlib.sha256(b"share").digest(), "test:share"))
    writer.abort()  # a crash: no trailer
    assert store.recover_partial("lobby", 1, signer) == 1
    (segment,) = store.verify_chain("lobby")
    assert segment.recovered and segment.signer == "node:gw-1"


# --- a single gateway, and what the old scheme wrote ---------------------------------------------------

def test_a_single_gateways_segments_and_entries_are_as_before(tmp_path, directory):
    """No ``signer`` field where the gateway key signs: the bytes are what they always were."""
    store = VaultStore.for_sealing(tmp_path / "vault", directory)
    seal(store, directory.signer)
    (segment,) = store.verify_chain("lobby")
    data = (tmp_path / "vault" / "segments" / "lobby" / "00000001.pgv").read_bytes()
    keys = key_file(tmp_path / "vault" / "keys" / "lobby", 1).read_bytes()
    assert b"signer" not in data and b"signer" not in keys and segment.signer == "gateway"
    assert read_segment(data, "x", directory.signer.public_key()).digest == segment.digest
    assert "nodes" not in json.loads((directory.path / "roster.json").read_text())["roster"]


def test_a_vault_written_before_node_keys_still_verifies(tmp_path):
    shutil.copytree(V1, tmp_path / "v1")
    store = VaultStore.open(tmp_path / "v1" / "vault", KeyDirectory.open(tmp_path / "v1" / "keys"))
    report = verify_vault(store)
    assert report.segments > 0 and report.entries > 0
    assert {e["actor"] for e in store.audit.entries()} <= {"gateway", "ines"}


# --- the command ---------------------------------------------------------------------------------------

def test_keys_revoke_node_and_list(tmp_path, directory, capsys):
    signer = node(tmp_path)
    certified(directory, signer)
    assert main(["keys", "revoke-node", str(directory.path), "gw-1", "--at", REVOKED]) == 0
    assert "revoked from 2026-12-01T12:00:00" in capsys.readouterr().out
    (key,) = KeyDirectory.open(directory.path).nodes
    assert key.revoked == "2026-12-01T12:00:00.000000+00:00" and key.reason == "revoked"
    assert main(["keys", "list", str(directory.path)]) == 0
    assert "node:gw-1" in (out := capsys.readouterr().out) and "revoked 2026-12-01T12:00:00" in out
    assert main(["keys", "revoke-node", str(directory.path), "gw-1"]) == 2  # nothing left to revoke
    assert "no certified key" in capsys.readouterr().err
