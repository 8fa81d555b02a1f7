"""The vault's objects in an S3-compatible bucket (boto3): :class:`S3Objects`.

Object ``a/b`` is the key ``PREFIX a/b`` of the bucket; the names and the contract are those of
:mod:`keys.objects`. Each operation is one S3 request (``list``: one per page of 1000):

- ``put``: PutObject; S3 answers only once the object is stored (durable when it returns).
- ``put_file``: an upload from the file, multipart above :data:`MULTIPART_BYTES`, so a large
  finished segment is never held in memory.
- ``get``: GetObject; a missing key is :class:`~keys.errors.ObjectMissing`.
- ``delete``: every version of the key, so that deleting a key file shreds it on a versioned
  bucket too (a plain DeleteObject there only hides the data behind a delete marker); a
  missing key is not an error. A version that S3 Object Lock still retains is refused by the
  store: that is an :class:`OSError` saying so.

Every failure of the store itself (unreachable, timed out, credentials refused, no such bucket)
is an :class:`OSError` whose message names the endpoint and bucket and never a credential.
Timeouts and retries are bounded (botocore's ``standard`` retry mode), so a dead store is an
error within about ``attempts * (connect_timeout + read_timeout)`` seconds, not a hang.

Object Lock (:class:`ObjectLock`): when configured, finished segments (``segments/...``) and the
audit log's copy (``audit/...``) are written with a retention (``COMPLIANCE`` or ``GOVERNANCE``) of ``days`` from the write, so that
nobody, the gateway included, can delete or replace the stored version before then. Nothing
else is locked: key files must stay deletable, that is how retention crypto-shreds. The bucket
must have been created with Object Lock enabled; :meth:`S3Objects.check` says so otherwise.

boto3 is imported when the first :class:`S3Objects` is made, so that a local vault never pays
for it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import ObjectMissing
from .objects import ObjectStore, check_name, check_prefix

__all__ = ["LOCKED_PREFIXES", "MULTIPART_BYTES", "ObjectLock", "S3Objects"]

#: files at least this large are uploaded in parts of this size (S3's smallest part is 5 MiB)
MULTIPART_BYTES = 8 << 20
#: the names Object Lock applies to: finished segments and the audit log's entries (keys.audit_mirror),
#: never key files (they are shredded) nor recordings (retention deletes them)
LOCKED_PREFIXES = ("segments/", "audit/")
#: S3 error codes of a missing key (HeadObject has no body, so only its status)
_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
_REFUSED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
            "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed"}


@dataclass(frozen=True)
class ObjectLock:
    """S3 Object Lock retention for finished segments: ``mode`` for ``days`` from each write."""

    mode: Literal["COMPLIANCE", "GOVERNANCE"] = "COMPLIANCE"
    days: int = 30

    def __post_init__(self) -> None:
        if self.mode not in ("COMPLIANCE", "GOVERNANCE"):
            raise ValueError(f"object lock mode {self.mode!r}: COMPLIANCE or GOVERNANCE")
        if not isinstance(self.days, int) or self.days < 1:
            raise ValueError(f"object lock days {self.days!r}: a whole number of days, at least 1")


def _check_prefix(prefix: str) -> str:
    if prefix and not prefix.endswith("/"):
        raise ValueError(f"bucket prefix {prefix!r}: must end with '/'")
    if prefix:
        check_name(prefix[:-1])
    return prefix


class S3Objects(ObjectStore):
    """Objects in ``bucket`` (under ``prefix``) of the S3 service at ``endpoint`` (None: AWS).

    Credentials: ``access_key_id`` and ``secret_access_key``, or (both None) boto3's own chain
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role). ``ca``: a CA
    bundle for the endpoint's TLS. ``clock`` (tests) is what retention is counted from.
    """

    def __init__(self, bucket: str, *, endpoint: str | None = None, region: str = "us-east-1",
                 access_key_id: str | None = None, secret_access_key: str | None = None, prefix: str = "",
                 lock: ObjectLock | None = None, ca: Path | None = None, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, attempts: int = 3, page_size: int = 1000,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not bucket:
            raise ValueError("bucket: required")
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("give both the access key id and the secret access key, or neither")
        self.bucket, self.endpoint, self.prefix, self.lock = bucket, endpoint, _check_prefix(prefix), lock
        self._clock, self._page = clock, {"PageSize": page_size}
        config = Config(region_name=region, connect_timeout=connect_timeout, read_timeout=read_timeout,
                        retries={"mode": "standard", "max_attempts": attempts},
                        # a service at an address of its own (SeaweedFS, MinIO) rarely has per-bucket host names
                        s3={"addressing_style": "path" if endpoint else "auto"})
        session = boto3.session.Session(aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                                        region_name=region)
        self._client = session.client("s3", endpoint_url=endpoint, config=config,
                                      verify=str(ca) if ca is not None else None)
        self._transfer = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                                        max_concurrency=4)
        self._versioned: bool | None = None

    def __str__(self) -> str:
        where = self.endpoint.rstrip("/") if self.endpoint else "s3:/"
        return f"{where}/{self.bucket}" + (f"/{self.prefix[:-1]}" if self.prefix else "")

    def __repr__(self) -> str:
        return f"S3Objects({str(self)!r})"

    @property
    def events(self):
        """The boto3 client's event system, for hooks that observe requests (perf/bench_cluster.py
        counts requests and bytes with ``before-send.s3`` and ``after-call.s3``)."""
        return self._client.meta.events

    # --- errors -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str, name: str = "") -> Iterator[None]:
        """botocore's exceptions as :class:`OSError` (or :class:`ObjectMissing`), in words that name
        the store and never a credential."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        subject = f"{self}: {what}" + (f" {name}" if name else "")
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "")) or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
            if code in _MISSING:
                raise ObjectMissing(f"{name}: no such object in {self}") from None
            if code == "NoSuchBucket":
                raise OSError(f"{subject}: the bucket does not exist") from None
            if code in _REFUSED:
                raise OSError(f"{subject}: refused ({code}): check the credentials and what they may do "
                              "in this bucket") from None
            raise OSError(f"{subject}: {code} {error.get('Message', '')}".rstrip()) from None
        except NoCredentialsError:
            raise OSError(f"{subject}: no credentials (configure secret_access_key_file, or "
                          "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)") from None
        except S3UploadFailedError as exc:  # upload_file's wrapper of a ClientError
            refused = any(code in str(exc) for code in _REFUSED)
            raise OSError(f"{subject}: " + ("refused: check the credentials and what they may do in this bucket"
                                            if refused else f"upload failed ({exc})")) from None
        except BotoCoreError as exc:  # unreachable, timed out, a broken response
            raise OSError(f"{subject}: {type(exc).__name__}: {exc}") from None

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def _retention(self, name: str) -> dict:
        if self.lock is None or not name.startswith(LOCKED_PREFIXES):
            return {}
        until = self._clock() + dt.timedelta(days=self.lock.days)
        return {"ObjectLockMode": self.lock.mode, "ObjectLockRetainUntilDate": until}

    # --- the store ----------------------------------------------------------------------------------

    def check(self) -> None:
        """Reach the bucket (and, with a lock configured, check that it has Object Lock); raises
        :class:`OSError` saying what is wrong. Made before a vault is opened, for a clear first error."""
        from botocore.exceptions import ClientError

        with self._errors("reaching the bucket"):
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:  # HeadBucket has no body: a 404 is the bucket
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                    raise OSError(f"{self}: the bucket does not exist") from None
                raise
        if self.lock is None:
            return
        with self._errors("reading the Object Lock configuration"):
            try:
                enabled = self._client.get_object_lock_configuration(Bucket=self.bucket).get(
                    "ObjectLockConfiguration", {}).get("ObjectLockEnabled")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
                    raise
                enabled = None
        if enabled != "Enabled":
            raise OSError(f"{self}: object_lock is configured but the bucket has no Object Lock (it can only be "
                          "enabled when the bucket is created)")

    def put(self, name: str, data: bytes) -> None:
        key = self._key(name)
        with self._errors("writing", name):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=bytes(data), **self._retention(name))

    def put_file(self, name: str, path: Path) -> None:
        """As :meth:`put`, streamed from the file (multipart from :data:`MULTIPART_BYTES` on)."""
        key = self._key(name)
        with self._errors("uploading", name):
            self._client.upload_file(str(path), self.bucket, key, ExtraArgs=self._retention(name) or None,
                                     Config=self._transfer)

    def get(self, name: str) -> bytes:
        key = self._key(name)
        with self._errors("reading", name):
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def exists(self, name: str) -> bool:
        key = self._key(name)
        try:
            with self._errors("looking up", name):
                self._client.head_object(Bucket=self.bucket, Key=key)
        except ObjectMissing:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        return [name for name, _, _ in self.describe(prefix)]

    def describe(self, prefix: str = "") -> list[tuple[str, int, dt.datetime]]:
        """As :meth:`list`, with each object's size and LastModified, from the same listing requests."""
        out = []
        with self._errors("listing", check_prefix(prefix) or "/"):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                           Prefix=self.prefix + prefix,
                                                                           PaginationConfig=self._page)
            for page in pages:
                for item in page.get("Contents", ()):
                    with contextlib.suppress(ValueError):  # not an object of ours (a folder marker, a hidden name)
                        out.append((check_name(item["Key"][len(self.prefix):]), int(item["Size"]),
                                    item["LastModified"]))
        return sorted(out)

    def delete(self, name: str) -> None:
        """Remove every stored version of the object; a version Object Lock retains is refused (OSError)."""
        key = self._key(name)
        if not self._is_versioned():
            with self._errors("deleting", name):
                self._client.delete_object(Bucket=self.bucket, Key=key)
            return
        with self._errors("deleting", name):
            pages = self._client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key,
                                                                                PaginationConfig=self._page)
            versions = [item["VersionId"] for page in pages
                        for item in [*page.get("Versions", ()), *page.get("DeleteMarkers", ())] if item["Key"] == key]
        for version in versions:
            try:
                with self._errors("deleting", name):
                    self._client.delete_object(Bucket=self.bucket, Key=key, VersionId=version)
            except ObjectMissing:
                continue
            except OSError:
                until = self._retained_until(key, version)
                if until is None:
                    raise
                raise OSError(f"{self}: deleting {name}: refused, S3 Object Lock retains it until "
                              f"{until.isoformat()}") from None

    def _is_versioned(self) -> bool:
        """Whether the bucket keeps versions (Object Lock implies it); asked once."""
        if self._versioned is None:
            with self._errors("reading the versioning of the bucket"):
                status = self._client.get_bucket_versioning(Bucket=self.bucket).get("Status")
            self._versioned = status in ("Enabled", "Suspended")
        return self._versioned

    def _retained_until(self, key: str, version: str) -> dt.datetime | None:
        """Until when Object Lock retains a version, if it does (None: not locked, or unknown)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            retention = self._client.get_object_retention(Bucket=self.bucket, Key=key, VersionId=version)["Retention"]
        except (ClientError, BotoCoreError, KeyError):
            return None
        until = retention.get("RetainUntilDate")
        return until if until is not None and until > self._clock() else None
