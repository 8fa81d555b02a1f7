"""The key directory a running gateway seals with, created on first start.

The gateway holds the key directory's public half and its own signing key, never a key that
can unmask. On the first start of a configuration with ``demo_identities``, three demo people
(an officer, an investigator and a viewer) are created too, so the embedded default can be
tried end to end; their passphrase is shown once and kept nowhere.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from keys import KeyDirectory, PrivateIdentity

from ..config import GatewayConfig

DEMO_PEOPLE = (("demo-officer", "privacy-officer"), ("demo-investigator", "investigator"), ("demo-viewer", "viewer"))


def prepare_keys(config: GatewayConfig, announce: Callable[[str], None] = print) -> KeyDirectory:
    """Open the key directory; on first start create it (and the demo identities if asked for)."""
    path = config.keys_dir
    if KeyDirectory.exists(path):
        return KeyDirectory.open(path)
    directory = KeyDirectory.init(path)
    if config.demo_identities:
        people = config.storage.data_dir / "identities"
        people.mkdir(parents=True, exist_ok=True)
        passphrase = secrets.token_urlsafe(12)
        for name, role in DEMO_PEOPLE:
            identity = PrivateIdentity.generate(name, [role])
            identity.save(people / f"{name}.identity", passphrase)
            directory.add(identity.public)
        announce(f"demo identities created in {people} ({', '.join(name for name, _ in DEMO_PEOPLE)}); "
                 f"their passphrase, shown only now: {passphrase}")
    return directory
