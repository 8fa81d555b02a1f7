"""The key directory a running gateway seals with, created on first start.

The gateway holds the key directory's public half and its own signing key, never a key that
can unmask. It creates no people: a site's identities are added with ``privacy-gateway keys
add-identity`` on the machines that keep their private keys, and the embedded demo's by
:mod:`gateway.api.demo` before the runtime opens the directory.
"""

from __future__ import annotations

from collections.abc import Callable

from keys import KeyDirectory

from ..config import GatewayConfig


def prepare_keys(config: GatewayConfig, announce: Callable[[str], None] = print) -> KeyDirectory:
    """Open the key directory; on first start create it (with the gateway's signing key, and nobody in it)."""
    path = config.keys_dir
    if KeyDirectory.exists(path):
        return KeyDirectory.open(path)
    directory = KeyDirectory.init(path)
    announce(f"key directory {path} created (gateway key fingerprint {directory.fingerprint}); "
             "add people with `privacy-gateway keys add-identity` (docs/access.md)")
    return directory
