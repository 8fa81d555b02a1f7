"""Cluster: several gateway nodes sharing the configured cameras through leases in PostgreSQL.

:mod:`.leases` is the lease table (claim, renew, spread, take over, hand back: the database's
side); :mod:`.node` is one node following its leases, fail-closed (it stops publishing before a
lease it could not renew can expire). docs/deploy.md says how to run it and what is not shared yet.

May import :mod:`gateway.config` and psycopg; never ``live``, ``api`` or ``cli`` (the runtime
passes in how to start and stop a camera).
"""

from .leases import (
    CHANNEL,
    SCHEMA_VERSION,
    Leases,
    Round,
    SchemaError,
    claim_limit,
    least_loaded,
)
from .node import ClusterNode, ClusterStats, TakeOver, connect

__all__ = [
    "CHANNEL",
    "SCHEMA_VERSION",
    "ClusterNode",
    "ClusterStats",
    "Leases",
    "Round",
    "SchemaError",
    "TakeOver",
    "claim_limit",
    "connect",
    "least_loaded",
]
