"""HTTP connections under caps, and a deadline for each request head (what uvicorn lacks).

uvicorn answers requests but lets a connection that never sends a complete request head stay
open for as long as the client likes (its keep-alive timeout only runs after a response, and any
byte cancels it), and it counts connections only when a request arrives. :func:`listener_settings`
gives uvicorn's own settings (``timeout_keep_alive``, ``h11_max_incomplete_event_size``,
``limit_concurrency``) and its h11 protocol with three additions, per connection:

* **caps**: a :class:`~gateway.limits.Hold` taken when the connection is accepted, from the
  listener's :class:`~gateway.limits.Ledger` (``listen.max_connections``,
  ``listen.max_connections_per_address``; trusted proxies are not capped per address). Over the
  address's cap the connection is answered ``429`` and closed; at the global cap a connection
  that is waiting for a request head (a half-open one, or an idle keep-alive one) is closed to
  make room, the oldest of the address holding the most connections, and only if none is waiting is the new one answered ``503`` and closed.
* **a head deadline**: from the moment a connection is accepted, and again from the end of each
  response, the client has ``listen.head_timeout_s`` seconds to send a complete request head
  (request line and headers). Bytes that do not complete it do not extend it. Otherwise it is
  answered ``408`` and closed.
* the counts: open connections, refusals by cap, connections closed (``head_timeout``,
  ``evicted``) in the ledger, for ``/metrics``.

Refusals are written straight to the socket (no request was parsed, so no app runs) as a JSON
``{"error": ...}`` with ``Connection: close``. With TLS, a connection is seen once its handshake
is done; asyncio bounds the handshake itself (60 s).
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus

from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import Listen
from ..limits import RETRY_AFTER, Hold, Ledger, Refused

__all__ = ["listener_settings"]

log = logging.getLogger(__name__)


def listener_settings(listen: Listen, ledger: Ledger) -> dict:
    """``uvicorn.Config`` keyword arguments that put the listener's connections under ``listen``'s
    caps and head deadline, counted in ``ledger``."""
    guard = _Guard(ledger, listen.head_timeout_s)
    return {
        "http": type("GuardedH11Protocol", (_GuardedH11Protocol,), {"guard": guard}),
        "ws": "none",  # no WebSocket routes: an Upgrade must not hand the connection to another protocol
        "timeout_keep_alive": listen.keep_alive_s,
        "h11_max_incomplete_event_size": listen.max_head_bytes,  # a longer head is answered 400
        # uvicorn's own check, at each request, of open connections and running request tasks: set
        # above our cap, so it never refuses a request on a connection we admitted; it still bounds
        # request tasks that outlive their connection (a client that posts an offer and leaves)
        "limit_concurrency": 2 * listen.max_connections,
    }


class _Guard:
    """What the connections of one listener share: their ledger, the deadline, who waits for a head."""

    def __init__(self, ledger: Ledger, head_timeout: float) -> None:
        self.ledger, self.head_timeout = ledger, head_timeout
        self.waiting: dict[_GuardedH11Protocol, None] = {}  # oldest first: whom the global cap displaces

    def admit(self, peer: str) -> Hold:
        if self.ledger.refusal(peer) == self.ledger.resource and self.waiting:
            # room is made by the address that holds the most (a flood), its oldest waiting
            # connection first: a client with one connection is not displaced by someone else's many
            max(self.waiting, key=lambda waiting: self.ledger.held_from(waiting.peer)).drop("evicted")
        return self.ledger.take(peer)


def _raw_response(status: int, body: dict, headers: dict[str, str] | None = None) -> bytes:
    data = json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
             f"content-length: {len(data)}", "connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


class _GuardedH11Protocol(H11Protocol):
    guard: _Guard  # set on the subclass listener_settings makes

    _hold: Hold | None = None
    peer = "unknown"  # the client's address
    _deadline: asyncio.TimerHandle | None = None
    _awaited = None  # the request cycle that was current when the deadline was armed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = self.peer = str((transport.get_extra_info("peername") or ("unknown",))[0])
        try:
            self._hold = self.guard.admit(str(peer))
        except Refused as refused:  # not registered with uvicorn at all: answered and closed here
            log.debug("http %s: connection refused: %s", peer, refused)
            self.transport = transport
            transport.write(_raw_response(refused.http_status, {"error": str(refused), "limit": refused.limit},
                                          {"retry-after": str(RETRY_AFTER)}))
            transport.close()
            return
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is not None and self.cycle is not self._awaited:  # uvicorn began a request: the head is in
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._await_head()  # (unless a pipelined request has begun already)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hold is None:  # refused in connection_made
            return
        self._stop_waiting()
        self._hold.release()
        super().connection_lost(exc)

    # -- the deadline -----------------------------------------------------------------------------

    def _await_head(self) -> None:
        self._stop_waiting()
        self._awaited = self.cycle
        self.guard.waiting[self] = None
        self._deadline = self.loop.call_later(self.guard.head_timeout, self._head_late)

    def _stop_waiting(self) -> None:
        self.guard.waiting.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.transport.write(_raw_response(408, {"error": "no complete request head within "
                                                          f"{self.guard.head_timeout:g} s"}))
        self.drop("head_timeout", abort=False)

    def drop(self, why: str, abort: bool = True) -> None:
        """Close now (``abort``: without flushing), giving the place back at once; counted as ``why``."""
        self._stop_waiting()
        if self._hold is not None:
            self._hold.release()
        self.guard.ledger.closed[why] += 1
        log.debug("http %s: connection closed: %s", self.client[0] if self.client else "?", why)
        if abort:
            self.transport.abort()
        else:
            self.transport.close()
