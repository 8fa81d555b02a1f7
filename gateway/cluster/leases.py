"""Camera leases in PostgreSQL: which node runs which camera, claimed, renewed and taken over.

The tables (schema version :data:`SCHEMA_VERSION`, created idempotently by :meth:`Leases.set_up`)::

    schema_version  (version)                                   one row
    gateway_nodes   (name PK, url, capacity, heartbeat,         a node's last round
                     rtsp_url)
    camera_leases   (camera PK, owner, expires_at, epoch,       owner NULL: free
                     released_by, released_at, released_epoch)

Every round (:meth:`Leases.round`) is one transaction on the database's clock (``now()``):
the node's heartbeat, the renewal of the leases it holds and has not let expire (of the cameras
it was given: a lease on any other camera lapses), then claims.
A lease whose ``expires_at`` has passed is free for anyone, its former owner included; claiming
locks the rows it takes (``FOR UPDATE SKIP LOCKED``), so two nodes never claim one camera, and
bumps ``epoch``: each tenure of a camera has its own number. Cameras are spread evenly: a node
claims while it holds no more than the least loaded other live node with room, never beyond its
``capacity`` (:func:`claim_limit`), so a camera runs wherever there is room; when no camera is free
and a node holds two more than such a node, it gives one back per round (:attr:`Round.shed`: stop
it, then :meth:`Leases.release`), which the less loaded node claims. A node is live while its
heartbeat is younger than a lease. Changes are announced with ``NOTIFY`` on :data:`CHANNEL` (sent
at commit), so the others run a round at once. A column added to the schema since (``rtsp_url``,
nullable) is added by :meth:`Leases.set_up` without a new version: nodes that do not know it leave
it alone.

This module only talks to the database (blocking, one connection, one thread); what a node does
with its leases (start, stop, fail closed) is :mod:`.node`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

SCHEMA_VERSION = 1
#: the ``LISTEN``/``NOTIFY`` channel of lease changes (the payload: the node that changed something)
CHANNEL = "privacy_gateway"
#: the advisory lock that serialises schema creation between nodes starting at once
_SCHEMA_LOCK = 0x70676777  # "pggw"

#: in the order a round takes the tables (gateway_nodes, then camera_leases): the ALTER and the
#: CREATE INDEX lock their table even when there is nothing to do, and a node starting while another
#: is in a round would otherwise deadlock with it
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)",
    ("CREATE TABLE IF NOT EXISTS gateway_nodes (name text PRIMARY KEY, url text NOT NULL, "
     "capacity integer NOT NULL, heartbeat timestamptz NOT NULL)"),
    "ALTER TABLE gateway_nodes ADD COLUMN IF NOT EXISTS rtsp_url text",
    ("CREATE TABLE IF NOT EXISTS camera_leases (camera text PRIMARY KEY, owner text, expires_at timestamptz, "
     "epoch bigint NOT NULL DEFAULT 0)"),
    "CREATE INDEX IF NOT EXISTS camera_leases_owner ON camera_leases (owner)",
    ("ALTER TABLE camera_leases ADD COLUMN IF NOT EXISTS released_by text, "
     "ADD COLUMN IF NOT EXISTS released_at timestamptz, ADD COLUMN IF NOT EXISTS released_epoch bigint"),
)


class SchemaError(RuntimeError):
    """The database holds a schema this gateway does not know (a newer version)."""


def least_loaded(others: dict[str, tuple[int, int]]) -> int | None:
    """The fewest cameras another live node with room holds (``others``: node -> (capacity, held));
    None if every other node is full, or there is none."""
    return min((held for capacity, held in others.values() if held < capacity), default=None)


def claim_limit(held: int, capacity: int, least: int | None) -> int:
    """How many more cameras a node holding ``held`` may claim: never beyond ``capacity``, and never
    more than one ahead of the least loaded other node with room (``least``, see :func:`least_loaded`)."""
    return max(0, min(capacity, capacity if least is None else least + 1) - held)


@dataclass(frozen=True)
class Round:
    """What one round left this node with."""

    #: camera -> epoch: the leases this node holds now, each valid for ``lease_s`` from the round's start
    held: dict[str, int]
    #: cameras claimed in this round (in ``held`` too)
    claimed: list[str] = field(default_factory=list)
    #: of those, the ones taken from another node whose lease had expired
    taken_over: list[str] = field(default_factory=list)
    #: a camera to hand back (another node with room holds two fewer): stop it, then release it
    shed: str | None = None
    #: camera -> the owner's base URL, for every camera another node holds a live lease on
    elsewhere: dict[str, str] = field(default_factory=dict)
    #: camera -> the owner's RTSP address (``rtsp://host:port``), for those of ``elsewhere`` whose owner serves RTSP
    rtsp_elsewhere: dict[str, str] = field(default_factory=dict)
    #: node -> cameras held, over the live nodes (this one included)
    load: dict[str, int] = field(default_factory=dict)
    #: camera -> (its previous owner, when that owner's lease expired or when it released the camera, when
    #: this node claimed it; the database's times), for every camera in ``taken_over`` and ``handed_over``:
    #: the gap in its video starts before the expiry, or at the release
    previous: dict[str, tuple[str, datetime, datetime]] = field(default_factory=dict)
    #: of ``claimed``, the ones another node had handed back (stopped, then released) in its last tenure
    handed_over: list[str] = field(default_factory=list)


class Leases:
    """One node's view of the lease table, over one connection (not thread-safe: one thread uses it)."""

    def __init__(self, connection: psycopg.Connection, node: str, url: str, capacity: int, lease_s: float,
                 rtsp_url: str | None = None) -> None:
        """``url``: where the other nodes send this node's viewers; ``rtsp_url``: its RTSP clients (None: no RTSP)."""
        self.connection, self.node, self.url, self.rtsp_url = connection, node, url, rtsp_url
        self.capacity, self.lease_s = capacity, lease_s

    def set_up(self) -> None:
        """Create the tables if missing (several nodes may start at once); raises :class:`SchemaError`
        if the database was set up by a newer version."""
        with self.connection.transaction(), self.connection.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _SCHEMA:
                cur.execute(statement)
            cur.execute("SELECT max(version) FROM schema_version")
            (version,) = cur.fetchone()
            if version is None:
                cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
            elif version > SCHEMA_VERSION:
                raise SchemaError(f"the database's schema is version {version}; this gateway knows up to "
                                  f"{SCHEMA_VERSION}: upgrade this node")

    def round(self, cameras: Collection[str], keep_out: Collection[str] = ()) -> Round:
        """Heartbeat, renew, claim and maybe shed, in one transaction, for the configured ``cameras``;
        ``keep_out``: cameras being handed back (renewed until released, never counted as wanted)."""
        lease = f"{self.lease_s} seconds"
        cameras = sorted(set(cameras))
        with self.connection.transaction(), self.connection.cursor() as cur:
            cur.execute("INSERT INTO gateway_nodes (name, url, rtsp_url, capacity, heartbeat) "
                        "VALUES (%s, %s, %s, %s, now()) ON CONFLICT (name) DO UPDATE SET url = excluded.url, "
                        "rtsp_url = excluded.rtsp_url, capacity = excluded.capacity, heartbeat = excluded.heartbeat",
                        (self.node, self.url, self.rtsp_url, self.capacity))
            cur.execute("INSERT INTO camera_leases (camera) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                        (cameras,))
            # only the cameras it may run: a camera removed (at run time) lapses, and its node stops it
            cur.execute("UPDATE camera_leases SET expires_at = now() + %s::interval "
                        "WHERE owner = %s AND expires_at > now() AND camera = ANY(%s) RETURNING camera, epoch",
                        (lease, self.node, cameras))
            held = {camera: epoch for camera, epoch in cur.fetchall()}
            cur.execute("SELECT n.name, n.capacity, count(l.camera) FROM gateway_nodes n "
                        "LEFT JOIN camera_leases l ON l.owner = n.name AND l.expires_at > now() "
                        "WHERE n.heartbeat > now() - %s::interval GROUP BY n.name, n.capacity", (lease,))
            load = {name: (capacity, count) for name, capacity, count in cur.fetchall() if name != self.node}
            least = least_loaded(load)
            room = claim_limit(len(held), self.capacity, least)
            claimed, taken_over, handed_over, previous = [], [], [], {}
            if room > 0:
                cur.execute("SELECT camera, owner, expires_at, now(), released_by, released_at, "
                            "released_epoch = epoch FROM camera_leases WHERE camera = ANY(%s) "
                            "AND (owner IS NULL OR expires_at IS NULL OR expires_at <= now()) "
                            "ORDER BY camera LIMIT %s FOR UPDATE SKIP LOCKED", (cameras, room))
                for camera, owner, expired_at, now, released_by, released_at, this_tenure in cur.fetchall():
                    cur.execute("UPDATE camera_leases SET owner = %s, expires_at = now() + %s::interval, "
                                "epoch = epoch + 1 WHERE camera = %s RETURNING epoch", (self.node, lease, camera))
                    held[camera] = cur.fetchone()[0]
                    claimed.append(camera)
                    if owner is not None and owner != self.node:
                        taken_over.append(camera)
                        previous[camera] = (owner, expired_at, now)
                    elif owner is None and this_tenure and released_by not in (None, self.node):
                        handed_over.append(camera)
                        previous[camera] = (released_by, released_at, now)
            cur.execute("SELECT count(*) FROM camera_leases WHERE camera = ANY(%s) "
                        "AND (owner IS NULL OR expires_at IS NULL OR expires_at <= now())", (cameras,))
            free = cur.fetchone()[0]
            keeping = sorted(set(held) - set(keep_out))
            shed = keeping[-1] if not claimed and not free and least is not None and len(keeping) > least + 1 else None
            if claimed:
                cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.node))
            cur.execute("SELECT l.camera, n.url, n.rtsp_url FROM camera_leases l JOIN gateway_nodes n "
                        "ON n.name = l.owner WHERE l.owner <> %s AND l.expires_at > now()", (self.node,))
            owners = cur.fetchall()
        return Round(held, claimed, taken_over, shed, {camera: url for camera, url, _ in owners},
                     {camera: rtsp for camera, _, rtsp in owners if rtsp is not None},
                     {self.node: len(held), **{name: count for name, (_, count) in load.items()}}, previous,
                     handed_over)

    def release(self, cameras: Collection[str]) -> None:
        """Hand ``cameras`` back (this node has stopped them): free at once, and the others told."""
        if not cameras:
            return
        with self.connection.transaction(), self.connection.cursor() as cur:
            cur.execute("UPDATE camera_leases SET owner = NULL, expires_at = NULL, released_by = owner, "
                        "released_at = now(), released_epoch = epoch WHERE owner = %s AND camera = ANY(%s)",
                        (self.node, sorted(cameras)))
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.node))

    def leave(self) -> None:
        """This node stops: its heartbeat is taken back so that nobody counts it as live."""
        with self.connection.transaction(), self.connection.cursor() as cur:
            cur.execute("DELETE FROM gateway_nodes WHERE name = %s", (self.node,))
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.node))
