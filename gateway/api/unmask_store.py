"""The unmask requests filed through the API, kept in the data directory: one file per request.

``<data>/unmask-requests/<id>.json`` (the directory 0700, each file 0600, written durably with
:func:`keys.write_durably`): who filed it and when, the subject marked, the roles the policy's
grant names (whose holders see it), whether it was closed (refused or withdrawn, by whom and
why), its history, and the request file itself (:class:`keys.UnmaskRequest`: the details the
audit entry will hold, the approvals so far and the key layers the members peel). Nothing in it
is secret: the layers are wraps the vault keeps anyway, peeled down towards the requester, whose
innermost layer only their private key opens. The files are private because they say who is
being looked for, and why.

Whether a request is *done* is not kept here: it is done when the audit log holds an ``unmask``
entry with exactly its details (:meth:`FiledRequest.status`).

The routes (:mod:`.unmask_requests`) log every change before they make it; this module only
keeps what they decided. Blocking (files are written and fsynced): call it off the event loop.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from keys import EscrowError, UnmaskRequest, write_durably

log = logging.getLogger(__name__)

_ID = re.compile(r"r-[0-9a-f]{16}")
#: what a request is: ``open`` until it is refused or withdrawn (closed for good)
STATES = ("open", "refused", "withdrawn")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def unmask_details(details: dict) -> dict:
    """An ``unmask`` entry's details as the request file holds them (without the approvals)."""
    return {k: v for k, v in details.items() if k != "approvals"}


@dataclass
class FiledRequest:
    id: str
    filed: str  # ISO 8601, UTC
    file: UnmaskRequest
    subject: dict  # {"class", "track"} and, when it was marked on a frame, {"at", "x", "y"}
    grant_roles: list[str]  # the roles the grants of its classes name: their holders see it
    state: str = "open"
    closed: dict | None = None  # {"by", "time", "why"} once refused or withdrawn
    history: list[dict] = field(default_factory=list)  # {"time", "by", "action", ...}

    @property
    def camera(self) -> str:
        return self.file.request["camera"]

    @property
    def requester(self) -> str:
        return self.file.requester

    @property
    def members(self) -> list[str]:
        """The other members of the quorum, who approve it."""
        return [n for n in self.file.request["identities"] if n != self.file.requester]

    def status(self, done: bool) -> str:
        """``refused``, ``withdrawn``, ``done`` (the unmask is logged), ``approved`` (every member
        approved: the requester may run it) or ``pending``."""
        if self.state != "open":
            return self.state
        if done:
            return "done"
        return "approved" if not self.file.waiting_for else "pending"

    def copy(self) -> FiledRequest:
        """A copy to change and :meth:`UnmaskRequests.save`, leaving the kept one as it is until then."""
        return FiledRequest.from_json(self.to_json())

    def to_json(self) -> dict:
        return {"id": self.id, "filed": self.filed, "subject": self.subject, "grant_roles": self.grant_roles,
                "state": self.state, "closed": self.closed, "history": self.history,
                "file": json.loads(self.file.to_bytes())}

    @classmethod
    def from_json(cls, data: dict) -> FiledRequest:
        state = data["state"]
        if state not in STATES or not _ID.fullmatch(data["id"]):
            raise ValueError(f"state {state!r} or id {data['id']!r}")
        return cls(data["id"], data["filed"], UnmaskRequest.from_bytes(json.dumps(data["file"]).encode()),
                   dict(data["subject"]), list(data["grant_roles"]), state, data["closed"], list(data["history"]))


class UnmaskRequests:
    """The requests filed so far, read once at start and kept in step with their files."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._keep_private()
        self._filed: dict[str, FiledRequest] = {}
        for path in sorted(self.directory.glob("r-*.json")):
            try:
                filed = FiledRequest.from_json(json.loads(path.read_text("utf-8")))
            except (OSError, ValueError, KeyError, TypeError, EscrowError) as exc:
                # one damaged file does not hide the others; it stays where it is for an officer to look at
                log.error("%s: unreadable unmask request, left alone (%s)", path, exc)
                continue
            self._filed[filed.id] = filed

    def _keep_private(self) -> None:
        """The directory 0700 and its files 0600, whatever made them (a copy, a umask)."""
        for path, mode in ((self.directory, 0o700), *((f, 0o600) for f in sorted(self.directory.glob("*.json")))):
            if stat.S_IMODE(path.stat().st_mode) & ~mode:
                log.warning("%s was readable by others (mode %o); made it %o", path,
                            stat.S_IMODE(path.stat().st_mode), mode)
                path.chmod(mode)

    def new_id(self) -> str:
        return f"r-{secrets.token_hex(8)}"

    def get(self, request_id: str) -> FiledRequest | None:
        with self._lock:
            return self._filed.get(request_id) if _ID.fullmatch(request_id) else None

    def all(self) -> list[FiledRequest]:
        """Every request, newest first."""
        with self._lock:
            return sorted(self._filed.values(), key=lambda f: (f.filed, f.id), reverse=True)

    def save(self, filed: FiledRequest) -> None:
        """Write ``filed`` (new or changed) durably, then keep it."""
        data = json.dumps(filed.to_json(), indent=1, sort_keys=True).encode()
        with self._lock:
            write_durably(self.directory / f"{filed.id}.json", data, mode=0o600)
            self._filed[filed.id] = filed
