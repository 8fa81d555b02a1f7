"""Which vault a command opens: ``--vault DIR``, or ``--config FILE`` (where that gateway keeps its
vault: under its ``data_dir``, or an S3 bucket) with ``--node NAME`` for another node's part of a
cluster's shared bucket. ``unmask``, ``audit verify``, ``vault ...`` and ``escrow sync-access`` share it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from keys import KeyDirectory, VaultStore

from ..config import ConfigError, load_config
from ..storage import open_vault
from .errors import CommandError


def config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--node``, beside the command's own ``--vault``."""
    parser.add_argument("--config", type=Path, metavar="FILE", help="instead of --vault: the vault of this gateway "
                        "configuration, where its storage keeps it (under data_dir, or an S3 bucket); --keys "
                        "defaults to its key directory")
    parser.add_argument("--node", metavar="NAME", help="with --config of a cluster node sharing an S3 bucket: the "
                        "part of another node (a dead one's, say), its audit log rebuilt from its copy in the bucket")


def open_store(args: argparse.Namespace, directory: KeyDirectory | None = None) -> VaultStore:
    """The vault ``--vault`` or ``--config`` names (exactly one); ``args.vault`` becomes where the
    vault is, for messages (a directory, or the bucket and the node's prefix)."""
    if (args.vault is None) == (getattr(args, "config", None) is None):
        raise CommandError("give the vault: --vault VAULT or --config FILE (one of them)")
    if args.vault is not None:
        if getattr(args, "node", None) is not None:
            raise CommandError("--node goes with --config (a cluster's shared bucket), not --vault")
        return VaultStore.open(args.vault, directory)
    try:
        config, _ = load_config(args.config)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    try:
        store = open_vault(config, directory, node=getattr(args, "node", None))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    args.vault = store.location
    return store


def keys_of(args: argparse.Namespace) -> None:
    """With ``--config`` and no ``--keys``: the configuration's key directory."""
    if args.keys is None and getattr(args, "config", None) is not None:
        try:
            args.keys = load_config(args.config)[0].keys_dir
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
