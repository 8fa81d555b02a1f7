"""Passphrases: from the environment, else asked on the terminal, never echoed or stored.

For the identity named NAME the passphrase is ``$PRIVACY_GATEWAY_PASSPHRASE_<NAME>`` (NAME
upper-cased, every character other than A-Z and 0-9 as ``_``: ``olga.k`` reads
``PRIVACY_GATEWAY_PASSPHRASE_OLGA_K``) if set, else ``$PRIVACY_GATEWAY_PASSPHRASE``, else it is
asked on the terminal, so the members of a quorum need not share one secret. A new identity's
passphrase is asked twice; opening identity files asks once per file (a quorum brings several
people's files), the name taken from the file's header.
"""

from __future__ import annotations

import getpass
import os
import string
import sys
from pathlib import Path

from keys import EscrowError, PrivateIdentity

from .errors import CommandError

ENV = "PRIVACY_GATEWAY_PASSPHRASE"
_KEPT = frozenset(string.ascii_uppercase + string.digits)
#: the rule above, for the commands' help
HELP = (f"The passphrase of identity NAME is read from {ENV}_<NAME> (NAME upper-cased, every character "
        f"other than A-Z and 0-9 as _) if set, else from {ENV}, else asked on the terminal.")


def variable(name: str) -> str:
    """The environment variable holding the passphrase of the identity ``name``."""
    return f"{ENV}_" + "".join(c if c in _KEPT else "_" for c in name.upper())


def passphrase(prompt: str, confirm: bool = False, name: str | None = None) -> str:
    """The passphrase of identity ``name``: its own variable, else ``$PRIVACY_GATEWAY_PASSPHRASE``,
    else asked on the terminal (twice with ``confirm``)."""
    names = [variable(name), ENV] if name else [ENV]
    for var in names:
        env = os.environ.get(var)
        if env is not None:
            if not env:
                raise CommandError(f"{var} is set but empty")
            return env
    if not sys.stdin.isatty():
        raise CommandError(f"no passphrase{f' for {name}' if name else ''}: set {' or '.join(names)}, "
                           "or run on a terminal")
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
        name = PrivateIdentity.name_in(path)  # which passphrase to use (the header is checked as it opens)
        try:
            holder = PrivateIdentity.load(path, passphrase(f"Passphrase for {path}: ", name=name))
        except EscrowError as exc:
            raise CommandError(str(exc)) from None
        if any(h.public.name == holder.public.name for h in holders):
            raise CommandError(f"identity {holder.public.name!r} given twice")
        holders.append(holder)
    return holders
