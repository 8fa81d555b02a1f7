"""Passphrases: from ``PRIVACY_GATEWAY_PASSPHRASE``, else asked on the terminal, never echoed or stored.

One prompt for the whole command line: a new identity's passphrase is asked twice; opening an
identity file asks once per file (a quorum brings several people's files).
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from keys import EscrowError, PrivateIdentity

from .errors import CommandError

ENV = "PRIVACY_GATEWAY_PASSPHRASE"


def passphrase(prompt: str, confirm: bool = False) -> str:
    """``$PRIVACY_GATEWAY_PASSPHRASE``, else asked on the terminal (twice with ``confirm``)."""
    env = os.environ.get(ENV)
    if env is not None:
        if not env:
            raise CommandError(f"{ENV} is set but empty")
        return env
    if not sys.stdin.isatty():
        raise CommandError(f"no passphrase: set {ENV} or run on a terminal")
    first = getpass.getpass(prompt)
    if not first:
        raise CommandError("empty passphrase")
    if confirm and first != getpass.getpass("Repeat the passphrase: "):
        raise CommandError("passphrases differ")
    return first


def open_identities(paths: list[Path]) -> list[PrivateIdentity]:
    """The people's private identities in ``paths`` (each opened with its passphrase), all distinct."""
    holders = []
    for path in paths:
        if not path.is_file():
            raise CommandError(f"cannot read identity {path}: no such file")
        try:
            holder = PrivateIdentity.load(path, passphrase(f"Passphrase for {path}: "))
        except EscrowError as exc:
            raise CommandError(str(exc)) from None
        if any(h.public.name == holder.public.name for h in holders):
            raise CommandError(f"identity {holder.public.name!r} given twice")
        holders.append(holder)
    return holders
