"""The local OpenBao server, with the real ``bao`` binary: first start, restart, a moved key, a busy port.

One server is shared by the module (its first start, the Raft bootstrap, takes ~8 s); each test
leaves it running and unsealed, as it found it.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from ports import free_ports

from gateway.openbao import LocalOpenBao, OpenBaoError

ROOT = Path(__file__).resolve().parents[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def bao_children() -> set[int]:
    """Our child ``bao`` processes, zombies included (a zombie keeps its /proc entry until reaped);
    not the session's dev-mode co-signer (conftest.py), nor the session's OpenBao cluster (its nodes'
    files are under a directory named ``openbao-cluster``), which run throughout."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)  # "pid (comm) state ppid ..."
            command = (entry / "cmdline").read_bytes().split(b"\0")  # empty for a zombie
        except (OSError, ValueError):
            continue
        if fields[0].endswith("(bao") and int(fields[1].split()[1]) == os.getpid() and b"-dev" not in command \
                and not any(b"/openbao-cluster/" in arg for arg in command):
            found.add(int(entry.name))
    return found


@dataclass
class Server:
    bao: LocalOpenBao
    root_token: str


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("openbao")
    port, cluster_port = free_ports(2)
    bao = LocalOpenBao(base / "bao", base / "secrets" / "unseal.key", port, cluster_port)
    token = bao.start()
    assert token is not None
    try:
        yield Server(bao, token)
    finally:
        bao.stop()
    assert port_is_free(port) and bao_children() == set()


def get(server: Server, path: str, token: str | None = None) -> httpx.Response:
    headers = {"X-Vault-Token": token} if token else {}
    return httpx.get(server.bao.address + path, headers=headers, timeout=5.0, trust_env=False)


def test_first_start_initialises_and_unseals(server):
    bao = server.bao
    assert stat.S_IMODE(bao.unseal_key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(bao.unseal_key_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(bao.directory.stat().st_mode) == 0o700
    assert get(server, "/v1/sys/health").status_code == 200
    assert get(server, "/v1/sys/seal-status").json()["sealed"] is False
    key = bao.unseal_key_file.read_text().strip()
    log = bao.log_file.read_text()
    assert key and server.root_token not in log and key not in log


def test_restart_unseals_from_the_key_file(server):
    server.bao.stop()
    server.bao.stop()  # idempotent
    assert server.bao.start() is None
    assert get(server, "/v1/sys/seal-status").json()["sealed"] is False
    assert get(server, "/v1/auth/token/lookup-self", server.root_token).status_code == 200


def test_restart_without_the_key_file_refuses_and_leaves_no_process(server):
    bao, moved = server.bao, server.bao.unseal_key_file.with_name("moved-away.key")
    bao.stop()
    bao.unseal_key_file.rename(moved)
    try:
        with pytest.raises(OpenBaoError, match="sealed") as raised:
            bao.start()
        assert str(bao.unseal_key_file) in str(raised.value)
        assert bao_children() == set() and port_is_free(bao.port) and port_is_free(bao.cluster_port)
    finally:
        moved.rename(bao.unseal_key_file)
    assert bao.start() is None


def test_a_second_server_on_the_same_directory_fails_and_is_reaped(server):
    running = bao_children()
    port, cluster_port = free_ports(2)
    second = LocalOpenBao(server.bao.directory, server.bao.unseal_key_file, port, cluster_port)
    with pytest.raises(OpenBaoError, match="exited"):
        second.start(timeout=20)
    assert bao_children() == running and port_is_free(port)
    assert get(server, "/v1/sys/health").status_code == 200


@pytest.mark.parametrize("busy", ["port", "cluster_port"])
def test_port_in_use(tmp_path, busy):
    port, cluster_port = free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port if busy == "port" else cluster_port))
        taken.listen()
        with pytest.raises(OpenBaoError, match="already in use"):
            LocalOpenBao(tmp_path / "bao", tmp_path / "unseal.key", port, cluster_port).start()
    assert not (tmp_path / "unseal.key").exists()


def test_a_server_whose_gateway_was_killed_ends_and_the_next_start_takes_its_ports(tmp_path):
    """``kill -9`` of the process that started the server (the OOM killer, a crash): the server ends
    too. Left running it held both ports, and the gateway's restart refused them ("already in use")
    until someone found and killed it. The next start on the same storage unseals it as usual."""
    port, cluster_port = free_ports(2)
    arguments = f"{str(tmp_path / 'bao')!r}, {str(tmp_path / 'unseal.key')!r}, {port}, {cluster_port}"
    script = ("import time; from gateway.openbao import LocalOpenBao\n"
              f"bao = LocalOpenBao({arguments}); bao.start(); print(bao.pid, flush=True); time.sleep(600)")
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}) as owner:
        try:
            server = int(owner.stdout.readline())
        finally:
            owner.kill()
    deadline = time.monotonic() + 30
    try:
        while _running(server):
            assert time.monotonic() < deadline, "the server outlived the process that started it"
            time.sleep(0.1)
    finally:
        if _running(server):
            os.kill(server, signal.SIGKILL)
    assert port_is_free(port) and port_is_free(cluster_port)
    bao = LocalOpenBao(tmp_path / "bao", tmp_path / "unseal.key", port, cluster_port)
    try:
        assert bao.start() is None  # initialised by the killed owner, unsealed from its key
    finally:
        bao.stop()


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process nobody has reaped yet counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
