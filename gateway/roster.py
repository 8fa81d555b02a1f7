"""People joining and leaving a key directory, the same way from the command line and over HTTP.

A person's keys are made on their own machine (``keys new-identity``, or ``keys add-identity`` on
the gateway's host); what enters the directory is only the public half: :func:`public_identity`
reads it from untrusted JSON (what ``keys public FILE`` prints) and refuses anything else, a
private identity file above all.

A person leaves with :func:`leave`: dropped from the signed roster (``remove``) or dropped and
their keys listed as revoked for good (``revoke``); then their OpenBao login is ended with the key
directory's co-signer credentials, when these may maintain people's access (otherwise that is an
officer's job, and :func:`leave` says so). ``DIR/openbao-pending.json`` remembers whose access is
still to end if OpenBao did not answer; leaving again retries it.

Imports :mod:`keys` (its public API) and :mod:`gateway.openbao` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from keys import (
    CoSigner,
    CoSignerRefused,
    CoSignerUnavailable,
    EscrowError,
    KeyDirectory,
    PublicIdentity,
    revoke_access,
    write_durably,
)

from .openbao import CREDENTIALS, OpenBaoError, read_credentials

#: whose OpenBao access a remove-identity or revoke has still to end (beside the credentials)
PENDING = "openbao-pending.json"
#: the fields of a public identity (``PublicIdentity.to_json``); anything else is refused
PUBLIC_FIELDS = frozenset({"name", "roles", "hpke", "signing", "mlkem"})
#: fields that only a private identity file (or its decrypted content) has
_PRIVATE_MARKS = frozenset({"ciphertext", "kdf", "nonce", "public", "format"})
HOW_TO_EXPORT = "the public identity that `privacy-gateway keys public FILE` prints on the person's own machine"


class RosterError(Exception):
    """A change of the roster refused or impossible; the message says why, in one line."""


def public_identity(data: object) -> PublicIdentity:
    """The public identity in ``data`` (parsed JSON from someone else), every key checked; raises
    :class:`ValueError` naming the field. A private identity file is refused, never read."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object: {HOW_TO_EXPORT}")  # noqa: TRY004 (one error for bad input)
    if data.keys() & _PRIVATE_MARKS:
        raise ValueError("this is a private identity file (its private keys, encrypted): it must never leave its "
                         f"holder's machine. Send {HOW_TO_EXPORT} instead")
    unknown = sorted(set(data) - PUBLIC_FIELDS)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field (a public identity has {', '.join(sorted(PUBLIC_FIELDS))})")
    missing = sorted({"name", "roles", "hpke", "signing"} - set(data))
    if missing:
        raise ValueError(f"{missing[0]}: missing ({HOW_TO_EXPORT})")
    if not isinstance(data["roles"], list) or not all(isinstance(r, str) for r in data["roles"]):
        raise ValueError("roles: expected a list of role names")
    for key in ("hpke", "signing"):
        if not isinstance(data[key], str):
            raise ValueError(f"{key}: expected a base64 public key")  # noqa: TRY004
    try:
        identity = PublicIdentity.from_json(data)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"not a public identity ({type(exc).__name__})") from None
    for key, check in (("hpke", identity.hpke_key), ("signing", identity.signing_key)):
        try:
            check()
        except ValueError:
            kind = "X25519" if key == "hpke" else "Ed25519"
            raise ValueError(f"{key}: not a 32-byte {kind} public key") from None
    return identity


@dataclass
class Departure:
    """What :func:`leave` did: one line per step (for the person asking), and, if the roster changed
    but OpenBao access could not be ended, why (``failure``: to be shown as an error)."""

    name: str
    ending: list[PublicIdentity] = field(default_factory=list)  # whose keys left the roster (or were still pending)
    lines: list[str] = field(default_factory=list)
    failure: str | None = None
    access_ended: bool = False  # OpenBao confirmed the login is gone


