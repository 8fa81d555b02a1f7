"""A real co-signer for the benchmarks: a production-mode OpenBao (Raft storage, file audit
device) started in a temporary directory, set up as the embedded default sets it up."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

from gateway.openbao import LocalOpenBao, write_credentials
from keys import CoSigner, set_up


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime, stime in clock ticks (USER_HZ = 100)


def free_port_pair() -> int:
    """A loopback port free now whose successor is free too (a server's API and Raft cluster ports):
    for the benchmarks' server."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


@contextlib.contextmanager
def local_cosigner(work: Path, keys_dir: Path | None = None) -> Iterator[tuple[CoSigner, LocalOpenBao]]:
    """The gateway's co-signer client and the server; with ``keys_dir``, its credentials are
    written there (what ``redact --keys`` reads)."""
    local = LocalOpenBao(work / "openbao", work / "openbao-unseal.key", free_port_pair())
    root = local.start()
    try:
        admin = CoSigner(local.address, root)
        token = set_up(admin, embedded=True)
        admin.revoke_self()
        if keys_dir is not None:
            write_credentials(keys_dir, local.address, token, manage_access=True)
        yield CoSigner(local.address, token), local
    finally:
        local.stop()
