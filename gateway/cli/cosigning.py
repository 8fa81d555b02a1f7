"""Which co-signer (OpenBao) a command talks to, and as whom; ``escrow connect``.

The gateway's side (``redact --keys --vault``) uses the credentials kept in the key directory
(:func:`gateway.openbao.read_credentials`): ``serve`` writes them when it sets up its embedded
OpenBao, ``escrow connect`` when an operator points a key directory at an external one.
People's side (unmask) needs no token: each identity logs in with its own key, at the address
the vault recorded unless ``--escrow`` overrides it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from keys import (
    CoSigner,
    EscrowError,
    IntegrityError,
    KeyDirectory,
    VaultStore,
    grants_of,
    reconcile_shares,
    set_up,
    verify_audit,
)
from redaction import PolicyError, parse_policy

from ..openbao import OpenBaoError, read_credentials, write_credentials
from .errors import CheckFailed, CommandError
from .vaults import config_argument, keys_of, open_store


def register(commands: argparse._SubParsersAction) -> None:
    escrow = commands.add_parser("escrow", help="the co-signer (OpenBao) every sealed track also needs")
    actions = escrow.add_subparsers(dest="escrow_command", required=True, metavar="ACTION")
    connect = actions.add_parser("connect", help="set up an external OpenBao for a key directory's gateway")
    connect.add_argument("keys", type=Path, metavar="DIR", help="the key directory")
    connect.add_argument("--address", required=True, metavar="URL[,URL...]",
                         help="the OpenBao address, or every node of an OpenBao cluster joined by commas")
    connect.add_argument("--admin-token-file", type=Path, required=True, metavar="FILE",
                         help="an OpenBao token that may mount transit, write policies and create periodic "
                              "tokens (used once, kept nowhere)")
    connect.add_argument("--mount", default="transit", metavar="PATH", help="the transit mount (default: transit)")
    connect.add_argument("--ca", type=Path, metavar="FILE", help="CA certificate of OpenBao's TLS")
    connect.add_argument("--manage-access", action="store_true",
                         help="let the gateway's token keep people's OpenBao access in step with the policies "
                              "(else an officer does; docs/escrow.md)")
    connect.set_defaults(run=_connect)
    sync = actions.add_parser("sync-access", help="give people exactly the OpenBao access the policies grant "
                              "(an officer's job when the gateway's token does not maintain it)")
    sync.add_argument("--keys", type=Path, metavar="DIR", help="the key directory (the roster); with --config, "
                      "default: the configuration's")
    sync.add_argument("--vault", type=Path, metavar="VAULT")
    config_argument(sync)
    sync.add_argument("--admin-token-file", type=Path, required=True, metavar="FILE",
                      help="an OpenBao token with the access policy (docs/escrow.md)")
    sync.add_argument("--escrow", metavar="URL[,URL...]", help="default: the co-signer the vault recorded")
    sync.add_argument("--escrow-ca", type=Path, metavar="FILE")
    sync.set_defaults(run=_sync_access)
    check = actions.add_parser("reconcile", help="every share OpenBao gave out must be covered by an unmask entry "
                               "of the vault's log (exit 1 naming those that are not)")
    check.add_argument("--openbao-audit", type=Path, required=True, metavar="FILE",
                       help="OpenBao's file audit device log (embedded default: <data>/openbao/audit.log)")
    check.add_argument("--vault", type=Path, required=True, metavar="VAULT")
    check.add_argument("--keys", type=Path, metavar="DIR", help="the key directory (names people by its roster)")
    check.set_defaults(run=_reconcile)


def _token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None


def _connect(args: argparse.Namespace) -> int:
    try:
        KeyDirectory.open(args.keys)
    except EscrowError as exc:
        raise CommandError(str(exc)) from None
    admin = CoSigner(args.address, _token(args.admin_token_file), mount=args.mount, ca=args.ca)
    try:
        admin.check()
        token = set_up(admin, embedded=args.manage_access)
    except EscrowError as exc:
        raise CommandError(str(exc)) from None
    path = write_credentials(args.keys, args.address, token, mount=args.mount, ca=args.ca,
                             manage_access=args.manage_access)
    print(f"the gateway's co-signer token for {args.address} (mount {args.mount}) is in {path}")
    return 0


def add_unmask_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--escrow", metavar="URL[,URL...]", help="the co-signer (OpenBao; a cluster's nodes joined "
                        "by commas) to ask; default: the one the "
                        "vault recorded when it sealed")
    parser.add_argument("--escrow-ca", type=Path, metavar="FILE", help="CA certificate of the co-signer's TLS")


def unmask_cosigner(args: argparse.Namespace, store) -> CoSigner | None:
    """The co-signer an unmask asks: ``--escrow`` if given, else the vault's own (None for a
    vault sealed before co-signers, whose records need none)."""
    if not store.vault_id and not args.escrow:
        return None
    return store.unmask_cosigner(args.escrow, args.escrow_ca)


def gateway_cosigner(keys_dir: Path) -> tuple[CoSigner, bool]:
    """The gateway's client of its co-signer and whether it maintains people's access."""
    try:
        return read_credentials(keys_dir)
    except OpenBaoError as exc:
        raise CommandError(str(exc)) from None


def _reconcile(args: argparse.Namespace) -> int:
    try:
        store = VaultStore.open(args.vault, KeyDirectory.open(args.keys) if args.keys is not None else None)
        verify_audit(store)
        given, uncovered = reconcile_shares(store, args.openbao_audit, store.audit.entries())
    except IntegrityError as exc:
        raise CheckFailed(str(exc)) from None
    except EscrowError as exc:
        raise CommandError(str(exc)) from None
    for item in uncovered:
        print(f"{item.time}: {item.who} got the share of {item.cls} track {item.track} of camera {item.camera}, "
              f"segment {item.segment}, without an unmask entry")
    if uncovered:
        raise CheckFailed(f"{len(uncovered)} of {given} shares OpenBao gave out are covered by no unmask entry")
    print(f"{given} shares OpenBao gave out for {args.vault}, every one covered by an unmask entry")
    return 0


def _sync_access(args: argparse.Namespace) -> int:
    """Each camera's grants as its newest segment's policy states them, applied to the roster: of one
    vault (``--vault``, or ``--config``'s: its disk, or its node's part of the bucket; ``--node``
    another node's part)."""
    token = _token(args.admin_token_file)
    keys_of(args)
    if args.keys is None:
        raise CommandError("escrow sync-access needs --keys (the key directory: the roster), or --config")
    try:
        directory = KeyDirectory.open(args.keys)
        store = open_store(args, directory)
        address = args.escrow or store.escrow_address
        if not address:
            raise CommandError(f"{args.vault}: no co-signer recorded; give --escrow URL")
        admin = CoSigner(address, token, mount=store.escrow_mount or "transit", ca=args.escrow_ca)
        admin.check()
        for camera in store.cameras():
            numbers = store.segment_numbers(camera)
            if not numbers:
                continue
            policy = parse_policy(store.load_policy(store.segment(camera, numbers[-1]).header.policy_sha256))
            store.grant_access(camera, grants_of(policy), directory.identities, admin)
            print(f"camera {camera}: access of {len(directory.identities)} identities in step with its policy")
    except (EscrowError, PolicyError) as exc:
        raise CommandError(str(exc)) from None
    return 0