def leave(keys_dir: Path, name: str, *, revoke: bool, action: str) -> Departure:
    """``remove-identity`` (``revoke`` False) or ``revoke``: the roster first (no new wrap to them),
    then OpenBao. ``action``: the command that retries it, for messages. Raises :class:`RosterError`
    when nothing could be done; a departure whose OpenBao step failed has ``failure`` set."""
    keys_dir = Path(keys_dir)
    try:
        directory = KeyDirectory.open(keys_dir)
    except EscrowError as exc:
        raise RosterError(str(exc)) from None
    departure = Departure(name)
    pending = read_pending(keys_dir)
    listed = next((i for i in directory.identities if i.name == name), None)
    # an earlier run changed the roster but OpenBao did not answer: its access is still to end
    waiting = [i for i in pending if i.name == name and (listed is None or i.signing != listed.signing)]
    if listed is None and not waiting:
        earlier = [r for r in directory.revoked if r.name == name]
        if earlier:
            departure.lines.append(f"identity {name} (fingerprint {earlier[-1].fingerprint}) was revoked in "
                                   f"{keys_dir} at {earlier[-1].time}; nothing left to do")
            return departure
        hint = " (a key is revoked while its identity is in the roster)" if revoke else ""
        raise RosterError(f"{keys_dir}: no identity named {name!r}{hint}")
    ending = departure.ending = ([listed] if listed else []) + waiting
    keys_ending = {i.signing for i in ending}
    cosigner, problem, broken = access_maintainer(keys_dir)
    if cosigner is not None:  # remembered before the roster changes, forgotten once OpenBao confirms
        write_pending(keys_dir, [*[i for i in pending if i.signing not in keys_ending], *ending])
    try:
        for identity in ending:
            if revoke:
                directory.revoke(identity)  # once: a key revoked before stays as it was recorded
            elif identity is listed:
                directory.remove(name)
    except EscrowError as exc:
        raise RosterError(str(exc)) from None
    for identity in ending:
        if revoke:
            done = f"revoked in {keys_dir} (its keys can never be added again)"
        else:
            done = f"{'removed' if identity is listed else 'was already removed'} from {keys_dir}"
        departure.lines.append(f"identity {name} (fingerprint {identity.fingerprint}) {done}; "
                               f"roster serial {directory.serial}")
    mounts = ", ".join(f"auth/pg-id-{i.fingerprint}" for i in ending)
    if cosigner is None:
        message = (f"{problem}: the OpenBao access of {name} ({mounts}), if any, must be ended by an officer "
                   "with the access policy (see docs/escrow.md)")
        if broken:  # credentials there but unusable: say so loudly
            departure.failure = message
        else:
            departure.lines.append(message)
        return departure
    try:
        for identity in ending:
            revoke_access(cosigner, identity)  # idempotent: OpenBao deletes what is missing without complaint
    except (CoSignerUnavailable, CoSignerRefused) as exc:
        why = (f"OpenBao refused (does the token in {keys_dir / CREDENTIALS} carry the access policy?)"
               if isinstance(exc, CoSignerRefused) else str(exc))
        departure.failure = (f"the OpenBao access of {name} ({mounts}) could not be ended: {why}. It can still log "
                             f"in to OpenBao until then: once OpenBao answers, {action} again")
        return departure
    write_pending(keys_dir, [i for i in read_pending(keys_dir) if i.signing not in keys_ending])
    departure.lines.append(f"its OpenBao access ({mounts}) ended")
    departure.access_ended = True
    return departure


def access_maintainer(keys_dir: Path) -> tuple[CoSigner | None, str, bool]:
    """The co-signer client that may end people's access, else None, why not, and whether that is a fault."""
    try:
        cosigner, manage_access = read_credentials(keys_dir)
    except OpenBaoError as exc:
        if not (keys_dir / CREDENTIALS).exists():
            return None, f"{keys_dir} holds no co-signer credentials", False
        return None, str(exc), True
    if not manage_access:
        return None, f"the co-signer credentials in {keys_dir / CREDENTIALS} do not maintain people's access", False
    return cosigner, "", False


def read_pending(keys_dir: Path) -> list[PublicIdentity]:
    """The people whose OpenBao access is still to end (an earlier :func:`leave` OpenBao did not answer)."""
    path = Path(keys_dir) / PENDING
    try:
        return [PublicIdentity.from_json(item) for item in json.loads(path.read_text(encoding="ascii"))["identities"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RosterError(f"{path}: unreadable or malformed ({type(exc).__name__}); whose OpenBao access is "
                          "still to end is in it: mend or remove it") from None


def write_pending(keys_dir: Path, identities: list[PublicIdentity]) -> None:
    path = Path(keys_dir) / PENDING
    if not identities:
        path.unlink(missing_ok=True)
        return
    document = {"identities": [i.to_json() for i in identities]}
    write_durably(path, (json.dumps(document, indent=2) + "\n").encode("ascii"), 0o600)
