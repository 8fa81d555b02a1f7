"""Loopback ports for the servers the tests start, chosen before the server binds them.

A port the kernel hands out for ``bind(0)`` comes from its ephemeral range, the same range every
outgoing connection takes its local port from: between choosing such a port and a server binding it
(a gateway node connects to PostgreSQL and OpenBao before it listens), a connection of any process
on the machine may take it, and the server then fails to start. These ports come from just below
that range instead, where only listeners bind, and none is handed out twice in one test session.
Under pytest-xdist each worker draws from its own slice of that span, so two workers never choose
the same port.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: how many ports below the ephemeral range to draw from
_SPAN = 12000
_handed_out: set[int] = set()


def _candidates() -> range | None:
    """Ports below the ephemeral range (None: the range leaves too little room; use the kernel's choice)."""
    try:
        low = int(_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    start = max(1024, low - _SPAN)
    if low - start < 1000:
        return None
    worker, workers = _worker()
    share = (low - start) // workers
    return range(start + worker * share, start + (worker + 1) * share)


def _worker() -> tuple[int, int]:
    """This process's pytest-xdist worker number and the number of workers ((0, 1) without xdist)."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return (int(name[2:]), count) if name.startswith("gw") and count > 1 else (0, 1)


def _bindable(port: int) -> socket.socket | None:
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", port))
    except OSError:
        probe.close()
        return None
    return probe


def free_ports(count: int = 1, consecutive: bool = False) -> list[int]:
    """``count`` distinct loopback ports free now (``consecutive``: ``p, p + 1, ...``)."""
    candidates = _candidates()
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            if candidates is None:
                probe = socket.socket()
                probe.bind(("127.0.0.1", 0))
                first = probe.getsockname()[1]
                probe.close()
            else:
                first = random.choice(candidates[: len(candidates) - (count if consecutive else 1)])
            wanted = range(first, first + count) if consecutive else (first,)
            if any(port in _handed_out for port in wanted):
                continue
            probes = [_bindable(port) for port in wanted]
            if all(probes):
                held += probes
            else:
                for probe in probes:
                    if probe is not None:
                        probe.close()
        ports = [probe.getsockname()[1] for probe in held]
    finally:
        for probe in held:
            probe.close()
    _handed_out.update(ports)
    return ports


def free_port() -> int:
    """One loopback port free now."""
    return free_ports(1)[0]
