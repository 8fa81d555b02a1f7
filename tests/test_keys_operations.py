"""What the command line runs, through keys' public API only: verify_vault, verify_audit, shred, recording_tracks.

Every damage kind is made on the files of a real local vault, the way someone with disk
access would, and must come back as an IntegrityError naming it with the words the command
line has always printed.
"""

import datetime as dt

import numpy as np
import pytest
from vault_files import key_file

from keys import (
    AuditError,
    AuditLog,
    EscrowError,
    Grant,
    IntegrityError,
    KeyDirectory,
    PrivateIdentity,
    Sealed,
    Sealer,
    Selection,
    TrackSummary,
    Unmask,
    UnmaskError,
    VaultError,
    VaultRef,
    recording_tracks,
    shred,
    verify_audit,
    verify_vault,
)
from keys.clips import ClipCoder
from keys.record import Placement
from keys.vault import SegmentHeader

GRANTS = {"face": Grant(("investigator",)), "plate": Grant(("investigator",))}
PIXELS = np.full((4, 4, 3), 9, dtype=np.uint8)
UTC = dt.UTC


def day(n: int) -> str:
    return f"2026-01-{n:02d}T00:00:00+00:00"


class World:
    """A key directory with one investigator and a vault: camera ``lobby`` sealed in three
    segments of 1 s (ending on 2, 3 and 4 January), camera ``door`` in one."""

    def __init__(self, root, sealing_store, policy=None):
        self.root = root
        self.directory = KeyDirectory.init(root / "keys")
        self.ivan = PrivateIdentity.generate("ivan", ["investigator"])
        self.directory.add(self.ivan.public)
        self.store = sealing_store(root / "vault", self.directory)
        self.policy = policy or {"version": 1}
        self.now = [day(1)]
        with self.sealer("lobby") as sealer:
            for frame in range(30):  # 10 frames a segment; track 1 in the first two, track 2 in the last
                self.now[0] = day(1 + frame // 10)
                track = 1 if frame < 20 else 2
                sealer.add(frame, frame * 100_000, [Sealed(track, "face", (frame, 2, 4, 4), PIXELS)])
            self.now[0] = day(4)
        self.lobby = sealer.ref
        with self.sealer("door") as sealer:
            sealer.add(0, 0, [Sealed(7, "face", (0, 0, 4, 4), PIXELS), Sealed(5, "plate", (5, 0, 4, 4), PIXELS)])
        self.door = sealer.ref

    def sealer(self, camera):
        return Sealer(self.store, self.directory.signer, camera, self.policy, GRANTS, self.directory.identities,
                      segment_seconds=1.0, clock=lambda: self.now[0])

    def path(self, *parts):
        return self.root.joinpath("vault", *parts)


@pytest.fixture()
def world(tmp_path, sealing_store):
    return World(tmp_path, sealing_store)


def actions(world):
    return [e["action"] for e in world.store.audit.entries()]


# --- verify_vault / verify_audit ------------------------------------------------------------------

def test_a_good_vault_verifies(world):
    report = verify_vault(world.store)
    assert report.cameras == ("door", "lobby")
    assert (report.segments, report.entries, report.partials) == (4, 2, {})
    assert verify_audit(world.store) == 2


def test_deleted_newest_segments_are_caught_against_the_log(world):
    """The chain itself stays whole when its newest segments go; the log's seal entry does not."""
    world.path("segments", "lobby", "00000003.pgv").unlink()
    world.path("segments", "lobby", "00000002.pgv").unlink()
    with pytest.raises(IntegrityError) as caught:
        verify_vault(world.store)
    assert str(caught.value) == ("camera 'lobby': segment 00000002.pgv is missing (the audit log records segments "
                                 "up to 00000003.pgv as sealed)")
    world.path("segments", "lobby", "00000001.pgv").unlink()  # and every other one
    for number in (2, 3):
        key_file(world.path("keys", "lobby"), number).unlink()
    with pytest.raises(IntegrityError, match=r"camera 'lobby': segment 00000001.pgv is missing \(the audit log"):
        verify_vault(world.store)


def test_a_segment_deleted_from_the_middle_breaks_the_chain(world):
    world.path("segments", "lobby", "00000002.pgv").unlink()
    with pytest.raises(IntegrityError, match="^camera 'lobby': 00000003.pgv: out of sequence"):
        verify_vault(world.store)


def test_missing_key_file_without_a_shred_entry(world):
    key_file(world.path("keys", "lobby"), 2).unlink()
    with pytest.raises(IntegrityError) as caught:
        verify_vault(world.store)
    assert str(caught.value) == "camera 'lobby': key file of 00000002.pgv is missing and no shred is logged"


def test_swapped_key_file(world):
    a, b = key_file(world.path("keys", "lobby"), 1), key_file(world.path("keys", "lobby"), 2)
    a.write_bytes(b.read_bytes())
    message = rf"^camera 'lobby': {a.name}: key file does not belong to its segment$"
    with pytest.raises(IntegrityError, match=message):
        verify_vault(world.store)


def test_tampered_audit_log(world):
    log = world.path("audit.log")
    lines = log.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace('"output":"written"', '"output":"failed"')
    log.write_text("".join(lines))
    for check in (verify_vault, verify_audit):
        with pytest.raises(IntegrityError) as caught:
            check(world.store)
        assert str(caught.value) == "audit log entry 1 (line 1): signature does not verify"
        assert isinstance(caught.value, EscrowError)


def test_verify_audit_without_a_log_and_verify_vault_without_one(tmp_path, sealing_store):
    directory = KeyDirectory.init(tmp_path / "keys")
    store = sealing_store(tmp_path / "vault", directory)
    assert not store.audit.exists()
    assert verify_audit(store) == 0  # nothing shows a log ever existed
    assert verify_vault(store).entries == 0
    (tmp_path / "vault" / "audit.log").mkdir()  # one that cannot be read
    with pytest.raises(IntegrityError, match="cannot read the audit log"):
        verify_audit(store)


def test_unfinished_segments_are_reported_not_damage(world):
    header_source = world.store.segment("lobby", 3).header
    with world.store.camera_lock("lobby"):
        header = SegmentHeader("lobby", 4, 1, header_source.policy_sha256, "crashed", day(5),
                               world.store.segment("lobby", 3).digest, vault=world.store.vault_id)
        world.store.open_segment(header, GRANTS, world.directory.identities, world.directory.signer).abort()
    assert verify_vault(world.store).partials == {"lobby": 1}
    with world.sealer("lobby") as again:  # sealing resumes: recovered and logged
        again.add(0, 0, [])
    assert verify_vault(world.store).partials == {} and actions(world)[-2:] == ["recover-segment", "seal"]
    recovered = world.store.segment("lobby", 4)
    assert recovered.recovered and recovered.ended > day(5)  # the header checkpoint's time, not the file's


def _as_partial(world, number: int, keep_records: int | None = None, edit=None) -> None:
    """Turn finished segment ``number`` back into a partial, as someone with the files could:
    the trailer cut off, optionally only the first records kept, optionally its bytes edited."""
    path = world.path("segments", "lobby", f"{number:08d}.pgv")
    data = path.read_bytes()
    segment = world.store.segment("lobby", number)
    trailer = data.rindex(b"PGVT")
    if keep_records is not None:
        trailer = data.index(segment.records[keep_records].to_bytes()) if keep_records < len(segment.records) \
            else trailer
    body = data[:trailer]
    if edit is not None:
        body = edit(body)
    path.unlink()
    world.path("segments", "lobby", f"{number:08d}.pgv.partial").write_bytes(body)


def test_a_sealed_segment_turned_back_into_a_partial_is_refused_reported_and_left(world):
    """Issue 13, attack 2: the last sealed segment made a partial again (one track dropped) is not re-signed."""
    _as_partial(world, 3, keep_records=0)
    partial = world.path("segments", "lobby", "00000003.pgv.partial")
    kept = partial.read_bytes()
    with pytest.raises(VaultError, match="records segment 3 as sealed.*sealing refused"):
        world.sealer("lobby")
    assert partial.read_bytes() == kept and actions(world)[-1] == "recover-refused"
    entry = world.store.audit.entries()[-1]["details"]
    assert entry["segment"] == 3 and "as sealed" in entry["reason"]
    with pytest.raises(IntegrityError, match="00000003.pgv is missing"):
        verify_vault(world.store)


def _next_partial(world, records: int):
    """A genuine crash: segment 4 of lobby written with ``records`` records, never finished."""
    source = world.store.segment("lobby", 3)
    with world.store.camera_lock("lobby"):
        header = SegmentHeader("lobby", 4, 1, source.header.policy_sha256, "crashed", day(5), source.digest,
                               vault=world.store.vault_id)
        writer = world.store.open_segment(header, GRANTS, world.directory.identities, world.directory.signer)
        codec, size, coded = ClipCoder("lossless").encode([PIXELS])
        for track in range(records):
            writer.add_clip(track, "face", (Placement(40 + track, 0, (0, 0, 4, 4)),), codec, size, coded,
                            (bytes(32), "vault:v1:test"))
        writer.abort()
    return world.path("segments", "lobby", "00000004.pgv.partial")


def test_a_partial_with_an_edited_header_is_refused(world):
    partial = _next_partial(world, 2)
    data = partial.read_bytes()
    policy = world.store.segment("lobby", 3).header.policy_sha256
    partial.write_bytes(data.replace(policy.encode(), world.store.store_policy({"version": 9}).encode(), 1))
    with pytest.raises(VaultError, match="header is not vouched for"):
        world.sealer("lobby")
    assert actions(world)[-1] == "recover-refused"


def test_only_what_the_checkpoints_vouch_for_is_recovered(world):
    partial = _next_partial(world, 3)
    data = bytearray(partial.read_bytes())
    data[data.rindex(b"PGR3") + 200] ^= 1  # the third record altered after it was written
    partial.write_bytes(bytes(data))
    with world.sealer("lobby") as again:
        again.add(0, 0, [])
    assert len(world.store.segment("lobby", 4).records) == 2 and actions(world)[-2:] == ["recover-segment", "seal"]
    assert world.store.audit.entries()[-2]["details"]["records"] == 2


def test_a_partial_that_does_not_continue_the_chain_is_refused(world):
    partial = _next_partial(world, 1)
    partial.rename(partial.with_name("00000005.pgv.partial"))
    with pytest.raises(VaultError, match="00000005.pgv.partial: says it is segment 4"):
        world.sealer("lobby")
    world.path("segments", "lobby", "00000005.pgv.partial").unlink()
    _next_partial(world, 1)  # segment 4, genuine; and a segment 5 that claims another predecessor
    with world.store.camera_lock("lobby"):
        header = SegmentHeader("lobby", 5, 1, world.store.segment("lobby", 3).header.policy_sha256, "x", day(6),
                               "0" * 64, vault=world.store.vault_id)
        world.store.open_segment(header, GRANTS, world.directory.identities, world.directory.signer).abort()
    with pytest.raises(VaultError, match="00000005.pgv.partial: does not continue the camera's chain"):
        world.sealer("lobby")
    assert world.store.segment("lobby", 4).recovered  # the genuine one before it was kept


def test_a_stale_partial_beside_its_finished_segment_is_discarded_silently(world):
    finished = world.path("segments", "lobby", "00000003.pgv")
    stale = world.path("segments", "lobby", "00000003.pgv.partial")
    stale.write_bytes(finished.read_bytes()[:100])  # a crash after the put, before the partial's removal
    assert verify_vault(world.store).partials == {}
    before = actions(world)
    with world.sealer("lobby") as again:
        again.add(0, 0, [])
    assert not stale.exists() and actions(world)[len(before):] == ["seal"]  # no recover-segment: nothing unfinished
    assert [s.number for s in world.store.verify_chain("lobby")] == [1, 2, 3, 4] and verify_vault(world.store)


# --- shred ----------------------------------------------------------------------------------------

def test_shred_before_a_cut_off_logs_first_then_deletes(world, monkeypatch):
    seen = []
    append = world.store.audit.append

    def watch(*args, **kwargs):
        seen.append([world.store.has_key_file("lobby", n) for n in (1, 2, 3)])  # at the moment of logging
        return append(*args, **kwargs)

    monkeypatch.setattr(world.store.audit, "append", watch)
    result = shred(world.store, world.directory.signer, before=dt.datetime(2026, 1, 3, tzinfo=UTC))
    assert seen == [[True, True, True]]
    assert result.segments == [("lobby", 1)]
    assert result.entry["action"] == "shred" and result.entry["actor"] == "gateway"
    assert result.entry["details"] == {"segments": [["lobby", 1]], "before": "2026-01-03T00:00:00+00:00"}
    assert [world.store.has_key_file("lobby", n) for n in (1, 2, 3)] == [False, True, True]
    assert not list(world.path("keys", "lobby").glob("00000001.*"))
    assert verify_vault(world.store).segments == 4  # shredded segments still verify; the shred is logged
    again = shred(world.store, world.directory.signer, before=dt.datetime(2026, 1, 3))  # naive: UTC
    assert again.segments == [] and again.entry is None and actions(world)[-1] == "shred" and len(seen) == 1


def test_unmask_of_a_shredded_segment_names_the_shred_entry(world):
    entry = shred(world.store, world.directory.signer, before=dt.datetime(2026, 1, 3, tzinfo=UTC)).entry
    message = rf"00000001.pgv of camera 'lobby' was crypto-shredded \(audit entry {entry['seq']}\)"
    with pytest.raises(UnmaskError, match=message):
        Unmask(world.store, world.lobby, Selection(tracks=frozenset({1})), [world.ivan])
    assert Unmask(world.store, world.lobby, Selection(tracks=frozenset({2})), [world.ivan]).selected == 10


def test_shred_expired_uses_each_policys_retention(tmp_path, sealing_store):
    world = World(tmp_path, sealing_store, policy={"version": 1, "retention_days": 1})
    now = dt.datetime(2026, 1, 4, 12, tzinfo=UTC)  # lobby's segments ended on 2, 3 and 4 January, door's on the 4th
    result = shred(world.store, world.directory.signer, expired=True, now=now)
    assert result.segments == [("lobby", 1), ("lobby", 2)]
    assert result.entry["details"]["expired_at"] == now.isoformat()
    assert "before" not in result.entry["details"]


def test_shred_expired_without_retention_shreds_nothing(world):
    result = shred(world.store, world.directory.signer, expired=True, now=dt.datetime(2999, 1, 1, tzinfo=UTC))
    assert result == type(result)([], None) and actions(world) == ["seal", "seal"]


def test_shred_that_cannot_log_shreds_nothing(world, tmp_path):
    (tmp_path / "gone").mkdir()
    world.store.audit = AuditLog(tmp_path / "gone")  # a log that cannot be written
    with pytest.raises(AuditError, match="cannot (read|write) the audit log .*; nothing shredded$"):
        shred(world.store, world.directory.signer, before=dt.datetime(2999, 1, 1, tzinfo=UTC))
    assert all(world.store.has_key_file(c, n) for c, n in (("lobby", 1), ("lobby", 2), ("lobby", 3), ("door", 1)))


def test_shred_needs_one_rule_and_refuses_while_a_camera_is_sealed(world):
    for kwargs in ({}, {"before": dt.datetime(2026, 1, 3, tzinfo=UTC), "expired": True}):
        with pytest.raises(ValueError, match="either a cut-off"):
            shred(world.store, world.directory.signer, **kwargs)
    with world.sealer("door"), pytest.raises(VaultError, match="being sealed by another process"):
        shred(world.store, world.directory.signer, before=dt.datetime(2999, 1, 1, tzinfo=UTC))
    assert world.store.has_key_file("lobby", 1)


# --- recording_tracks -----------------------------------------------------------------------------

def test_recording_tracks_lists_one_recordings_tracks_in_order(world):
    assert recording_tracks(world.store, world.lobby) == [
        TrackSummary("face", 1, 20, 0.0, 1.9, (0, 2, 4, 4), ((0.0, 1.9),)),
        TrackSummary("face", 2, 10, 2.0, 2.9, (20, 2, 4, 4), ((2.0, 2.9),)),
    ]
    # same first appearance: by class, then id
    assert [(t.cls, t.track) for t in recording_tracks(world.store, world.door)] == [("face", 7), ("plate", 5)]
    # another recording of the same camera, and an output that starts later in it
    shifted = VaultRef("lobby", world.lobby.recording, 10, 1_000_000)
    assert recording_tracks(world.store, shifted)[1] == TrackSummary("face", 2, 10, 1.0, 1.9, (20, 2, 4, 4),
                                                                     ((1.0, 1.9),))
    assert recording_tracks(world.store, VaultRef("lobby", "no-such-recording")) == []
    assert recording_tracks(world.store, VaultRef("attic", "x")) == []
