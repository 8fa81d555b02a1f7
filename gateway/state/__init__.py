"""Tokens, camera grants, signatures used and policy activations: where they are kept.

:mod:`.base` is the seam (one small abstract class per concern), :mod:`.files` this node's files
(the default), :mod:`.postgres` PostgreSQL shared by every node of a cluster, and :mod:`.follower`
the thread that takes in, within a second, what another node changed there (``LISTEN``).

May import :mod:`gateway.config`, ``keys`` and psycopg; never ``live``, ``api`` or ``cli``.
"""

from .base import PolicyRows, SeenSignatures, TokenRows
from .files import ActivationFile, SeenFile, TokenFiles

__all__ = [
    "ActivationFile",
    "PolicyRows",
    "SeenFile",
    "SeenSignatures",
    "TokenFiles",
    "TokenRows",
]
