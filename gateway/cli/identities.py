"""``keys init``, ``add-identity``, ``new-identity``, ``public``, ``list``, ``remove-identity``,
``revoke`` and ``revoke-node``: the key directory, the people in it and the cluster nodes' keys.

A person's private keys are created on the machine running this command and written to their
identity file, encrypted under their passphrase; only the public half enters the directory. On the
gateway's host ``add-identity`` does both; on the person's own machine ``new-identity`` makes the
file (no key directory there) and ``public`` prints its public half, which an officer enrols over
the API or the console (``POST /api/identities``; docs/access.md).

A person leaves with ``remove-identity`` (dropped from the signed roster) or ``revoke`` (dropped,
and their keys listed as revoked in the roster, never to be added again). Either also ends their
OpenBao login when the key directory's co-signer credentials may maintain people's access;
otherwise an officer ends it. The OpenBao step is retried by running the command again:
``DIR/openbao-pending.json`` remembers whose access is still to end (:mod:`gateway.roster`).

A cluster node's signing key is certified by the node itself at its start (keys/nodes.py);
``revoke-node`` revokes it: what it signed dated from then on no longer verifies.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

from keys import EscrowError, KeyDirectory, PrivateIdentity

from ..config import ConfigError, load_config
from ..roster import PENDING, RosterError, leave
from .errors import CommandError
from .prompt import HELP, open_identities, passphrase

__all__ = ["PENDING", "register"]


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
    new = actions.add_parser("new-identity", help="create your keys on your own machine (no key directory), "
                             "for an officer to enrol by their public half (see `keys public`)")
    new.add_argument("name", metavar="NAME", help="1-64 letters, digits and - _ . @ (not 'gateway', reserved)")
    new.add_argument("--role", dest="roles", action="append", required=True, metavar="ROLE",
                     help="the role you ask for: privacy-officer, investigator, auditor, viewer or publisher "
                          "(repeatable; the officer who enrols you decides)")
    new.add_argument("--out", type=Path, required=True, metavar="FILE",
                     help="where to write the private keys, encrypted under a passphrase of at least 12 characters")
    new.add_argument("--post-quantum", action="store_true",
                     help="also an ML-KEM-768 key: wraps to you use hybrid ML-KEM-768+X25519 HPKE")
    new.set_defaults(run=_new_identity)
    public = actions.add_parser("public", help="print the public identity (JSON) of your identity file, to be "
                                "enrolled by an officer; no private key is in it")
    public.add_argument("file", type=Path, metavar="FILE", help="your private identity file")
    public.set_defaults(run=_public)
    listing = actions.add_parser("list", help="the roster: identities, roles, fingerprints, revoked keys")
    listing.add_argument("directory", type=Path, metavar="DIR")
    listing.set_defaults(run=_list)
    rotate = actions.add_parser("rotate-gateway", help="replace the gateway's signing key (the old key signs the "
                                "new one; vaults sealed under it keep verifying); run it while serve is stopped")
    rotate.add_argument("directory", type=Path, metavar="DIR")
    rotate.set_defaults(run=_rotate)
    revoke_node = actions.add_parser("revoke-node", help="revoke a cluster node's signing key: its entries and "
                                     "segments dated from then on no longer verify, earlier ones still do",
                                     description="Revoke a cluster node's signing key (docs/deploy.md, signing keys "
                                     "per node). In a running cluster the change reaches the other nodes through "
                                     "the database at this node's next sync; the node refuses to start with a revoked "
                                     "key until its key file is removed (it then makes and certifies a new one).")
    revoke_node.add_argument("directory", type=Path, metavar="DIR")
    revoke_node.add_argument("name", metavar="NODE")
    revoke_node.add_argument("--at", metavar="TIME", help="revoked from this UTC ISO time (default: now); an earlier "
                             "time also refuses what the node signed since then")
    revoke_node.add_argument("--config", type=Path, metavar="FILE", help="the configuration of a cluster node whose key "
                             "directory DIR is: the revocation is made under the cluster's roster lock and put in its "
                             "database, so every node takes it in within a second (without it, at the node's next "
                             "sync, and lost if another change was made there meanwhile)")
    revoke_node.set_defaults(run=_revoke_node)
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
        identity = _generate(args)
        if any(i.name == identity.public.name for i in directory.identities):
            raise CommandError(f"{args.directory}: an identity named {args.name!r} already exists")
        _save(identity, args.out)
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


def _generate(args: argparse.Namespace) -> PrivateIdentity:
    """A new identity as ``args`` asks (name, roles, post-quantum), its file not yet existing."""
    if args.out.exists():
        raise CommandError(f"{args.out}: already exists; refusing to overwrite a private key file")
    try:
        return PrivateIdentity.generate(args.name, args.roles, post_quantum=args.post_quantum)
    except ValueError as exc:  # a name or role the directory does not accept
        raise CommandError(str(exc)) from None


def _save(identity: PrivateIdentity, out: Path) -> None:
    """``identity``'s private file at ``out``, under a passphrase asked for (twice) now."""
    secret = passphrase("Passphrase for the new identity: ", confirm=True, name=identity.public.name)
    try:
        identity.save(out, secret)
    except ValueError as exc:  # too short a passphrase: nothing written
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write {out}: {exc.strerror or exc}") from None


