"""People's OpenBao access kept by concurrent writers: no update lost (keys/cosigner.py, grant_access).

Each camera a node starts rewrites, in every identity's one ACL policy, that camera's decrypt
rules and keeps the others'. Several nodes of a cluster, or a node and an officer's
``sync-access``, do this at the same moment; each writer here stands for one of them: its own
client (its own connections), one camera, all released at once. Real OpenBao servers throughout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from keys import CoSignerRefused, PrivateIdentity
from keys.cosigner import (
    _RULE,
    CoSigner,
    _mount_of,
    camera_prefix,
    grant_access,
    key_prefix,
    revoke_access,
)

VAULT = "0123456789abcdef"
WRITERS = 8
ROOT = Path(__file__).resolve().parent.parent

# one writer in another process: the same grant as a thread's, released at a given wall-clock time
_CHILD = """
import json, sys, threading, time
from keys.cosigner import CoSigner, camera_prefix, grant_access, key_prefix
from keys.identity import PublicIdentity
address, token, identity, start, cameras = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5:]
identity = PublicIdentity.from_json(json.loads(identity))
errors = []
def write(camera):
    admin = CoSigner(address, token)
    time.sleep(max(0.0, start - time.time()))
    try:
        grant_access(admin, identity, {key_prefix("%s", camera, "face")},
                     keep=lambda prefix: not camera_prefix(prefix, "%s", camera))
    except Exception as exc:
        errors.append(exc)
threads = [threading.Thread(target=write, args=(camera,)) for camera in cameras]
for t in threads: t.start()
for t in threads: t.join()
sys.exit(f"{len(errors)} writers failed: {errors}" if errors else 0)
"""


def _prefixes(address, root_token: str, identity) -> set[str]:
    """The decrypt prefixes ``identity``'s policy holds now, read with the root token."""
    reply = CoSigner(address, root_token)._call("GET", f"sys/policies/acl/{_mount_of(identity)}")
    return set(_RULE.findall(reply["data"]["policy"]))


def _race(addresses: list[str], token: str, identity, cameras: list[str]) -> list[BaseException]:
    """Every camera's face grant written by its own thread and client, all released together; the errors."""
    barrier, errors = threading.Barrier(len(cameras)), []

    def write(number: int, camera: str) -> None:
        # spread over the nodes: each client asks a different node first
        admin = CoSigner(addresses[number % len(addresses):] + addresses[:number % len(addresses)], token)
        barrier.wait()
        try:
            grant_access(admin, identity, {key_prefix(VAULT, camera, "face")},
                         keep=lambda prefix: not camera_prefix(prefix, VAULT, camera))
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n, c)) for n, c in enumerate(cameras)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def test_concurrent_grants_from_threads_lose_no_camera_and_keep_no_stale_rule(openbao):
    """Eight writers at once, each replacing its camera's rule: all eight are there; then again,
    each camera moved from faces to plates: every new rule is there and no old one is left (a lost
    removal would leave a person access that was taken away)."""
    ivan = PrivateIdentity.generate("ivan", ["investigator"])
    grant_access(CoSigner(openbao.address, openbao.gateway_token), ivan.public, set())  # his login, no camera yet
    cameras = [f"cam-{n}" for n in range(WRITERS)]
    for cls in ("face", "plate"):
        barrier, errors = threading.Barrier(WRITERS), []

        def write(camera: str, cls: str = cls, barrier: threading.Barrier = barrier, errors: list = errors) -> None:
            admin = CoSigner(openbao.address, openbao.gateway_token)
            barrier.wait()
            try:
                grant_access(admin, ivan.public, {key_prefix(VAULT, camera, cls)},
                             keep=lambda prefix: not camera_prefix(prefix, VAULT, camera))
            except BaseException as exc:  # noqa: BLE001 (reported by the test)
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(c,)) for c in cameras]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert _prefixes(openbao.address, openbao.root, ivan.public) == {key_prefix(VAULT, c, cls) for c in cameras}


