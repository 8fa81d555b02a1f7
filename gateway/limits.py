"""Caps on what network clients hold: connections and sessions, per address, per principal and in all.

Every entry point that lets a client hold something open (an RTSP or HTTP connection; an RTSP,
WHEP or WHIP session) takes a :class:`Hold` from its :class:`Ledger` before it commits anything
and gives it back when the thing ends. A ledger refuses a new hold when the client's principal,
its address or the whole entry point is at its :class:`Caps`, checked in that order, so a client
at its own cap is told so and never counts against everybody's. Each refusal is counted under
the name of the cap it hit (``sessions_per_principal``, ``connections_per_address``,
``connections`` ...): the ``limit`` label of ``privacy_gateway_limit_refusals_total``; the
connections an entry point closes itself (a deadline passed, an idle one displaced) are counted in
:attr:`Ledger.closed`.

Addresses are counted per IPv4 address and per IPv6 /64 (what one subscriber is usually given),
so a client cannot spread itself over its own prefix. Ledgers are used from the event loop only:
they take no locks.
"""

from __future__ import annotations

import collections
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RETRY_AFTER", "Caps", "Hold", "Ledger", "Refused", "address_key"]

IPV6_PREFIX = 64  # an IPv6 client is counted by its /64
RETRY_AFTER = 5  # seconds a refused client is told to wait (Retry-After)


def address_key(address: str) -> str:
    """What the per-address caps count: an IPv4 address, an IPv6 address's /64 (IPv4-mapped IPv6
    addresses as the IPv4 address), anything else (a Unix socket's name) as it is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


@dataclass(frozen=True)
class Caps:
    """Most holds in all, per address and (None: uncapped) per principal."""

    total: int
    per_address: int
    per_principal: int | None = None

    def __post_init__(self) -> None:
        for name in ("total", "per_address", "per_principal"):
            value = getattr(self, name)
            if value is None and name == "per_principal":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: {value!r} is not a positive integer")


class Refused(Exception):
    """A hold refused: ``limit`` names the cap (``sessions_per_address`` ...), the message says it in words."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit

    @property
    def everyone(self) -> bool:
        """Whether the entry point as a whole is full (a 503), rather than this client at its own cap (429, 453)."""
        return "_per_" not in self.limit

    @property
    def http_status(self) -> int:
        """503 Service Unavailable when everyone's cap is reached, 429 Too Many Requests for the client's own."""
        return 503 if self.everyone else 429


class Hold:
    """One thing a client holds; :meth:`release` (idempotent) gives its place back."""

    __slots__ = ("_ledger", "address", "principal")

    def __init__(self, ledger: Ledger, address: str, principal: str | None) -> None:
        self._ledger: Ledger | None = ledger
        self.address, self.principal = address, principal

    @property
    def released(self) -> bool:
        return self._ledger is None

    def release(self) -> None:
        ledger, self._ledger = self._ledger, None
        if ledger is not None:
            ledger._give_back(self)


class Ledger:
    """The holds of one kind (``resource``: connections or sessions) at one entry point (``entry``: rtsp, http ...).

    ``uncapped_address(address)``: addresses the per-address cap does not apply to (reverse proxies
    that carry many clients' connections); the total still does.
    """

    def __init__(self, entry: str, resource: str, caps: Caps,
                 uncapped_address: Callable[[str], bool] = lambda address: False) -> None:
        self.entry, self.resource, self.caps = entry, resource, caps
        self._uncapped = uncapped_address
        self.held = 0
        self._addresses: collections.Counter[str] = collections.Counter()
        self._principals: collections.Counter[str] = collections.Counter()
        #: refusals by the cap they hit (``connections``, ``connections_per_address`` ...), for /metrics
        self.refused: collections.Counter[str] = collections.Counter()
        #: holds the entry point ended itself, by reason (``auth_timeout``, ``evicted`` ...), for /metrics
        self.closed: collections.Counter[str] = collections.Counter()

    def refusal(self, address: str, principal: str | None = None) -> str | None:
        """The cap a new hold by ``address`` (and ``principal``) would pass, or None if it fits."""
        caps = self.caps
        if principal is not None and caps.per_principal is not None and self._principals[principal] >= caps.per_principal:
            return f"{self.resource}_per_principal"
        if self._addresses[address_key(address)] >= caps.per_address and not self._uncapped(address):
            return f"{self.resource}_per_address"
        if self.held >= caps.total:
            return self.resource
        return None

    def held_from(self, address: str) -> int:
        """How many of the resource ``address`` (its /64, for IPv6) holds now."""
        return self._addresses[address_key(address)]

    def take(self, address: str, principal: str | None = None) -> Hold:
        """A hold for ``address`` (and ``principal``); :class:`Refused`, counted, if a cap is reached."""
        limit = self.refusal(address, principal)
        if limit is not None:
            self.refused[limit] += 1
            raise Refused(limit, self._explain(limit, principal))
        self.held += 1
        self._addresses[address_key(address)] += 1
        if principal is not None:
            self._principals[principal] += 1
        return Hold(self, address, principal)

    def _explain(self, limit: str, principal: str | None) -> str:
        noun = self.resource
        if limit.endswith("_per_principal"):
            return f"too many {noun} for {principal} (at most {self.caps.per_principal})"
        if limit.endswith("_per_address"):
            return f"too many {noun} from your address (at most {self.caps.per_address})"
        return f"the gateway has all the {noun} it takes ({self.caps.total}); try again later"

    def _give_back(self, hold: Hold) -> None:
        self.held -= 1
        for counter, key in ((self._addresses, address_key(hold.address)), (self._principals, hold.principal)):
            if key is not None:
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]
