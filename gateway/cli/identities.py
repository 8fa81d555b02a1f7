"""``keys init``, ``add-identity``, ``list``, ``remove-identity`` and ``revoke``: the key directory and
the people in it.

A person's private keys are created on the machine running this command and written to their
identity file, encrypted under their passphrase; only the public half enters the directory.

A person leaves with ``remove-identity`` (dropped from the signed roster) or ``revoke`` (dropped,
and their keys listed as revoked in the roster, never to be added again). Either also ends their
OpenBao login when the key directory's co-signer credentials may maintain people's access;
otherwise an officer ends it. The OpenBao step is retried by running the command again:
``DIR/openbao-pending.json`` remembers whose access is still to end.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from keys import (
    CoSigner,
    CoSignerRefused,
    CoSignerUnavailable,
    EscrowError,
    KeyDirectory,
    PrivateIdentity,
    PublicIdentity,
    revoke_access,
    write_durably,
)

from ..openbao import CREDENTIALS, OpenBaoError, read_credentials
from .errors import CommandError
from .prompt import HELP, passphrase

#: whose OpenBao access a remove-identity or revoke has still to end (beside the credentials)
PENDING = "openbao-pending.json"


def register(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="key directory and identities",
                               description=f"The key directory and the identities in it. {HELP}")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="create a key directory with a gateway signing key")
    init.add_argument("directory", type=Path, metavar="DIR")
    init.set_defaults(run=_init)
    add = actions.add_parser("add-identity", help="create a person's keys and add them to the directory")
    add.add_argument("directory", type=Path, metavar="DIR")
    add.add_argument("name", metavar="NAME", help="1-64 letters, digits and - _ . @ (not 'gateway', reserved)")
    add.add_argument("--role", dest="roles", action="append", required=True, metavar="ROLE",
                     help="privacy-officer, investigator, auditor, viewer or publisher (repeatable)")
    add.add_argument("--out", type=Path, required=True, metavar="FILE",
                     help="where to write the private keys, encrypted under a passphrase of at least 12 "
                          "characters (from PRIVACY_GATEWAY_PASSPHRASE_<NAME>, else PRIVACY_GATEWAY_PASSPHRASE, "
                          "else prompted)")
    add.add_argument("--post-quantum", action="store_true",
                     help="also an ML-KEM-768 key: wraps to this person use hybrid ML-KEM-768+X25519 HPKE")
    add.set_defaults(run=_add_identity)
    listing = actions.add_parser("list", help="the roster: identities, roles, fingerprints, revoked keys")
    listing.add_argument("directory", type=Path, metavar="DIR")
    listing.set_defaults(run=_list)
    rotate = actions.add_parser("rotate-gateway", help="replace the gateway's signing key (the old key signs the "
                                "new one; vaults sealed under it keep verifying); run it while serve is stopped")
    rotate.add_argument("directory", type=Path, metavar="DIR")
    rotate.set_defaults(run=_rotate)
    leaving = (
        ("remove-identity", False, "drop a person from the roster (and end their OpenBao access)"),
        ("revoke", True, ("drop a person from the roster and list their keys as revoked for good "
                          "(and end their OpenBao access)")),
    )
    for action, revoke, text in leaving:
        leave = actions.add_parser(action, help=text, description=f"{text[0].upper()}{text[1:]}. OpenBao access "
                                   "is ended with the key directory's co-signer credentials when they may maintain "
                                   "people's access, else by an officer (docs/escrow.md); if OpenBao does not answer, "
                                   "the roster is changed all the same and running the command again ends it.")
        leave.add_argument("directory", type=Path, metavar="DIR")
        leave.add_argument("name", metavar="NAME")
        leave.set_defaults(run=_leave, revoke=revoke, action=action)


def _init(args: argparse.Namespace) -> int:
    try:
        directory = KeyDirectory.init(args.directory)
    except EscrowError as exc:
        raise CommandError(str(exc)) from None
    print(f"key directory {args.directory} created; gateway key fingerprint {directory.fingerprint} "
          "(keep gateway.key private)")
    return 0


def _add_identity(args: argparse.Namespace) -> int:
    try:
        directory = KeyDirectory.open(args.directory)
        if args.out.exists():
            raise CommandError(f"{args.out}: already exists; refusing to overwrite a private key file")
        try:
            identity = PrivateIdentity.generate(args.name, args.roles, post_quantum=args.post_quantum)
        except ValueError as exc:  # a name or role the directory does not accept
            raise CommandError(str(exc)) from None
        if any(i.name == identity.public.name for i in directory.identities):
            raise CommandError(f"{args.directory}: an identity named {args.name!r} already exists")
        secret = passphrase("Passphrase for the new identity: ", confirm=True, name=identity.public.name)
        try:
            identity.save(args.out, secret)
        except ValueError as exc:  # too short a passphrase: nothing written
            raise CommandError(str(exc)) from None
        except OSError as exc:
            raise CommandError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        try:
            directory.add(identity.public)
        except BaseException:
            args.out.unlink(missing_ok=True)  # no private file for an identity the directory lacks
            raise
    except EscrowError as exc:
        raise CommandError(str(exc)) from None
    print(f"identity {args.name} ({', '.join(identity.public.roles)}, fingerprint {identity.public.fingerprint}) "
          f"added to {args.directory}; private keys in {args.out}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    try:
        directory = KeyDirectory.open(args.directory)
        old = directory.fingerprint
        directory.rotate()
    except (EscrowError, OSError) as exc:
        raise CommandError(str(exc)) from None
    print(f"gateway key of {args.directory} rotated: {old} -> {directory.fingerprint} (the old key signed the new "
          "one; vaults sealed under either verify, and record the rotation the next time they are sealed into)")
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        directory = KeyDirectory.open(args.directory)
        identities, revoked = directory.identities, directory.revoked
    except EscrowError as exc:
        raise CommandError(str(exc)) from None
    print(f"key directory {args.directory}: roster serial {directory.serial}, gateway key fingerprint "
          f"{directory.fingerprint}")
    for identity in identities:
        kind = ", post-quantum" if identity.post_quantum else ""
        print(f"  {identity.name}  {identity.fingerprint}  {', '.join(identity.roles)}{kind}")
    for record in revoked:
        print(f"  {record.name}  {record.fingerprint}  revoked {record.time}")
    return 0


def _leave(args: argparse.Namespace) -> int:
    """``remove-identity`` and ``revoke``: the roster first (no new wrap to them), then OpenBao."""
    keys_dir, name = args.directory, args.name
    try:
        directory = KeyDirectory.open(keys_dir)
    except EscrowError as exc:
        raise CommandError(str(exc)) from None
    pending = _pending(keys_dir)
    listed = next((i for i in directory.identities if i.name == name), None)
    # an earlier run changed the roster but OpenBao did not answer: its access is still to end
    waiting = [i for i in pending if i.name == name and (listed is None or i.signing != listed.signing)]
    if listed is None and not waiting:
        earlier = [r for r in directory.revoked if r.name == name]
        if earlier:
            print(f"identity {name} (fingerprint {earlier[-1].fingerprint}) was revoked in {keys_dir} at "
                  f"{earlier[-1].time}; nothing left to do")
            return 0
        hint = " (a key is revoked while its identity is in the roster)" if args.revoke else ""
        raise CommandError(f"{keys_dir}: no identity named {name!r}{hint}")
    ending = ([listed] if listed else []) + waiting
    keys_ending = {i.signing for i in ending}
    cosigner, problem, broken = _access_maintainer(keys_dir)
    if cosigner is not None:  # remembered before the roster changes, forgotten once OpenBao confirms
        _write_pending(keys_dir, [*[i for i in pending if i.signing not in keys_ending], *ending])
    try:
        for identity in ending:
            if args.revoke:
                directory.revoke(identity)  # once: a key revoked before stays as it was recorded
            elif identity is listed:
                directory.remove(name)
    except EscrowError as exc:
        raise CommandError(str(exc)) from None
    for identity in ending:
        if args.revoke:
            done = f"revoked in {keys_dir} (its keys can never be added again)"
        else:
            done = f"{'removed' if identity is listed else 'was already removed'} from {keys_dir}"
        print(f"identity {name} (fingerprint {identity.fingerprint}) {done}; roster serial {directory.serial}")
    mounts = ", ".join(f"auth/pg-id-{i.fingerprint}" for i in ending)
    if cosigner is None:
        message = (f"{problem}: the OpenBao access of {name} ({mounts}), if any, must be ended by an officer "
                   "with the access policy (see docs/escrow.md)")
        if broken:  # credentials there but unusable: say so loudly
            raise CommandError(message)
        print(message)
        return 0
    try:
        for identity in ending:
            revoke_access(cosigner, identity)  # idempotent: OpenBao deletes what is missing without complaint
    except (CoSignerUnavailable, CoSignerRefused) as exc:
        why = (f"OpenBao refused (does the token in {keys_dir / CREDENTIALS} carry the access policy?)"
               if isinstance(exc, CoSignerRefused) else str(exc))
        raise CommandError(f"the OpenBao access of {name} ({mounts}) could not be ended: {why}. It can still log "
                           f"in to OpenBao until then: once OpenBao answers, run `privacy-gateway keys {args.action} "
                           f"{keys_dir} {name}` again") from None
    _write_pending(keys_dir, [i for i in _pending(keys_dir) if i.signing not in keys_ending])
    print(f"its OpenBao access ({mounts}) ended")
    return 0


def _access_maintainer(keys_dir: Path) -> tuple[CoSigner | None, str, bool]:
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


def _pending(keys_dir: Path) -> list[PublicIdentity]:
    path = keys_dir / PENDING
    try:
        return [PublicIdentity.from_json(item) for item in json.loads(path.read_text(encoding="ascii"))["identities"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CommandError(f"{path}: unreadable or malformed ({type(exc).__name__}); whose OpenBao access is "
                           "still to end is in it: mend or remove it") from None


def _write_pending(keys_dir: Path, identities: list[PublicIdentity]) -> None:
    path = keys_dir / PENDING
    if not identities:
        path.unlink(missing_ok=True)
        return
    document = {"identities": [i.to_json() for i in identities]}
    write_durably(path, (json.dumps(document, indent=2) + "\n").encode("ascii"), 0o600)
