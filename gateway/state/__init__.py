"""Tokens, camera grants, signatures used, policy activations, cameras changed at run time, the roster and the audit logs' copies: where they are kept.

:mod:`.base` is the seam (one small abstract class per concern), :mod:`.files` this node's files
(the default, unchanged), :mod:`.postgres` PostgreSQL shared by every node of a cluster, and
:mod:`.follower` the thread that takes in, within a second, what another node changed there
(``LISTEN``/``NOTIFY``); :mod:`.audit` copies this node's audit log there for every node to read,
and :mod:`.roster` keeps the key directory's roster in step with the cluster's.
docs/deploy.md says what is shared and what is not.

May import :mod:`gateway.config`, :mod:`gateway.cluster` (its connection settings), ``keys`` and
psycopg; never ``live``, ``api`` or ``cli``.
"""

from .audit import AuditCopy
from .base import PolicyRows, SeenSignatures, TokenRows
from .files import ActivationFile, SeenFile, TokenFiles
from .follower import StateFollower
from .postgres import (
    CHANNEL,
    SCHEMA_VERSION,
    AuditTable,
    CameraConflict,
    CameraTable,
    FailureTable,
    PolicyTable,
    RosterTable,
    SchemaError,
    SeenTable,
    StateDatabase,
    StateUnavailable,
    TokenTable,
)
from .roster import SharedRoster

__all__ = [
    "CHANNEL",
    "SCHEMA_VERSION",
    "ActivationFile",
    "AuditCopy",
    "AuditTable",
    "CameraConflict",
    "CameraTable",
    "FailureTable",
    "PolicyRows",
    "PolicyTable",
    "RosterTable",
    "SchemaError",
    "SeenFile",
    "SeenSignatures",
    "SeenTable",
    "SharedRoster",
    "StateDatabase",
    "StateFollower",
    "StateUnavailable",
    "TokenFiles",
    "TokenRows",
    "TokenTable",
]
