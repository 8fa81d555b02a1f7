"""ICE: the local addresses the gateway gathers candidates on, and the remote addresses it talks to.

A peer's offer names its ICE candidates, and the gateway's ICE agent (aioice, under aiortc)
sends STUN connectivity checks from each of its own candidates to each of them. Left alone, it
gathers on every interface and checks whatever an offer names: an offer naming
``127.0.0.90`` or a host on some other network makes the gateway send STUN there. An
:class:`IcePolicy` (``webrtc`` in the configuration, docs/gateway.md) confines both ends:

* ``local_addresses``: host candidates are gathered on these addresses only
  (:func:`gateway.webrtc.peers.confine_ice`); ``None``: on every address aioice finds (every
  interface's, except loopback and scoped IPv6).
* ``remote_networks``: a candidate outside them is taken out of the offer before aiortc reads
  it (:func:`filter_offer`), and a connectivity check arriving from outside them is not answered
  (:func:`~gateway.webrtc.peers.confine_ice`), so no peer-reflexive candidate is learned there
  either; ``None``: any unicast address that is not loopback, link-local, multicast, unspecified
  or reserved (:func:`routable`).

Host names (mDNS ``*.local``, which browsers put in place of their addresses) are taken out too:
aioice would resolve them and send to whatever they resolve to, which no check here could see
first. Such a peer still connects: it sends checks to the gateway's candidates, from an address
that is checked like any other, and the gateway answers them (peer-reflexive candidates,
RFC 8445 section 7.3.1.3). So that the gateway keeps waiting for those checks, an offer that lost
candidates also loses its ``a=end-of-candidates``; the endpoints' connect timeouts end a session
that never connects. An offer whose candidates were all outside the networks, with no host name
among them, cannot connect and is refused (:attr:`FilteredOffer.error`).

IPv4-mapped IPv6 addresses (``::ffff:127.0.0.90``) are judged as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from aioice.ice import get_host_addresses
from aiortc import sdp

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: why a remote candidate was ignored (the ``reason`` label of the metric)
NETWORK, HOSTNAME, PEER_REFLEXIVE = "network", "hostname", "peer_reflexive"
_WILDCARDS = ("", "0.0.0.0", "::")
_LOOPBACK = ("127.0.0.1", "::1")  # aioice's enumeration leaves these out


def _address(text: str) -> Address | None:
    """The IP address ``text`` names (an IPv4-mapped IPv6 address as its IPv4 one); None if it names none."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def routable(address: Address) -> bool:
    """The default remote networks: a unicast address another host can be reached at (private
    networks included), so not loopback, link-local, multicast, unspecified or reserved."""
    return not (address.is_loopback or address.is_link_local or address.is_multicast
                or address.is_unspecified or address.is_reserved)


def host_addresses() -> tuple[str, ...]:
    """This host's addresses as aioice enumerates them, plus 127.0.0.1 and ::1."""
    return tuple(dict.fromkeys([*_LOOPBACK, *get_host_addresses(use_ipv4=True, use_ipv6=True)]))


def listen_addresses(host: str) -> tuple[str, ...] | None:
    """The addresses ``listen.host`` binds: None for a wildcard (every interface), else its
    address, or the ones a host name resolves to; ``ValueError`` if it resolves to none."""
    if host in _WILDCARDS:
        return None
    literal = _address(host)
    if literal is not None:
        return None if literal.is_unspecified else (str(literal),)
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ValueError(f"listen.host {host!r} does not resolve: {exc}") from None
    addresses = [_address(str(info[4][0]).partition("%")[0]) for info in found]
    if any(address is None or address.is_unspecified for address in addresses):
        return None
    return tuple(dict.fromkeys(str(address) for address in addresses))