def test_writers_enabling_a_new_persons_login_at_once_all_succeed(openbao):
    """Eight writers at once for a person nobody has granted anything yet: one enables her login,
    the others find it enabled ("path is already in use": success, not a refusal), all eight
    cameras are in her policy and she can log in."""
    vera = PrivateIdentity.generate("vera", ["investigator"])
    cameras = [f"cam-{n}" for n in range(WRITERS)]
    assert _race([openbao.address], openbao.gateway_token, vera.public, cameras) == []
    assert _prefixes(openbao.address, openbao.root, vera.public) == {key_prefix(VAULT, c, "face") for c in cameras}
    CoSigner(openbao.address).login(vera)


def test_concurrent_grants_from_two_processes_lose_no_camera(openbao):
    """Two processes (two nodes, or a node and an officer's CLI), four writers each, released at
    the same instant: all eight cameras end up in the policy."""
    olga = PrivateIdentity.generate("olga", ["investigator"])
    grant_access(CoSigner(openbao.address, openbao.gateway_token), olga.public, set())  # her login, no camera yet
    cameras = [f"cam-{n}" for n in range(WRITERS)]
    start = time.time() + 1.5  # both interpreters started and their clients made by then
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    children = [subprocess.Popen([sys.executable, "-c", _CHILD % (VAULT, VAULT), openbao.address,
                                  openbao.gateway_token, json.dumps(olga.public.to_json()), str(start), *half],
                                 env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
                for half in (cameras[:WRITERS // 2], cameras[WRITERS // 2:])]
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    assert _prefixes(openbao.address, openbao.root, olga.public) == {key_prefix(VAULT, c, "face") for c in cameras}


def test_concurrent_grants_through_every_node_of_a_cluster_lose_no_camera(openbao_cluster):
    """The writers' clients each ask a different node of a three-node OpenBao cluster first (the
    standbys forward to the active one): check-and-set holds across them."""
    nina = PrivateIdentity.generate("nina", ["investigator"])
    cameras = [f"cam-{n}" for n in range(WRITERS)]
    assert _race(openbao_cluster.addresses, openbao_cluster.gateway_token, nina.public, cameras) == []
    assert _prefixes(openbao_cluster.addresses, openbao_cluster.root_token, nina.public) == {key_prefix(VAULT, c, "face") for c in cameras}


def test_revoking_twice_at_once_is_no_error_and_leaves_nothing(openbao):
    """Two nodes revoking one person at the same moment: both succeed, her login and policy are gone."""
    eve = PrivateIdentity.generate("eve", ["investigator"])
    grant_access(CoSigner(openbao.address, openbao.gateway_token), eve.public, {key_prefix(VAULT, "lobby", "face")})
    barrier, errors = threading.Barrier(2), []

    def revoke() -> None:
        barrier.wait()
        try:
            revoke_access(CoSigner(openbao.address, openbao.gateway_token), eve.public)
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)

    threads = [threading.Thread(target=revoke) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    root = CoSigner(openbao.address, openbao.root)
    assert root._send("GET", f"sys/policies/acl/{_mount_of(eve.public)}").status_code == 404
    assert f"{_mount_of(eve.public)}/" not in root._call("GET", "sys/auth")["data"]


def test_a_refused_policy_write_is_a_refusal_not_a_retry(openbao):
    """A token that may not write people's policies is refused at once (no retrying a refusal as a conflict)."""
    root = CoSigner(openbao.address, openbao.root)
    weak = root._call("POST", "auth/token/create", {"policies": ["pg-gateway"], "no_default_policy": True})
    began = time.monotonic()
    with pytest.raises(CoSignerRefused):
        grant_access(CoSigner(openbao.address, weak["auth"]["client_token"]),
                     PrivateIdentity.generate("zed", ["investigator"]).public, {key_prefix(VAULT, "lobby", "face")})
    assert time.monotonic() - began < 2
