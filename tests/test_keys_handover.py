"""The hand-over of a take-over entry (keys/handover.py): it names the previous owner's last seal of the
camera, and checking it fails when that entry is missing, rewritten, cut or of something else."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys import AuditError, AuditLog, NodeSigner, check_handovers, handover_link


def _logs(tmp_path):
    """gw-1 sealed lobby twice (and hall once) then died; gw-2 took lobby over, its hand-over naming
    gw-1's last seal of lobby as the shared copy held it."""
    one, two = (NodeSigner(n, Ed25519PrivateKey.generate()) for n in ("gw-1", "gw-2"))
    first, second = AuditLog(tmp_path / "gw-1.log"), AuditLog(tmp_path / "gw-2.log")
    for camera, segments, head in (("lobby", [1, 1], "aa" * 32), ("lobby", [2, 3], "bb" * 32),
                                   ("hall", [1, 1], "cc" * 32)):
        first.append(one.actor, one, "seal", {"camera": camera, "recording": "r", "segments": segments,
                                              "head": head})
    lines = first.lines()
    link = handover_link(2, lines[1])
    assert link == {"seq": 2, "line": link["line"], "segment": 3, "head": "bb" * 32}
    second.append(two.actor, two, "take-over", {"camera": "lobby", "previous": "gw-1", "epoch": 2,
                                                "gap_s": 3.1, "handover": link})
    return {"gw-1": lines, "gw-2": second.lines()}


def test_a_take_over_links_to_the_previous_owners_last_seal_of_the_camera(tmp_path):
    assert check_handovers(_logs(tmp_path)) == 1


def test_only_the_hand_overs_of_the_logs_asked_for_are_checked(tmp_path):
    """Verifying one node's footage loads the logs its take-overs name; those logs' own hand-overs name
    others, which are not loaded: they are not this node's links to check."""
    logs = _logs(tmp_path)
    with pytest.raises(AuditError, match="not here to check"):
        check_handovers({"gw-2": logs["gw-2"]})
    assert check_handovers({"gw-2": logs["gw-2"]}, of=("gw-1",)) == 0
    assert check_handovers(logs, of=("gw-2",)) == 1


def test_a_take_over_without_a_hand_over_is_no_link(tmp_path):
    log = AuditLog(tmp_path / "old.log")
    log.append("gateway", Ed25519PrivateKey.generate(), "take-over", {"camera": "lobby", "previous": "gw-1"})
    assert check_handovers({"gw-2": log.lines()}) == 0


def test_the_entry_handed_over_rewritten_is_refused(tmp_path):
    logs = _logs(tmp_path)
    logs["gw-1"][1] = logs["gw-1"][1].replace(b'"bb', b'"ab', 1)
    with pytest.raises(AuditError, match="node gw-2's audit log entry 1: its hand-over names entry 2 of node gw-1's "
                                         "log, which differs"):
        check_handovers(logs)


def test_the_previous_owners_log_cut_before_the_entry_handed_over_is_refused(tmp_path):
    logs = _logs(tmp_path)
    logs["gw-1"] = logs["gw-1"][:1]
    with pytest.raises(AuditError, match="names entry 2 of node gw-1's log, which has 1 entries"):
        check_handovers(logs)
    del logs["gw-1"]
    with pytest.raises(AuditError, match="names the log of node 'gw-1', which is not here"):
        check_handovers(logs)


def test_a_hand_over_naming_another_cameras_seal_is_refused(tmp_path):
    logs = _logs(tmp_path)
    hall = handover_link(3, logs["gw-1"][2])  # gw-1's seal of hall, not of lobby
    signer = NodeSigner("gw-2", Ed25519PrivateKey.generate())
    log = AuditLog(tmp_path / "forged.log")
    log.append(signer.actor, signer, "take-over", {"camera": "lobby", "previous": "gw-1", "handover": hall})
    with pytest.raises(AuditError, match="which is not that node's seal of camera 'lobby' ending at segment 1"):
        check_handovers({"gw-1": logs["gw-1"], "gw-2": log.lines()})
