"""The state in PostgreSQL, shared by every node of a cluster (the same database as the camera leases).

The tables (schema version :data:`SCHEMA_VERSION` in ``state_schema_version``, created
idempotently by :meth:`StateDatabase.set_up`, apart from the leases' own ``schema_version``)::

    access_tokens       (id PK, identity, digest, rtsp_ha1, cameras[], issued, expires,
                         issued_by, revoked, parent)            hashes only, never a token
    camera_grants       (identity PK, cameras[])                an empty list: no grant
    signatures_seen     (signature PK, until)                   signed requests already accepted
    policy_documents    (version PK, document)                  canonical JSON, version = its SHA-256
    policy_activations  (camera PK, version -> policy_documents, activated_at)
    audit_entries       (node, seq, line; PK node, seq)        each node's audit log, copied line
                                                                for line (.audit); no NOTIFY
    key_roster          (one row: serial, document)             the key directory's signed roster (.roster)
    auth_failures       (node, address, at)                     failed logins, for every node's limiter
    camera_changes      (camera PK, revision, entry,            cameras added, edited, removed over HTTP:
                         policy -> policy_documents,            ``entry`` as ``cameras.json`` holds it
                         changed_by, changed_at)                (version 2)

Every change is one transaction that ends with ``NOTIFY`` on :data:`CHANNEL` (sent at commit)
with a small payload, ``<kind>:<id>`` (``token:<id>``, ``grant:<identity>``, ``activation:<camera>``,
``policy:<version>``, ``camera:<camera>``); a node that hears it reads that item back from the tables
(:mod:`.follower`), never from the payload. Concurrent writes of one row are serialised by its
row lock: the last to commit wins, and every node reads that one after its notification. A camera
change is the exception: it names the revision it was made on, and loses (:class:`CameraConflict`)
if another node's change committed first.

A token row holds the SHA-256 of the secret and the RFC 2617 HA1 that RTSP digest logins need:
the HA1 alone opens that token's RTSP feeds, so the database must be kept as private as the
files it replaces. Token and signature times are the nodes' clocks (as on one node); keep them in
step (NTP). Every call blocks (one connection, one statement at a time, each bounded by a third
of a lease): call them off the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import psycopg
from psycopg.types.json import Jsonb

from ..cluster import connect
from ..config import Cluster
from .base import PolicyRows, SeenSignatures, TokenRows

#: 2: ``camera_changes`` (a node of version 1 would ignore it and run cameras as its file says: refused)
SCHEMA_VERSION = 2
#: the ``LISTEN``/``NOTIFY`` channel of state changes (the leases have their own, ``privacy_gateway``)
CHANNEL = "privacy_gateway_state"
#: the advisory lock that serialises schema creation between nodes starting at once
_SCHEMA_LOCK = 0x70677374  # "pgst"
_TOKEN_COLUMNS = ("id", "identity", "digest", "rtsp_ha1", "cameras", "issued", "expires", "issued_by", "revoked",
                  "parent")
_SELECT_TOKEN = f"SELECT {', '.join(_TOKEN_COLUMNS)} FROM access_tokens"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS state_schema_version (version integer NOT NULL)",
    ("CREATE TABLE IF NOT EXISTS access_tokens (id text PRIMARY KEY, identity text NOT NULL, digest text NOT NULL, "
     "rtsp_ha1 text NOT NULL, cameras text[], issued double precision NOT NULL, expires double precision NOT NULL, "
     "issued_by text NOT NULL, revoked double precision, parent text)"),
    "CREATE TABLE IF NOT EXISTS camera_grants (identity text PRIMARY KEY, cameras text[] NOT NULL)",
    "CREATE TABLE IF NOT EXISTS signatures_seen (signature bytea PRIMARY KEY, until double precision NOT NULL)",
    ("CREATE TABLE IF NOT EXISTS policy_documents (version text PRIMARY KEY, document bytea NOT NULL, "
     "stored_at timestamptz NOT NULL DEFAULT now())"),
    ("CREATE TABLE IF NOT EXISTS policy_activations (camera text PRIMARY KEY, "
     "version text NOT NULL REFERENCES policy_documents (version), activated_at timestamptz NOT NULL DEFAULT now())"),
    # added within version 1: a node that does not know them neither writes nor reads them
    ("CREATE TABLE IF NOT EXISTS audit_entries (node text NOT NULL, seq bigint NOT NULL, line bytea NOT NULL, "
     "PRIMARY KEY (node, seq))"),
    ("CREATE TABLE IF NOT EXISTS key_roster (one boolean PRIMARY KEY DEFAULT true CHECK (one), serial bigint NOT NULL, "
     "document bytea NOT NULL, written_at timestamptz NOT NULL DEFAULT now())"),
    "CREATE TABLE IF NOT EXISTS auth_failures (node text NOT NULL, address text NOT NULL, at timestamptz NOT NULL)",
    "CREATE INDEX IF NOT EXISTS auth_failures_at ON auth_failures (at)",
    ("CREATE TABLE IF NOT EXISTS camera_changes (camera text PRIMARY KEY, revision bigint NOT NULL, entry jsonb NOT NULL, "
     "policy text REFERENCES policy_documents (version), changed_by text NOT NULL, "
     "changed_at timestamptz NOT NULL DEFAULT now())"),
)

T = TypeVar("T")


class StateUnavailable(OSError):
    """The shared state could not be read or written (the database unreachable, too slow, refusing)."""


class SchemaError(RuntimeError):
    """The database holds a state schema this gateway does not know (a newer version)."""


class CameraConflict(RuntimeError):
    """A camera change lost: another node changed that camera since this node took in its last change."""


class StateDatabase:
    """One connection to the cluster's database for the state, used by one thread at a time."""

    def __init__(self, config: Cluster, connector: Callable[[], psycopg.Connection] | None = None) -> None:
        self.config = config
        self._connector = connector or (lambda: connect(config))
        self._connection: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def run(self, work: Callable[[psycopg.Cursor], T]) -> T:
        """``work(cursor)`` in one transaction (committed when it returns); raises :class:`StateUnavailable`."""
        with self._lock:
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = self._connector()
                with self._connection.transaction(), self._connection.cursor() as cur:
                    return work(cur)
            except psycopg.Error as exc:
                if self._connection is not None and self._connection.broken:
                    self._connection.close()
                    self._connection = None
                raise StateUnavailable(f"the shared state (PostgreSQL): {type(exc).__name__}: "
                                       f"{str(exc).strip()[:200]}") from None

    def set_up(self) -> None:
        """Create the tables if missing (several nodes may start at once); raises :class:`SchemaError`
        if a newer version set the database up, :class:`StateUnavailable` if it cannot be reached."""

        def work(cur: psycopg.Cursor) -> int | None:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _SCHEMA:
                cur.execute(statement)
            cur.execute("SELECT max(version) FROM state_schema_version")
            (version,) = cur.fetchone()
            if version is None:
                cur.execute("INSERT INTO state_schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:  # nodes of the older version now refuse to start (tables added above)
                cur.execute("UPDATE state_schema_version SET version = %s", (SCHEMA_VERSION,))
            return version

        version = self.run(work)
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaError(f"the database's state schema is version {version}; this gateway knows up to "
                              f"{SCHEMA_VERSION}: upgrade this node")

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


def notify(cur: psycopg.Cursor, kind: str, item: str) -> None:
    """Tell every node, at commit, that ``item`` of ``kind`` changed (they read it back themselves)."""
    cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{kind}:{item}"))


def _token(row: tuple) -> dict:
    token = dict(zip(_TOKEN_COLUMNS, row, strict=True))
    return {**token, "cameras": None if token["cameras"] is None else list(token["cameras"])}


class TokenTable(TokenRows):
    """Tokens and grants in ``access_tokens`` and ``camera_grants``."""

    where = "the shared state (PostgreSQL: access_tokens, camera_grants)"

    def __init__(self, database: StateDatabase) -> None:
        self.database = database

    def load(self) -> tuple[list[dict], dict[str, list[str]]]:
        def work(cur):
            tokens = [_token(row) for row in cur.execute(_SELECT_TOKEN).fetchall()]
            grants = dict(cur.execute("SELECT identity, cameras FROM camera_grants "
                                      "WHERE cardinality(cameras) > 0").fetchall())
            return tokens, grants

        return self.database.run(work)

    def token(self, token_id: str) -> dict | None:
        row = self.database.run(lambda cur: cur.execute(f"{_SELECT_TOKEN} WHERE id = %s", (token_id,)).fetchone())
        return None if row is None else _token(row)

    def put_token(self, token: dict, kept: list[dict]) -> dict:
        def work(cur):
            # a token never changes but for its revocation, which is never undone (the earliest one stays)
            row = cur.execute(
                f"INSERT INTO access_tokens ({', '.join(_TOKEN_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_TOKEN_COLUMNS))}) "
                "ON CONFLICT (id) DO UPDATE SET revoked = COALESCE(access_tokens.revoked, excluded.revoked) "
                f"RETURNING {', '.join(_TOKEN_COLUMNS)}", [token[c] for c in _TOKEN_COLUMNS]).fetchone()
            # expired tokens are kept a day, to answer "expired" rather than "invalid", then forgotten
            cur.execute("DELETE FROM access_tokens WHERE expires < extract(epoch FROM now()) - 86400")
            notify(cur, "token", token["id"])
            return _token(row)

        return self.database.run(work)

    def grants_of(self, identity: str) -> list[str]:
        row = self.database.run(lambda cur: cur.execute("SELECT cameras FROM camera_grants WHERE identity = %s",
                                                        (identity,)).fetchone())
        return [] if row is None else list(row[0])

    def put_grant(self, identity: str, cameras: list[str], grants: dict[str, list[str]]) -> None:
        def work(cur):
            # kept even when empty: a grant taken away stays taken away (see adopt)
            cur.execute("INSERT INTO camera_grants (identity, cameras) VALUES (%s, %s) ON CONFLICT (identity) "
                        "DO UPDATE SET cameras = excluded.cameras", (identity, sorted(set(cameras))))
            notify(cur, "grant", identity)

        self.database.run(work)

    def adopt(self, tokens: list[dict], grants: dict[str, list[str]]) -> int:
        """Add a node's own tokens and grants (from its files) that the tables do not have yet: a
        gateway joining a cluster keeps its people's access. What the tables have wins (a token
        revoked, a grant changed or taken away there stays so). Returns how many rows were added."""

        def work(cur):
            added = 0
            for token in tokens:
                cur.execute(f"INSERT INTO access_tokens ({', '.join(_TOKEN_COLUMNS)}) VALUES "
                            f"({', '.join(['%s'] * len(_TOKEN_COLUMNS))}) ON CONFLICT (id) DO NOTHING",
                            [token.get(c) for c in _TOKEN_COLUMNS])
                if cur.rowcount:
                    notify(cur, "token", token["id"])  # nodes running already take it in
                    added += 1
            for identity, cameras in grants.items():
                cur.execute("INSERT INTO camera_grants (identity, cameras) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                            (identity, sorted(set(cameras))))
                if cur.rowcount:
                    notify(cur, "grant", identity)
                    added += 1
            return added

        return self.database.run(work)


class SeenTable(SeenSignatures):
    """Signatures already accepted, in ``signatures_seen``: a replay is refused at every node."""

    def __init__(self, database: StateDatabase) -> None:
        self.database = database

    def first_use(self, signature: bytes, until: float, now: float) -> bool:
        def work(cur):
            cur.execute("DELETE FROM signatures_seen WHERE until <= %s", (now,))
            return cur.execute("INSERT INTO signatures_seen (signature, until) VALUES (%s, %s) ON CONFLICT DO NOTHING "
                               "RETURNING signature", (signature, until)).fetchone() is not None

        return self.database.run(work)


class PolicyTable(PolicyRows):
    """Policy documents and per-camera activations in ``policy_documents`` and ``policy_activations``."""

    where = "the shared state (PostgreSQL: policy_activations)"
    shared = True

    def __init__(self, database: StateDatabase) -> None:
        self.database = database

    def load(self) -> dict[str, str]:
        return dict(self.database.run(lambda cur: cur.execute(
            "SELECT camera, version FROM policy_activations").fetchall()))

    def activation(self, camera: str) -> str | None:
        row = self.database.run(lambda cur: cur.execute("SELECT version FROM policy_activations WHERE camera = %s",
                                                        (camera,)).fetchone())
        return None if row is None else row[0]

    def put(self, camera: str, version: str | None, activations: dict[str, str]) -> None:
        def work(cur):
            if version is None:
                cur.execute("DELETE FROM policy_activations WHERE camera = %s", (camera,))
            else:
                cur.execute("INSERT INTO policy_activations (camera, version) VALUES (%s, %s) ON CONFLICT (camera) "
                            "DO UPDATE SET version = excluded.version, activated_at = now()", (camera, version))
            notify(cur, "activation", camera)

        self.database.run(work)

    def put_document(self, version: str, document: bytes) -> None:
        def work(cur):
            cur.execute("INSERT INTO policy_documents (version, document) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        (version, document))
            if cur.rowcount:
                notify(cur, "policy", version)

        self.database.run(work)

    def document(self, version: str) -> bytes | None:
        row = self.database.run(lambda cur: cur.execute("SELECT document FROM policy_documents WHERE version = %s",
                                                        (version,)).fetchone())
        return None if row is None else bytes(row[0])

    def documents(self) -> list[str]:
        return [v for (v,) in self.database.run(lambda cur: cur.execute(
            "SELECT version FROM policy_documents ORDER BY version").fetchall())]


class CameraTable:
    """Cameras added, edited and removed over HTTP on any node, a row per camera in ``camera_changes``:
    ``entry`` is what ``cameras.json`` holds for it on one node (:mod:`gateway.live.camera_changes`),
    ``revision`` counts its changes (a node changes a camera only at the revision it took in), and
    ``policy`` the version it names, whose document is in ``policy_documents``."""

    where = "the shared state (PostgreSQL: camera_changes)"

    def __init__(self, database: StateDatabase, node: str) -> None:
        self.database, self.node = database, node

    def load(self) -> dict[str, tuple[int, dict]]:
        """camera -> (revision, entry), for every camera changed over HTTP."""
        rows = self.database.run(lambda cur: cur.execute("SELECT camera, revision, entry FROM camera_changes").fetchall())
        return {camera: (revision, entry) for camera, revision, entry in rows}

    def entry(self, camera: str) -> tuple[int, dict] | None:
        """(revision, entry) of ``camera`` now (None: never changed over HTTP)."""
        row = self.database.run(lambda cur: cur.execute("SELECT revision, entry FROM camera_changes WHERE camera = %s",
                                                        (camera,)).fetchone())
        return None if row is None else (row[0], row[1])

    def put(self, camera: str, entry: dict, revision: int, document: bytes | None) -> int:
        """Keep ``entry`` for ``camera`` if its row is still at ``revision`` (0: no row yet), with the
        document of the policy it names (``document``, its canonical JSON) in the same transaction, and
        forget an activation over HTTP of that camera (the entry names the policy it runs, as on one
        node). Returns the new revision; raises :class:`CameraConflict` (nothing written) if another
        node changed the camera first, :class:`StateUnavailable`."""
        version = entry.get("policy")

        def work(cur: psycopg.Cursor) -> int:
            if document is not None:
                cur.execute("INSERT INTO policy_documents (version, document) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                            (version, document))
                if cur.rowcount:
                    notify(cur, "policy", version)
            if revision == 0:
                cur.execute("INSERT INTO camera_changes (camera, revision, entry, policy, changed_by) "
                            "VALUES (%s, 1, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING revision",
                            (camera, Jsonb(entry), version, self.node))
            else:  # a concurrent change holds the row lock; once it commits, the revision no longer matches
                cur.execute("UPDATE camera_changes SET revision = revision + 1, entry = %s, policy = %s, "
                            "changed_by = %s, changed_at = now() WHERE camera = %s AND revision = %s "
                            "RETURNING revision", (Jsonb(entry), version, self.node, camera, revision))
            row = cur.fetchone()
            if row is None:
                now = cur.execute("SELECT revision, changed_by FROM camera_changes WHERE camera = %s",
                                  (camera,)).fetchone()
                raise CameraConflict(f"changed on node {now[1]} meanwhile (revision {now[0]}; this node had "
                                     f"{revision or 'none'}): look at it again, then retry")
            cur.execute("DELETE FROM policy_activations WHERE camera = %s", (camera,))
            if cur.rowcount:
                notify(cur, "activation", camera)
            notify(cur, "camera", camera)
            return row[0]

        return self.database.run(work)


class AuditTable:
    """Every node's audit log, a row per entry in ``audit_entries``: the line exactly as the node's
    log holds it. A copy that adds no trust (whoever may write the table may rewrite it): readers
    verify each node's chain and signatures (:func:`keys.verify_lines`), and the heads stay
    checkpointed where no node can rewrite them (the co-signer, segments' trailers)."""

    def __init__(self, database: StateDatabase) -> None:
        self.database = database

    def put(self, node: str, entries: list[tuple[int, bytes]]) -> list[int]:
        """Copy ``(seq, line)`` entries of ``node``'s log; an entry already there is left as it is.
        Returns the seqs at which the table holds another line than the one given (rewritten)."""

        def work(cur):
            differs = []
            for seq, line in entries:
                cur.execute("INSERT INTO audit_entries (node, seq, line) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                            (node, seq, line))
                if not cur.rowcount:
                    (kept,) = cur.execute("SELECT line FROM audit_entries WHERE node = %s AND seq = %s",
                                          (node, seq)).fetchone()
                    if bytes(kept) != line:
                        differs.append(seq)
            return differs

        return self.database.run(work)

    def last(self, node: str) -> int:
        """The highest seq copied of ``node``'s log (0: none)."""
        (seq,) = self.database.run(lambda cur: cur.execute(
            "SELECT coalesce(max(seq), 0) FROM audit_entries WHERE node = %s", (node,)).fetchone())
        return int(seq)

    def nodes(self) -> list[str]:
        return [n for (n,) in self.database.run(lambda cur: cur.execute(
            "SELECT DISTINCT node FROM audit_entries ORDER BY node").fetchall())]

    def last_seal(self, node: str, camera: str) -> tuple[int, bytes] | None:
        """``(seq, line)`` of ``node``'s last ``seal`` entry of ``camera`` in the copy (None: none): what a
        take-over's hand-over names (keys/handover.py). The line is as copied: readers verify it."""
        row = self.database.run(lambda cur: cur.execute(
            "SELECT seq, line FROM audit_entries WHERE node = %s AND convert_from(line, 'UTF8')::jsonb ->> 'action' = "
            "'seal' AND convert_from(line, 'UTF8')::jsonb #>> '{details,camera}' = %s ORDER BY seq DESC LIMIT 1",
            (node, camera)).fetchone())
        return None if row is None else (int(row[0]), bytes(row[1]))

    def lines(self, node: str) -> list[bytes]:
        """``node``'s copied lines in seq order (a gap shows as a chain that does not verify)."""
        return [bytes(line) for (line,) in self.database.run(lambda cur: cur.execute(
            "SELECT line FROM audit_entries WHERE node = %s ORDER BY seq", (node,)).fetchall())]


class RosterTable:
    """The key directory's signed roster (``roster.json`` as written, signed by the gateway key the
    nodes share) in ``key_roster``'s one row. Whoever may write the table may put another document
    there, but no node takes one that does not verify against its own gateway key."""

    def __init__(self, database: StateDatabase) -> None:
        self.database = database

    def get(self) -> tuple[int, bytes] | None:
        row = self.database.run(lambda cur: cur.execute("SELECT serial, document FROM key_roster").fetchone())
        return None if row is None else (int(row[0]), bytes(row[1]))

    def put(self, serial: int, document: bytes, replaces: int | None) -> bool:
        """Keep ``document`` (its roster's ``serial``) if the table still holds serial ``replaces``
        (None: nothing yet); False if another node's write came first (read again)."""

        def work(cur):
            if replaces is None:
                cur.execute("INSERT INTO key_roster (serial, document) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                            (serial, document))
            else:
                cur.execute("UPDATE key_roster SET serial = %s, document = %s, written_at = now() WHERE serial = %s",
                            (serial, document, replaces))
            if cur.rowcount:
                notify(cur, "roster", str(serial))
            return bool(cur.rowcount)

        return self.database.run(work)


class FailureTable:
    """Failed logins in ``auth_failures``, so that an address's failures count on every node: spread
    over the nodes, guesses meet the same limit as on one gateway. Times are the database's."""

    def __init__(self, database: StateDatabase, node: str) -> None:
        self.database, self.node = database, node

    def add(self, addresses: list[str]) -> None:
        """Record one failure per entry of ``addresses`` (this node's), now."""

        def work(cur):
            cur.executemany("INSERT INTO auth_failures (node, address, at) VALUES (%s, %s, now())",
                            [(self.node, address) for address in addresses])

        self.database.run(work)

    def others(self, window: float) -> dict[str, tuple[int, float]]:
        """Other nodes' failures within the last ``window`` seconds, per address: (how many, seconds
        until the oldest of them leaves the window). Older rows are deleted on the way."""

        def work(cur):
            cur.execute("DELETE FROM auth_failures WHERE at < now() - make_interval(secs => %s)", (window,))
            cur.execute("SELECT address, count(*), %s - extract(epoch FROM now() - min(at)) FROM auth_failures "
                        "WHERE node <> %s GROUP BY address", (window, self.node))
            return {address: (int(count), max(0.0, float(left))) for address, count, left in cur.fetchall()}

        return self.database.run(work)
