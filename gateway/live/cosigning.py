"""The gateway's co-signer while it runs: an external OpenBao reached, or the embedded one started.

With ``escrow.address`` configured the gateway only reaches it (its token from
``escrow.token_file``). Without, it runs an embedded OpenBao on loopback, storage under
``<data_dir>/openbao``: on first start that is initialised, set up (transit, the gateway's
policies and periodic token; :func:`keys.set_up`), and its root token revoked; the unseal key
goes to a 0600 file *beside* the data directory, for the operator to move away (then every
start needs it put back). Either way the credentials are kept in the key directory, where
``redact --keys`` finds them (:func:`gateway.openbao.write_credentials`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from keys import CoSigner, set_up

from ..config import GatewayConfig
from ..openbao import LocalOpenBao, read_credentials, write_credentials


def unseal_key_file(data_dir: Path) -> Path:
    """Where the embedded OpenBao's unseal key is written: outside the data directory, beside it."""
    data_dir = Path(data_dir).resolve()
    return data_dir.parent / f"{data_dir.name}-openbao-unseal.key"


def open_cosigner(config: GatewayConfig, announce: Callable[[str], None]) -> tuple[CoSigner, bool, LocalOpenBao | None]:
    """The gateway's co-signer client, whether it maintains people's access, and the embedded
    server (None for an external one; the caller stops it). Raises if it cannot be reached."""
    settings = config.escrow
    if settings.address is not None:
        assert settings.token_file is not None  # the configuration requires it
        token = settings.token_file.read_text().strip()
        cosigner = CoSigner(settings.address, token, mount=settings.mount, ca=settings.ca)
        cosigner.check()
        cosigner.renew()
        write_credentials(config.keys_dir, settings.address, token, mount=settings.mount, ca=settings.ca,
                          manage_access=settings.manage_access)
        return cosigner, settings.manage_access, None
    data = config.storage.data_dir
    local = LocalOpenBao(data / "openbao", unseal_key_file(data), settings.port)
    root = local.start()
    try:
        if root is not None:
            admin = CoSigner(local.address, root)
            write_credentials(config.keys_dir, local.address, set_up(admin, embedded=True), manage_access=True)
            admin.revoke_self()
            key = local.unseal_key_file.read_text().strip()
            announce(f"embedded OpenBao initialised in {local.directory}; its unseal key, shown only now: {key} "
                     f"(also in {local.unseal_key_file}: keep it away from this machine's disk, every start "
                     "needs it back there; read docs/escrow.md before relying on a single host)")
        cosigner, manages_access = read_credentials(config.keys_dir)
        cosigner.check()
        cosigner.renew()
    except BaseException:
        local.stop()
        raise
    return cosigner, manages_access, local
