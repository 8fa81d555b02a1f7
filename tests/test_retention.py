"""Retention on schedule (gateway/live/retention.py): expired segments shredded for good, expired
recordings deleted, a disk quota kept by deleting the oldest finished recordings, every run audited."""

import datetime as dt
import json
import os
import shutil
import time

import numpy as np
import pytest

from gateway.api.metrics import Metrics
from gateway.live.retention import Retention
from keys import CoSigner, Grant, KeyDirectory, PrivateIdentity, Sealed, Sealer
from keys.cosigner import segment_key
from redaction import parse_policy

DAY = 86_400


@pytest.fixture()
def world(tmp_path, sealing_store, openbao, short_clip):
    """A data directory: camera lobby sealed (one segment, retention 1 day) and four 2 s recordings of
    it, modified 10, 3, 2 and 0 days ago; the newest is still being written."""
    data = tmp_path / "data"
    directory = KeyDirectory.init(data / "keys")
    directory.add(PrivateIdentity.generate("ivan", ["investigator"]).public)
    store = sealing_store(data / "vault", directory)
    policy = {"version": 1, "retention_days": 1}
    with Sealer(store, directory.signer, "lobby", policy, {"face": Grant(("investigator",))},
                directory.identities) as sealer:
        sealer.add(0, 0, [Sealed(1, "face", (0, 0, 8, 8), np.zeros((8, 8, 3), np.uint8))])
    recordings = data / "recordings" / "lobby"
    recordings.mkdir(parents=True)
    now = time.time()
    files = []
    for age in (10, 3, 2, 0):
        path = recordings / f"rec-{age}.mp4"
        shutil.copy(short_clip, path)
        os.utime(path, (now - age * DAY, now - age * DAY))
        files.append(path)
    policies = {"lobby": parse_policy({"retention_days": 5})}
    return store, directory, data, files, policies, openbao


def _retention(world, quota=None):
    store, directory, data, files, policies, _ = world
    return Retention(store, directory.signer, data, data / "recordings", lambda: policies, lambda: {files[-1]},
                     period=3600, quota_bytes=quota)


def _entries(data):
    return [json.loads(line) for line in (data / "vault" / "audit.log").read_text().splitlines()]


def test_a_run_shreds_expired_segments_deletes_expired_recordings_and_is_audited(world):
    store, _, data, files, _, openbao = world
    retention = _retention(world)
    details = retention.run(now=dt.datetime.now(dt.UTC) + dt.timedelta(days=1.5))
    assert details["segments_shredded"] == 1 and details["expired"] == ["lobby/rec-10.mp4"]
    assert [p.exists() for p in files] == [False, True, True, True]
    assert not CoSigner(openbao.address, openbao.root).key_exists(segment_key(store.vault_id, "lobby", "face", 1))
    assert [e["action"] for e in _entries(data)][-3:] == ["seal", "shred", "retention"]
    assert retention.counts == {"runs": 1, "segments_shredded": 1, "recordings_expired": 1, "recordings_evicted": 0}
    assert retention.run()["segments_shredded"] == 0  # nothing twice
    metrics = Metrics(list, retention=lambda: dict(retention.counts)).render().decode()
    assert 'privacy_gateway_retention_actions_total{action="runs"} 2.0' in metrics


def test_over_quota_the_oldest_finished_recordings_go_never_the_open_one(world):
    _, _, data, files, _, _ = world
    size = files[0].stat().st_size
    others = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) - 4 * size
    retention = _retention(world, quota=others + int(1.5 * size))  # room for one and a half recordings
    details = retention.run()
    # the 10-day-old one expired (policy: 5 days); then the oldest finished ones until under quota
    assert details["expired"] == ["lobby/rec-10.mp4"] and details["evicted"] == ["lobby/rec-3.mp4", "lobby/rec-2.mp4"]
    assert [p.exists() for p in files] == [False, False, False, True]
    tiny = _retention(world, quota=1)  # nothing finished is left: the open recording stays, and that is logged
    assert tiny.run()["evicted"] == [] and files[-1].exists()


def test_a_run_shreds_while_the_camera_is_being_sealed_and_destroys_every_class_s_keys(world):
    """A running gateway's sealer holds the camera's chain lock: its own retention still shreds the
    finished, expired segments (a zone's transit key too); another process still may not."""
    store, directory, data, files, policies, openbao = world
    grants = {"face": Grant(("investigator",)), "zone:desk": Grant(("investigator",))}
    with Sealer(store, directory.signer, "lobby", {"version": 1, "retention_days": 1}, grants,
                directory.identities, segment_seconds=None) as sealer:
        sealer.add(0, 0, [Sealed(0, "zone:desk", (0, 0, 8, 8), np.zeros((8, 8, 3), np.uint8))])
        sealer.start_recording(1, 40_000)  # the first recording's segment closes; a new one starts
        sealer.add(1, 40_000, [Sealed(1, "face", (0, 0, 8, 8), np.zeros((8, 8, 3), np.uint8))])
        deadline = time.monotonic() + 30
        while 2 not in store.segment_numbers("lobby"):  # the sealing thread closes it in its own time
            assert time.monotonic() < deadline, "the first recording's segment never closed"
            time.sleep(0.05)
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1.5)
        with pytest.raises(Exception, match="being sealed by another process"):
            _retention(world).run(now=later)  # as `vault shred` from another process would be told
        store_, directory_, data_, _, _, _ = world
        running = Retention(store_, directory_.signer, data_, data_ / "recordings", lambda: policies,
                            lambda: {files[-1]}, period=3600, sealing=lambda: {"lobby"})
        details = running.run(now=later)
        assert details["segments_shredded"] == 2  # the world's segment and the zone's, both finished
    admin = CoSigner(openbao.address, openbao.root)
    for cls, number in (("face", 1), ("zone:desk", 2)):
        assert not admin.key_exists(segment_key(store.vault_id, "lobby", cls, number)), (cls, number)
    assert admin.key_exists(segment_key(store.vault_id, "lobby", "face", 3))  # the open one's: sealed later, kept