def _new_identity(args: argparse.Namespace) -> int:
    identity = _generate(args)
    _save(identity, args.out)
    print(f"identity {args.name} ({', '.join(identity.public.roles)}, fingerprint {identity.public.fingerprint}) "
          f"written to {args.out}; give an officer its public half (`privacy-gateway keys public {args.out}`) and "
          "compare the fingerprint with them over another channel")
    return 0


def _public(args: argparse.Namespace) -> int:
    """The public identity JSON on stdout (and nothing else), its fingerprint on stderr."""
    import sys

    (holder,) = open_identities([args.file])
    print(f"identity {holder.public.name}, fingerprint {holder.public.fingerprint}", file=sys.stderr)
    print(json.dumps(holder.public.to_json(), indent=2))
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
    for node in directory.nodes:
        state = f"{node.reason} {node.revoked}" if node.revoked else "current"
        print(f"  {node.actor}  {node.fingerprint}  certified {node.certified}, {state}")
    return 0


@contextlib.contextmanager
def _cluster_roster(args: argparse.Namespace) -> Iterator[None]:
    """With ``--config`` of a cluster node keeping its key directory in DIR: hold the cluster's roster
    lock around the change (the newest roster taken in first, the changed one put back after)."""
    if args.config is None:
        yield
        return
    try:
        config, _ = load_config(args.config)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    if config.cluster is None:
        raise CommandError(f"{args.config}: no cluster section; leave --config out")
    if not (config.keys_dir.exists() and config.keys_dir.samefile(args.directory)):
        raise CommandError(f"{args.config}: its key directory is {config.keys_dir}, not {args.directory}")
    from ..state import (  # psycopg: only for a cluster
        RosterTable,
        SharedRoster,
        StateDatabase,
        StateUnavailable,
    )

    database = StateDatabase(config.cluster)
    try:
        with SharedRoster(RosterTable(database), config.keys_dir, config.cluster).changing():
            yield
    except StateUnavailable as exc:
        raise CommandError(f"cluster.database: {exc}") from None
    finally:
        database.close()


def _revoke_node(args: argparse.Namespace) -> int:
    at = None
    if args.at is not None:
        try:
            when = dt.datetime.fromisoformat(args.at)
        except ValueError:
            raise CommandError(f"--at {args.at!r}: use an ISO 8601 time") from None
        at = (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).isoformat(timespec="microseconds")
    try:
        with _cluster_roster(args):
            record = KeyDirectory.open(args.directory).revoke_node(args.name, at)
    except EscrowError as exc:
        raise CommandError(str(exc)) from None
    print(f"node {record.name}'s signing key {record.fingerprint} revoked from {record.revoked}: what it signed "
          "dated from then on no longer verifies")
    return 0


def _leave(args: argparse.Namespace) -> int:
    """``remove-identity`` and ``revoke``: the roster first (no new wrap to them), then OpenBao."""
    retry = f"run `privacy-gateway keys {args.action} {args.directory} {args.name}`"
    try:
        departure = leave(args.directory, args.name, revoke=args.revoke, action=retry)
    except RosterError as exc:
        raise CommandError(str(exc)) from None
    for line in departure.lines:
        print(line)
    if departure.failure is not None:
        raise CommandError(departure.failure)
    return 0
