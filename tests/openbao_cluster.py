"""A real three-node OpenBao cluster on loopback (integrated Raft), for the scale-out escrow tests.

Each node is a ``bao server -config=nN.hcl`` process with its own API and cluster ports
(:func:`ports.free_ports`), Raft data directory and file audit device, and a
``retry_join`` block naming every node's API address. Node 1 is initialised over the HTTP API
with one key share; all three are unsealed with it; the two others join node 1 by themselves,
and :meth:`OpenBaoCluster.start` returns once ``sys/storage/raft/configuration`` lists three
voters. Then the cluster is set up as the gateway's co-signer (:func:`keys.cosigner.set_up`), as
``OpenBaoDev`` does for the dev-mode server.

Nodes can be killed (``SIGKILL``, as a crashed host) and started again, unsealed from the same
key: a restarted node rejoins from its own Raft data. Every process is killed at :meth:`stop`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from ports import free_ports

from gateway.openbao import find_binary
from keys.cosigner import CoSigner, set_up

#: the directory name every node's files live under (tests/test_openbao_local.py leaves these
#: session-long processes out when it counts its own children)
DIRECTORY = "openbao-cluster"
#: Raft's timing multiplier: 1 is the tightest (fastest leader election); OpenBao's default is 5
PERFORMANCE_MULTIPLIER = 1


@dataclass
class Node:
    name: str
    directory: Path
    port: int
    cluster_port: int
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.directory / f"{self.name}.hcl"

    @property
    def log(self) -> Path:
        return self.directory / "server.log"

    @property
    def audit_log(self) -> Path:
        return self.directory / "audit.log"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _get(address: str, path: str, token: str | None = None, timeout: float = 2.0) -> httpx.Response:
    headers = {"X-Vault-Token": token} if token else {}
    return httpx.get(f"{address}/v1/{path}", headers=headers, timeout=timeout, trust_env=False)


def _put(address: str, path: str, body: dict, timeout: float = 10.0) -> httpx.Response:
    return httpx.put(f"{address}/v1/{path}", json=body, timeout=timeout, trust_env=False)


class OpenBaoCluster:
    """Three ``bao`` servers forming one Raft cluster, set up as the gateway's co-signer."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root / DIRECTORY
        self.nodes: list[Node] = []
        for number in range(1, size + 1):
            port, cluster_port = free_ports(2, consecutive=True)
            self.nodes.append(Node(f"n{number}", self.root / f"n{number}", port, cluster_port))
        self.unseal_key = self.root_token = self.gateway_token = ""
        self.token_file = self.root / "gateway-token"

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    # --- the cluster's life ---------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            node.directory.mkdir(parents=True, mode=0o700)
            (node.directory / "data").mkdir(mode=0o700)
            node.config.write_text(self._config(node))
            self._spawn(node)
        first = self.nodes[0]
        self._wait(deadline, lambda: self._health(first) == 501, f"{first.name} to answer, uninitialised")
        reply = _put(first.address, "sys/init", {"secret_shares": 1, "secret_threshold": 1})
        reply.raise_for_status()
        self.unseal_key, self.root_token = reply.json()["keys_base64"][0], reply.json()["root_token"]
        self._unseal(first, deadline)
        self._wait(deadline, lambda: self._health(first) == 200, f"{first.name} to become active")
        # autopilot promotes a joined node to voter once it has been healthy this long (default 10 s)
        reply = httpx.post(f"{first.address}/v1/sys/storage/raft/autopilot/configuration", timeout=10,
                           json={"server_stabilization_time": "1s"}, headers={"X-Vault-Token": self.root_token})
        reply.raise_for_status()
        # each joining node's unseal waits for its join (retried every 2 s): unseal them side by side
        with ThreadPoolExecutor(len(self.nodes) - 1) as pool:
            for done in [pool.submit(self._unseal, node, deadline) for node in self.nodes[1:]]:
                done.result()
        self._wait(deadline, lambda: self.voters() == len(self.nodes), "every node to join as a voter")
        self._wait(deadline, lambda: all(self._health(n) in (200, 429) for n in self.nodes),
                   "every node to be active or standby")
        self.gateway_token = set_up(CoSigner(self.addresses, self.root_token), embedded=True)
        self.token_file.write_text(self.gateway_token + "\n")

    def stop(self) -> None:
        for node in self.nodes:
            self.kill(node)

    def kill(self, node: Node) -> None:
        """SIGKILL, as a host that dies: no step-down, no goodbye to the others."""
        if node.process is not None:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGKILL)
            node.process.wait(10)
            node.process = None

    def restart(self, node: Node, timeout: float = 60.0) -> None:
        """Start a killed node again on its own Raft data and unseal it; back once it serves again:
        a standby reports itself (429) before it can forward a request to the active node, so the
        wait is for an authenticated request through it. A node still running is left alone (a test
        that failed before it killed one restarts it)."""
        if node.running():
            return
        deadline = time.monotonic() + timeout
        self._spawn(node)
        self._unseal(node, deadline)
        self._wait(deadline, lambda: self._health(node) in (200, 429) and self._serves(node), f"{node.name} to rejoin")

    def leader(self, timeout: float = 60.0) -> Node:
        """The active node, as the running nodes agree on it (waits out an election)."""
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if not node.running():
                    continue
                try:
                    answer = _get(node.address, "sys/leader").json()
                except (httpx.HTTPError, ValueError):
                    continue
                for candidate in self.nodes:
                    if candidate.running() and answer.get("leader_address") == candidate.address \
                            and self._health(candidate) == 200:
                        return candidate
            if time.monotonic() > deadline:
                raise RuntimeError(f"no active node within {timeout:g} s")
            time.sleep(0.1)

    def voters(self) -> int:
        """Voters in the Raft configuration (asked of any running node), 0 if none can say."""
        for node in self.nodes:
            if not node.running():
                continue
            try:
                reply = _get(node.address, "sys/storage/raft/configuration", self.root_token)
                servers = reply.json()["data"]["config"]["servers"]
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                continue
            return sum(1 for server in servers if server.get("voter"))
        return 0

    # --- what the gateway is given ----------------------------------------------------------------

    def cosigner(self, addresses: list[str] | None = None) -> CoSigner:
        """The gateway's client (seals, never decrypts), knowing every node (or ``addresses``)."""
        return CoSigner(addresses or self.addresses, self.gateway_token)

    def config(self) -> dict:
        """The ``escrow`` section of a gateway configuration that uses this cluster."""
        return {"address": self.addresses, "token_file": str(self.token_file), "manage_access": True}

    # --- internals ------------------------------------------------------------------------------

    def _config(self, node: Node) -> str:
        joins = "".join(f"  retry_join {{\n    leader_api_addr = {json.dumps(n.address)}\n  }}\n"
                        for n in self.nodes if n is not node)
        return (f"storage \"raft\" {{\n  path = {json.dumps(str(node.directory / 'data'))}\n"
                f"  node_id = {json.dumps(node.name)}\n  performance_multiplier = {PERFORMANCE_MULTIPLIER}\n"
                # autopilot looks for joined nodes to promote to voters every second, not every 10 s
                "  autopilot_update_interval = \"500ms\"\n  autopilot_reconcile_interval = \"1s\"\n"
                f"{joins}}}\n"
                f"listener \"tcp\" {{\n  address = \"127.0.0.1:{node.port}\"\n"
                f"  cluster_address = \"127.0.0.1:{node.cluster_port}\"\n  tls_disable = true\n}}\n"
                f"api_addr = {json.dumps(node.address)}\n"
                f"cluster_addr = \"https://127.0.0.1:{node.cluster_port}\"\n"
                # no disable_mlock: OpenBao 2.x dropped mlock and warns about the key.
                # Standbys forward every request to the active node instead of reading their own copy,
                # which may lag: the audit checkpoints need read-after-write (check-and-set, rollbacks)
                "disable_standby_reads = true\n"
                # one audit device for the whole cluster (its config is kept in Raft, so it must read
                # the same on every node): a path relative to each node's own working directory
                f"audit \"file\" \"pg\" {{\n  options {{\n    file_path = {json.dumps(node.audit_log.name)}\n"
                "  }\n}\n")

    def _spawn(self, node: Node) -> None:
        with open(node.log, "ab") as log:
            node.process = subprocess.Popen([str(find_binary()), "server", f"-config={node.config}"],
                                            cwd=node.directory, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)

    def _unseal(self, node: Node, deadline: float) -> None:
        self._wait(deadline, lambda: self._health(node) in (501, 503), f"{node.name} to answer")
        while True:
            try:
                reply = _put(node.address, "sys/unseal", {"key": self.unseal_key})
                if reply.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            self._wait(deadline, lambda: False, f"{node.name} to take the unseal key", quiet=True)

    def _serves(self, node: Node) -> bool:
        """Whether ``node`` answers a request that needs the active node (itself, or forwarded to it)."""
        try:
            return _get(node.address, "sys/mounts", self.root_token).status_code == 200
        except httpx.HTTPError:
            return False

    def _health(self, node: Node) -> int:
        if not node.running():
            return 0
        try:
            return _get(node.address, "sys/health").status_code
        except httpx.HTTPError:
            return 0

    def _wait(self, deadline: float, done, what: str, quiet: bool = False) -> None:
        while not done():
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"{node.name} exited: {node.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n.name}\n{n.log.read_text()[-1500:]}" for n in self.nodes if n.log.exists())
                raise RuntimeError(f"waited in vain for {what}\n{tails}")
            time.sleep(0.1)
            if quiet:
                return