@dataclass(frozen=True)
class IcePolicy:
    """Where the gateway's WebRTC peer connections gather candidates and whom they talk to (module doc)."""

    local_addresses: tuple[str, ...] | None = None
    remote_networks: tuple[Network, ...] | None = None

    @classmethod
    def for_listen(cls, host: str, local_addresses: Iterable[Address | str] | None = None,
                   remote_networks: Iterable[Network] | None = None) -> IcePolicy:
        """The policy of a gateway listening on ``host``, with what the configuration leaves out derived:

        * local addresses: those ``host`` binds (one address, or every interface for 0.0.0.0 and ::);
        * remote networks: when every local address is loopback, this host's own addresses
          (:func:`host_addresses`): such a gateway can only reach peers on this host, which name
          those; 127.0.0.0/8 beyond 127.0.0.1 is left out, as it only leads to other services here.
          Otherwise any routable unicast address (:func:`routable`).
        """
        local = (tuple(str(ipaddress.ip_address(a)) for a in local_addresses) if local_addresses is not None
                 else listen_addresses(host))
        if remote_networks is not None:
            networks = tuple(remote_networks)
        elif local is not None and all(ipaddress.ip_address(a).is_loopback for a in local):
            networks = tuple(ipaddress.ip_network(a) for a in host_addresses())
        else:
            networks = None
        return cls(local, networks)

    def allows(self, address: str) -> bool:
        """Whether a remote candidate at ``address`` (an IP address; a host name never) may be contacted."""
        ip = _address(address)
        if ip is None:
            return False
        if self.remote_networks is None:
            return routable(ip)
        return any(ip.version == network.version and ip in network for network in self.remote_networks)

    def describe(self) -> str:
        local = ", ".join(self.local_addresses) if self.local_addresses is not None else "every interface"
        remote = (", ".join(map(str, self.remote_networks)) if self.remote_networks is not None
                  else "routable unicast addresses")
        return f"WebRTC candidates on {local}; peers' candidates accepted in {remote}"


@dataclass(frozen=True)
class FilteredOffer:
    """An offer with the candidates an :class:`IcePolicy` does not allow taken out."""

    sdp: str
    kept: int
    ignored: Counter = field(default_factory=Counter)  # reason (NETWORK, HOSTNAME) -> candidates

    @property
    def error(self) -> str | None:
        """Why the offer cannot connect: every candidate it named is outside the allowed networks."""
        if self.kept or not self.ignored[NETWORK] or self.ignored[HOSTNAME]:
            return None
        count = self.ignored[NETWORK]
        return (f"no usable ICE candidate: the offer's {count} candidate{'s are' if count > 1 else ' is'} "
                "outside the networks the gateway accepts (webrtc.remote_networks)")


def filter_offer(offer: str, policy: IcePolicy) -> FilteredOffer:
    """``offer`` without the ``a=candidate`` lines ``policy`` refuses (and, if any went, without
    ``a=end-of-candidates``); every other line is kept as it was, line ends included.

    Lines are split and recognised exactly as aiortc's SDP parser does (``str.splitlines``, an
    ``a=`` line whose attribute is ``candidate``), so every candidate aiortc would read is judged
    here. The offer must have passed :mod:`gateway.webrtc.offers`' checks; a candidate line too
    short to name an address raises ``ValueError``."""
    lines, ends = offer.splitlines(), offer.splitlines(keepends=True)
    kept_lines, kept, ignored, end_of_candidates = [], 0, Counter(), []
    for line, with_end in zip(lines, ends):
        attribute, value = sdp.parse_attr(line) if line.startswith("a=") else (None, None)
        if attribute == "end-of-candidates":
            end_of_candidates.append(len(kept_lines))
        elif attribute == "candidate":
            fields = (value or "").split()
            if len(fields) < 8:
                raise ValueError("an ICE candidate line has fewer than 8 fields")
            host = fields[4]
            if policy.allows(host):
                kept += 1
            else:
                ignored[NETWORK if _address(host) is not None else HOSTNAME] += 1
                continue
        kept_lines.append(with_end)
    if ignored:
        kept_lines = [line for i, line in enumerate(kept_lines) if i not in end_of_candidates]
    return FilteredOffer("".join(kept_lines), kept, ignored)
