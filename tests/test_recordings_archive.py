"""A finished recording of a node with a bucket: moved to the bucket first, logged after.

A node killed between the two must not leave an audit entry naming a file that only its own disk
holds (`vault verify --recordings` from another node would call it missing: the three-node site
test met that after a `kill -9`); a file no entry names is still restored by unmask.
"""

from __future__ import annotations

from types import SimpleNamespace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.live.runtime import Runtime
from gateway.storage import Recordings
from keys import AuditLog
from keys.objects import LocalObjects


def _node(tmp_path, objects):
    audit = AuditLog(tmp_path / "audit.log")
    path = tmp_path / "recordings" / "cam" / "r1.mp4"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"a finished recording")
    node = SimpleNamespace(archive=Recordings(tmp_path / "recordings", objects), store=SimpleNamespace(audit=audit),
                           signer=Ed25519PrivateKey.generate())
    return node, audit, path


def _logged(audit) -> list[str]:
    return [e["details"]["file"] for e in audit.entries() if e["action"] == "recorded"] if audit.exists() else []


def test_the_file_is_in_the_bucket_before_the_log_names_it(tmp_path):
    seen = []

    class Watched(LocalObjects):
        def put_file(self, name, path):
            seen.append(_logged(audit))  # what the log said when the upload began
            super().put_file(name, path)

    node, audit, path = _node(tmp_path, Watched(tmp_path / "bucket"))
    Runtime._recorded(node, path, SimpleNamespace(camera="cam", recording="r1"), 10)
    assert seen == [[]]
    assert _logged(audit) == ["r1.mp4"]
    assert node.archive.objects.exists("recordings/cam/r1.mp4") and not path.exists()


def test_a_file_the_bucket_refuses_stays_on_the_node_and_is_logged(tmp_path):
    class Refusing(LocalObjects):
        def put_file(self, name, path):
            raise OSError("the store does not answer")

    node, audit, path = _node(tmp_path, Refusing(tmp_path / "bucket"))
    Runtime._recorded(node, path, SimpleNamespace(camera="cam", recording="r1"), 10)
    assert _logged(audit) == ["r1.mp4"] and path.exists()
