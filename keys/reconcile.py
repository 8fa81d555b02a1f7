"""Reconciling the co-signer's audit log with the vault's: every share OpenBao gave out must be
covered by an unmask entry.

A person with the right grant could ask OpenBao for shares with their own script, outside
``unmask``: OpenBao allows it (its policies scope people to cameras and classes, not to logged
requests) but logs each request, with the track's context in clear, before it answers.
:func:`reconcile_shares` reads that log (the file audit device's JSON lines) and finds every
successful share decrypt of this vault that no ``unmask`` entry covers: one naming that person
among its identities and that (class, track) among its tracks, for the recording the segment
belongs to, written before the decrypt.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from .cosigner import key_prefix
from .errors import IntegrityError
from .identity import fingerprint
from .store import VaultStore

__all__ = ["Uncovered", "reconcile_shares"]


@dataclass(frozen=True)
class Uncovered:
    """A share OpenBao gave out that no unmask entry covers."""

    time: str
    who: str  # the identity's name (or its OpenBao login, if the roster does not know it)
    camera: str
    segment: int
    cls: str
    track: int


def _when(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text)  # OpenBao's nanoseconds are cut to microseconds
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def reconcile_shares(store: VaultStore, openbao_audit: Path, log: list[dict]) -> tuple[int, list[Uncovered]]:
    """(shares given out for this vault, those no unmask entry covers); ``log``: the vault's
    verified audit entries. Raises :class:`IntegrityError` if the OpenBao log cannot be read."""
    people = {f"pg-id-{identity.fingerprint}": identity.name for identity in store.identities}
    people |= {f"pg-id-{fingerprint(raw)}": name for name, raw in store.departed.items()}
    unmasks = [e for e in log if e.get("action") == "unmask"]
    recordings: dict[tuple[str, int], str] = {}
    given, uncovered = 0, []
    try:
        lines = Path(openbao_audit).read_text().splitlines()
    except OSError as exc:
        raise IntegrityError(f"cannot read OpenBao's audit log {openbao_audit}: {exc.strerror or exc}") from None
    for line in lines:
        try:
            entry = json.loads(line)
            request = entry["request"]
            path = request["path"]
        except (ValueError, KeyError, TypeError):
            continue
        if entry.get("type") != "response" or entry.get("error") or f"/decrypt/pg-{store.vault_id}-" not in path:
            continue
        try:
            context = json.loads(base64.b64decode(request["data"]["context"]))
            camera, segment, cls, track = context["camera"], int(context["segment"]), context["class"], int(context["track"])
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"OpenBao's audit log: a share request at {entry.get('time')} without a readable "
                                 "context (the transit mount must log contexts in clear; see keys.set_up)") from None
        if not path.rsplit("/", 1)[-1].startswith(key_prefix(store.vault_id, camera, cls)):
            continue
        given += 1
        policies = (entry.get("auth") or {}).get("policies") or []
        who = next((people[p] for p in policies if p in people), (entry.get("auth") or {}).get("display_name", "?"))
        if (camera, segment) not in recordings:
            recordings[(camera, segment)] = store.segment(camera, segment).header.recording
        when = _when(entry["time"])
        if not any(e["details"].get("camera") == camera and e["details"].get("recording") == recordings[(camera, segment)]
                   and who in e["details"].get("identities", []) and [cls, track] in e["details"].get("tracks", [])
                   and _when(e["time"]) <= when for e in unmasks):
            uncovered.append(Uncovered(entry["time"], who, camera, segment, cls, track))
    return given, uncovered
