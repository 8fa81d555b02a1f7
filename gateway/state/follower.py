"""The thread that takes in what other nodes change in the shared state, within a second.

It ``LISTEN``s on :data:`~.postgres.CHANNEL` over its own connection and, for each notification
``<kind>:<id>``, calls the handler of that kind with the id; the handler reads the item back from
the tables (the payload is only a hint of where to look). Whenever it (re)connects it first
listens, then calls ``resync`` (read everything again), so nothing changed while it was away is
missed. Handlers run on this thread, one at a time, in commit order; a failing handler is logged
and the next notification handled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from ..cluster import connect
from ..config import Cluster
from .postgres import CHANNEL

log = logging.getLogger(__name__)

#: seconds between two log lines about the same database failure
_LOG_EVERY = 30.0


class StateFollower:
    """``handlers``: kind -> ``handler(id)``; ``resync()``: read everything again (after a (re)connection)."""

    def __init__(self, config: Cluster, handlers: dict[str, Callable[[str], None]],
                 resync: Callable[[], None]) -> None:
        self.config, self._handlers, self._resync = config, handlers, resync
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="state-follower", daemon=True)
        #: set once the first resync after a connection is done (tests wait for it)
        self.following = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _loop(self) -> None:
        logged = -_LOG_EVERY
        while not self._closing.is_set():
            try:
                with connect(self.config, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self._call("resync", self._resync)
                    self.following.set()
                    while not self._closing.is_set():
                        for notice in connection.notifies(timeout=0.5):
                            kind, _, item = notice.payload.partition(":")
                            handler = self._handlers.get(kind)
                            if handler is not None:
                                self._call(f"{kind} {item}", handler, item)
            except (psycopg.Error, OSError) as exc:
                self.following.clear()
                if time.monotonic() - logged >= _LOG_EVERY:
                    logged = time.monotonic()
                    log.warning("state: cannot follow the shared state (%s: %s); changes made on other nodes "
                                "reach this one once it can", type(exc).__name__, str(exc).strip()[:200])
                self._closing.wait(self.config.lease_s / 3)

    def _call(self, what: str, handler: Callable, *args) -> None:
        try:
            handler(*args)
        except OSError:
            raise  # the database went: reconnect, then read everything again
        except Exception:  # one bad item must not stop the following of the others
            log.exception("state: taking in %s failed", what)
