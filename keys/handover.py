"""The hand-over link of a ``take-over`` entry: a camera's history followed from one node's log to another's.

When a cluster node takes a camera over from a node that stopped renewing its lease, its
``take-over`` entry (signed by the new owner's node key, keys/nodes.py) carries ``handover``: the
previous owner's last ``seal`` entry of that camera as the cluster's copy of its log held it then::

    "handover": {"seq": <that entry's seq in the previous node's log>,
                 "line": <SHA-256 of its line, as the log stores it>,
                 "segment": <the last segment it sealed>, "head": <that segment's digest>}

or ``null`` when there was none to name (the previous node sealed nothing of the camera, or its
copy had not reached the database). Since every node's log is a hash chain, the line's digest
pins the previous owner's whole log up to that entry, and through its ``head`` the camera's
segment chain on that node: the camera's history runs from the new owner's chain back into the
old owner's, and the gap between them is what ``gap_s`` estimates.

:func:`check_handovers` checks every link against the logs it is given (each one verified on its
own already): the entry named must be there, unchanged, and be the previous owner's ``seal`` of
that camera ending at that segment and digest. ``take-over`` entries written before hand-overs
existed carry no ``handover`` and are not links.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection

from .errors import AuditError

__all__ = ["check_handovers", "handover_link"]


def handover_link(seq: int, line: bytes) -> dict:
    """The ``handover`` of a take-over from the previous owner's ``seal`` entry ``line`` (at ``seq``)."""
    details = json.loads(line)["details"]
    return {"seq": int(seq), "line": hashlib.sha256(line).hexdigest(), "segment": int(details["segments"][1]),
            "head": details.get("head")}


def check_handovers(logs: dict[str, list[bytes]], of: Collection[str] | None = None) -> int:
    """Check every hand-over in ``logs`` (node -> its log's lines, each chain verified already), or
    only those in the logs of the nodes ``of`` (the others are there as previous owners: their own
    hand-overs name logs that may not be), against the previous owner's log; the number of links
    checked, or :class:`AuditError` naming the first broken one."""
    checked = 0
    for node, lines in sorted(logs.items()):
        if of is not None and node not in of:
            continue
        for line in lines:
            entry = json.loads(line)
            details = entry.get("details")
            if entry.get("action") != "take-over" or not isinstance(details, dict) or not details.get("handover"):
                continue
            _check(f"node {node}'s audit log entry {entry.get('seq')}", details, logs)
            checked += 1
    return checked


def _check(where: str, details: dict, logs: dict[str, list[bytes]]) -> None:
    link, previous, camera = details["handover"], details.get("previous"), details.get("camera")
    try:
        seq, digest = int(link["seq"]), str(link["line"])
    except (KeyError, TypeError, ValueError):
        raise AuditError(f"{where}: malformed hand-over") from None
    lines = logs.get(previous)
    if lines is None:
        raise AuditError(f"{where}: its hand-over names the log of node {previous!r}, which is not here to check")
    if not 1 <= seq <= len(lines):
        raise AuditError(f"{where}: its hand-over names entry {seq} of node {previous}'s log, which has {len(lines)} "
                         "entries (cut or rolled back?)")
    line = lines[seq - 1]
    if hashlib.sha256(line).hexdigest() != digest:
        raise AuditError(f"{where}: its hand-over names entry {seq} of node {previous}'s log, which differs from "
                         "the entry handed over (rewritten?)")
    entry = json.loads(line)
    sealed = entry.get("details") if entry.get("action") == "seal" else None
    try:
        expected = handover_link(seq, line) if isinstance(sealed, dict) and sealed.get("camera") == camera else None
    except (KeyError, TypeError, ValueError, IndexError):
        expected = None
    if expected != {"seq": seq, "line": digest, "segment": link.get("segment"), "head": link.get("head")}:
        raise AuditError(f"{where}: its hand-over names entry {seq} of node {previous}'s log, which is not that "
                         f"node's seal of camera {camera!r} ending at segment {link.get('segment')}")
