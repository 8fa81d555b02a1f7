"""Where a configuration keeps its vault: files under ``<data_dir>/vault`` (the default), or an S3 bucket.

Either way the node-local part stays in ``<data_dir>/vault``: the audit log (``audit.log``) and,
under ``segments/``, the segment being sealed and each camera's lock. With ``storage.objects.s3``
the finished segments, key files, policies and the anchor go to the bucket, each as a whole
object when it is finished (keys.S3Objects). ``serve`` seals through :func:`open_vault` with
the co-signer; the commands that read a vault (``vault verify``, ``unmask``, ...) open the same
one from the same configuration. The bucket's secret key is read here and handed to the store,
never logged.
"""

from __future__ import annotations

from pathlib import Path

from keys import (
    AuditLog,
    CoSigner,
    KeyDirectory,
    LocalObjects,
    ObjectLock,
    ObjectStore,
    S3Objects,
    StorageUnavailable,
    VaultStore,
)

from .config import GatewayConfig, s3_secret


def vault_dir(config: GatewayConfig) -> Path:
    """The node's own vault directory: the audit log, unfinished segments (and, locally, the rest)."""
    return config.storage.data_dir / "vault"


def vault_objects(config: GatewayConfig) -> ObjectStore:
    """The configured object store, reached and checked (a bucket: raises :class:`keys.StorageUnavailable`)."""
    settings = config.storage.objects
    if settings is None:
        return LocalObjects(vault_dir(config))
    s3 = settings.s3
    lock = None if s3.object_lock is None else ObjectLock(s3.object_lock.mode, s3.object_lock.days)
    objects = S3Objects(s3.bucket, endpoint=s3.endpoint, region=s3.region, access_key_id=s3.access_key_id,
                        secret_access_key=s3_secret(s3), prefix=s3.prefix, lock=lock, ca=s3.ca)
    try:
        objects.check()
    except OSError as exc:
        raise StorageUnavailable(f"storage.objects.s3: {exc}") from None
    return objects


def open_vault(config: GatewayConfig, directory: KeyDirectory | None = None, *, cosigner: CoSigner | None = None,
               manages_access: bool = False) -> VaultStore:
    """The configuration's vault: for sealing with ``cosigner`` (``directory`` required), else to read."""
    root = vault_dir(config)
    if config.storage.objects is None:
        if cosigner is not None:
            assert directory is not None
            return VaultStore.for_sealing(root, directory, cosigner, manages_access=manages_access)
        return VaultStore.open(root, directory)
    objects = vault_objects(config)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return VaultStore.from_objects(objects, root / "segments", AuditLog(root / "audit.log"), directory,
                                   create=cosigner is not None, cosigner=cosigner, manages_access=manages_access)
