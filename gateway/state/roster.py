"""The key directory's roster (who exists, with which roles and keys) shared by a cluster's nodes.

Every node keeps a copy of the key directory (the same ``gateway.key`` on each: an operator
copies it when adding a node) and reads people from its ``roster.json``, as a single gateway does;
the database keeps the newest signed roster (:class:`~.postgres.RosterTable`). :meth:`SharedRoster.sync`
puts the two in step: a newer roster in the database is taken in (once it verifies against this
node's gateway key: nobody who can only write the database can add a person), a newer one here
(a change made on this node, or with ``privacy-gateway keys`` on its host while it was down) is
put there. Everything reading the roster here (access control, the sealers) re-reads the file
when it changes, so a person enrolled, removed or revoked on any node counts on every node
within a second (each write is announced with ``NOTIFY``; :class:`~.follower.StateFollower`
calls :meth:`SharedRoster.sync`).

A change made through a node (the people API) holds a cluster-wide lock from reading the newest
roster to putting its own (:meth:`SharedRoster.changing`), so two nodes' changes queue up rather
than one undoing the other. Two rosters of one serial that differ (a ``keys`` command on a
node's host while another node changed the roster) cannot both stand: the database's wins, as
every other node already uses it, and this node's is kept beside it as
``roster.json.diverged-<serial>``, with an error saying to make that change again.

A node's own signing key (keys/nodes.py) enters the roster the same way, at the node's start
(:meth:`SharedRoster.certify`): under the lock, so that nodes started together each add theirs
to the newest roster and none is lost, and every node verifies every other's entries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg

from keys import DirectoryError, KeyDirectory, NodeSigner, write_durably

from ..cluster import connect
from ..config import Cluster
from .postgres import RosterTable, StateUnavailable

__all__ = ["SharedRoster"]

log = logging.getLogger(__name__)

#: the advisory lock held across one change of the roster made through a node
_ROSTER_LOCK = 0x70677273  # "pgrs"
_TRIES = 5  # a write that lost to another node's reads again; this many times at most


class SharedRoster:
    """This node's key directory at ``keys_dir`` kept in step with the cluster's roster."""

    def __init__(self, table: RosterTable, keys_dir: Path, config: Cluster) -> None:
        self.table, self.keys_dir, self.config = table, Path(keys_dir), config
        self._lock = threading.Lock()  # one sync at a time on this node (follower, API, start)

    def _local(self) -> tuple[int, bytes]:
        directory = KeyDirectory.open(self.keys_dir)
        return directory.serial, directory.signed_roster()

    def sync(self) -> str:
        """Put this node's roster and the database's in step; returns what was done: ``same``,
        ``pulled``, ``pushed`` or ``diverged``. Raises :class:`~.postgres.StateUnavailable` (the
        database) or :class:`keys.DirectoryError` (the database's roster does not verify here:
        nothing changed)."""
        with self._lock:
            for _ in range(_TRIES):
                serial, document = self._local()
                shared = self.table.get()
                if shared is None:
                    if self.table.put(serial, document, None):
                        return "pushed"
                    continue
                shared_serial, shared_document = shared
                if shared_document == document:
                    return "same"
                if shared_serial > serial:
                    KeyDirectory.adopt(self.keys_dir, shared_document)
                    log.info("key directory: took in the cluster's roster (serial %d, was %d)", shared_serial, serial)
                    return "pulled"
                if shared_serial < serial:
                    if self.table.put(serial, document, shared_serial):
                        log.info("key directory: this node's roster (serial %d) is now the cluster's", serial)
                        return "pushed"
                    continue
                self._diverged(serial, document, shared_document)
                return "diverged"
            raise StateUnavailable(f"the shared roster changed {_TRIES} times while this node read it; try again")

    def _diverged(self, serial: int, document: bytes, shared: bytes) -> None:
        aside = self.keys_dir / f"roster.json.diverged-{serial}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
        KeyDirectory.adopt(self.keys_dir, shared, newer=False)  # checked before anything is moved
        write_durably(aside, document, 0o600)
        log.error("key directory: this node's roster (serial %d) and the cluster's differ: two changes were made "
                  "apart. The cluster's is in force here too; this node's is kept as %s: make its change again "
                  "through the people API of any node", serial, aside)

    def certify(self, signer: NodeSigner) -> KeyDirectory:
        """Have this node's key certified in the cluster's roster (once; nothing is written when the
        roster certifies it already); returns the key directory as it then is. Raises
        :class:`keys.DirectoryError` if the key was revoked (the node must not start: its key file
        goes, a new one is made), :class:`~.postgres.StateUnavailable` (the database)."""
        def current() -> bool:
            keys = KeyDirectory.open(self.keys_dir).node_keys().get(signer.actor)
            return keys is not None and keys.current.signing == signer.public and keys.current.revoked is None

        self.sync()
        if not current():
            with self.changing():
                directory = KeyDirectory.open(self.keys_dir)
                record = directory.certify_node(signer.name, signer.public)
                log.info("key directory: node %s's signing key (fingerprint %s) certified", signer.name,
                         record.fingerprint)
        return KeyDirectory.open(self.keys_dir)

    @contextlib.contextmanager
    def changing(self) -> Iterator[None]:
        """Hold the cluster-wide roster lock around one change made on this node: the newest roster
        is taken in first, the changed one put in the database after (blocking; off the event loop).
        Raises :class:`~.postgres.StateUnavailable` if the lock or the database cannot be had."""
        try:
            connection = connect(self.config, autocommit=True)
        except psycopg.Error as exc:
            raise StateUnavailable(f"the shared roster (PostgreSQL): {type(exc).__name__}") from None
        try:
            try:
                connection.execute("SELECT pg_advisory_lock(%s)", (_ROSTER_LOCK,))
            except psycopg.Error as exc:
                raise StateUnavailable(f"the shared roster is being changed on another node ({type(exc).__name__}); "
                                       "try again") from None
            self.sync()
            yield
            try:
                self.sync()
            except (StateUnavailable, DirectoryError) as exc:  # kept here, put there at the next sync
                log.error("key directory: the change made here is not in the cluster's roster yet (%s); it is put "
                          "there at the next sync", exc)
        finally:
            connection.close()  # ends the session: the lock goes with it

