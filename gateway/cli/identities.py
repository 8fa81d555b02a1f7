"""``keys init`` and ``keys add-identity``: the key directory and the people in it.

A person's private keys are created on the machine running this command and written to their
identity file, encrypted under their passphrase; only the public half enters the directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from keys import EscrowError, KeyDirectory, PrivateIdentity

from .errors import CommandError
from .prompt import passphrase


def register(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="key directory and identities")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="create a key directory with a gateway signing key")
    init.add_argument("directory", type=Path, metavar="DIR")
    init.set_defaults(run=_init)
    add = actions.add_parser("add-identity", help="create a person's keys and add them to the directory")
    add.add_argument("directory", type=Path, metavar="DIR")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", dest="roles", action="append", required=True, metavar="ROLE",
                     help="privacy-officer, investigator, auditor, viewer or publisher (repeatable)")
    add.add_argument("--out", type=Path, required=True, metavar="FILE",
                     help="where to write the private keys, encrypted under a passphrase "
                          "(from PRIVACY_GATEWAY_PASSPHRASE, else prompted)")
    add.add_argument("--post-quantum", action="store_true",
                     help="also an ML-KEM-768 key: wraps to this person use hybrid ML-KEM-768+X25519 HPKE")
    add.set_defaults(run=_add_identity)


def _init(args: argparse.Namespace) -> int:
    try:
        directory = KeyDirectory.init(args.directory)
    except EscrowError as exc:
        raise CommandError(str(exc)) from None
    print(f"key directory {args.directory} created; gateway key "
          f"{directory.gateway_public.hex()[:16]}... (keep gateway.key private)")
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
        secret = passphrase("Passphrase for the new identity: ", confirm=True)
        try:
            identity.save(args.out, secret)
        except OSError as exc:
            raise CommandError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        try:
            directory.add(identity.public)
        except BaseException:
            args.out.unlink(missing_ok=True)  # no private file for an identity the directory lacks
            raise
    except EscrowError as exc:
        raise CommandError(str(exc)) from None
    print(f"identity {args.name} ({', '.join(identity.public.roles)}) added to {args.directory}; "
          f"private keys in {args.out}")
    return 0
