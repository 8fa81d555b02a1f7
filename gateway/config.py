"""The gateway's configuration (YAML): cameras, their policies, storage, escrow, listen address, TLS, WebRTC.

Validated whole at load: unknown keys are refused and every error names its field path
(``cameras.lobby.holdback_ms: ...``). Relative paths are relative to the configuration file.
With no file, :data:`DEFAULT` (``config/gateway.yaml``) runs one demo camera on a bundled clip;
that the embedded default is the demo is known to the command line (it loaded no file), never
read from a file: a site configuration cannot turn demo identities on (``demo_identities`` is
refused with what to do instead).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import stat
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from keys import check_camera
from redaction import (
    Policy,
    PolicyError,
    StrictModel,
    format_validation_error,
    load_document,
    load_policy,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
DEFAULT = CONFIG_DIR / "gateway.yaml"
#: what a configuration that still sets the key of old versions is told
DEMO_IDENTITIES_REFUSED = (
    "demo_identities: no longer accepted: a site configuration never creates demo identities (the demo is "
    "`privacy-gateway serve` without --config). Remove the key and create your people with `privacy-gateway keys "
    "add-identity` (docs/access.md); identities an earlier demo start created stay in the key directory until "
    "`privacy-gateway keys remove-identity` takes them out")


#: query parameters of a source URL whose values are secrets (``?password=...``, ``&token=...``)
_SECRET_PARAMETER = re.compile(r"pass|pwd|token|secret|key|auth|sig|cred", re.IGNORECASE)
SECRET_SHOWN = "***"


def redact_source(source: str | None) -> str | None:
    """``source`` as it may be shown, answered or logged: an URL's ``user:password@`` becomes
    ``***@`` and the values of query parameters that name a secret (password, token, key ...)
    become ``***``. Anything else (a file path) is returned as it is."""
    if source is None or "://" not in source:
        return source
    try:
        parts = urlsplit(source)
    except ValueError:  # not an URL that can be taken apart: show only its scheme
        return source.split("://", 1)[0] + "://" + SECRET_SHOWN
    netloc = parts.netloc
    if "@" in netloc:
        netloc = SECRET_SHOWN + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAMETER.search(name) for name, _ in pairs):
            query = urlencode([(name, SECRET_SHOWN if _SECRET_PARAMETER.search(name) else value)
                               for name, value in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class ConfigError(ValueError):
    """A configuration, or state on disk it points at, that cannot be used; the message names every
    offending field path or file. ``serve`` refuses to start on it, and says so in one line."""


class ViewCheck(StrictModel):
    """Watching for a moved camera, only while its policy has privacy zones (docs/gateway.md, "A moved
    camera"): a view that stays different from the one the zones were drawn on for ``after_s`` gets
    the camera blanked until an officer confirms the zones still fit."""

    enabled: bool = True
    #: seconds a different view must last before the camera is blanked
    after_s: Annotated[float, Field(ge=1, le=3600)] = 5.0
    #: seconds between two looks at the released picture
    period_s: Annotated[float, Field(ge=0.2, le=10)] = 1.0
    #: the largest shift of the picture, as a share of its width or height, still taken for the same view
    max_shift: Annotated[float, Field(gt=0, le=0.12)] = 0.03
    #: the lowest correlation with the reference, at the best shift, still taken for the same view
    min_correlation: Annotated[float, Field(ge=-1, le=1)] = 0.4
    #: the lowest contrast, as a share of the reference's, before the lens counts as covered
    min_contrast: Annotated[float, Field(ge=0, le=1)] = 0.15
    #: the lowest sharpness, as a share of the reference's, before the lens counts as out of focus
    min_sharpness: Annotated[float, Field(ge=0, le=1)] = 0.4


class Camera(StrictModel):
    #: ``rtsp://...`` or a video file (``file://`` or a path): a file is read in a loop at its own rate;
    #: none for ``protocol: whip`` (the camera publishes to ``POST /whip/<id>``)
    source: str | None = None
    protocol: Literal["rtsp", "file", "whip"] | None = None  # None: from the source
    #: RTSP transport
    transport: Literal["tcp", "udp"] = "tcp"
    #: redaction policy file (YAML); None: the built-in default
    policy: Path | None = None
    #: the longest a frame waits for its redaction decision before it is released blanked
    holdback_ms: Annotated[int, Field(ge=20, le=10_000)] = 500
    #: frames waiting for analysis before the oldest is dropped
    queue_frames: Annotated[int, Field(ge=1, le=600)] = 16
    #: WebRTC renditions offered to viewers
    renditions: tuple[Literal["h264", "vp8"], ...] = ("h264", "vp8")
    record: bool = True
    #: a moved camera (re-aimed, covered, out of focus) is blanked while its zones may miss
    view_check: ViewCheck = Field(default_factory=ViewCheck)

    @model_validator(mode="after")
    def _protocol(self) -> Camera:
        if self.protocol == "whip":
            if self.source is not None:
                raise ValueError("a whip camera has no source: it publishes to the gateway")
            return self
        if self.source is None:
            raise ValueError("source: required (an rtsp:// URL or a video file), unless protocol is whip")
        inferred = "rtsp" if self.source.startswith(("rtsp://", "rtsps://")) else "file"
        if self.protocol is not None and self.protocol != inferred:
            raise ValueError(f"protocol {self.protocol} does not match source {redact_source(self.source)!r}")
        return self

    @property
    def kind(self) -> str:
        if self.protocol == "whip" or self.source is None:
            return "whip"
        return self.protocol or ("rtsp" if self.source.startswith(("rtsp://", "rtsps://")) else "file")


class Listen(StrictModel):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    #: reverse proxies whose ``X-Forwarded-For`` names the client (networks, e.g. ``10.0.0.0/8``);
    #: none by default: the connection's address is the client's
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: open HTTP connections; at the cap the oldest one waiting for a request head is closed to make
    #: room, or (none waits) the new one is answered 503 and closed
    max_connections: Annotated[int, Field(ge=1, le=65536)] = 256
    #: open HTTP connections from one address (IPv6: one /64; trusted proxies are not capped); then 429
    max_connections_per_address: Annotated[int, Field(ge=1, le=65536)] = 32
    #: seconds a connection has to send a whole request head, from its accept and from the end of each
    #: response; then 408 and closed
    head_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    #: seconds an idle keep-alive connection stays open (uvicorn's timeout_keep_alive)
    keep_alive_s: Annotated[int, Field(ge=1, le=300)] = 5
    #: largest request head (request line and headers) in bytes (h11's limit); a larger one gets 400
    max_head_bytes: Annotated[int, Field(ge=1024, le=1_048_576)] = 16_384


class WebRtc(StrictModel):
    """Where WebRTC (WHEP viewers, WHIP publishers) gathers ICE candidates and whom it talks to
    (:mod:`gateway.webrtc.ice`; defaults in docs/gateway.md, "WebRTC networks")."""

    #: local addresses to gather host candidates on; none: ``listen.host``'s (every interface for 0.0.0.0 or ::)
    local_addresses: tuple[str, ...] | None = None
    #: networks a peer's candidates must lie in (others are ignored); none: this host's own addresses when
    #: every local address is loopback, else any unicast address but loopback, link-local, multicast, reserved
    remote_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None

    @field_validator("local_addresses")
    @classmethod
    def _local(cls, addresses: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if addresses is None:
            return None
        if not addresses:
            raise ValueError("at least one address; leave it out to follow listen.host")
        canonical = []
        for text in addresses:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                raise ValueError(f"{text!r} is not an IP address") from None
            if address.is_unspecified or address.is_multicast:
                raise ValueError(f"{text} is not one address of this host; leave local_addresses out to "
                                 "gather on every interface")
            if address.version == 6 and address.is_link_local:
                raise ValueError(f"{text}: link-local IPv6 addresses cannot be gathered on (no interface scope)")
            canonical.append(str(address))
        return tuple(dict.fromkeys(canonical))

    @field_validator("remote_networks", mode="before")
    @classmethod
    def _remote(cls, networks: object) -> object:
        if networks is None or not isinstance(networks, list | tuple):
            return networks
        if not networks:
            raise ValueError("at least one network; leave it out for the default")
        parsed = []
        for text in networks:
            try:
                parsed.append(ipaddress.ip_network(str(text)))
            except ValueError as exc:
                raise ValueError(f"{text!r}: {exc}") from None
        return tuple(parsed)


class RtspEgress(StrictModel):
    """Redacted streams for video-management systems at ``rtsp://HOST:PORT/<camera>`` (digest auth: token id / secret)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8554
    #: sessions (SETUP) across all cameras and clients; then 503 Retry-After
    max_sessions: Annotated[int, Field(ge=1, le=4096)] = 64
    #: sessions one client address holds (IPv6: one /64); then 453
    max_sessions_per_address: Annotated[int, Field(ge=1, le=4096)] = 32
    #: sessions one identity holds, over all its tokens; then 453
    max_sessions_per_principal: Annotated[int, Field(ge=1, le=4096)] = 16
    #: open connections; null: twice max_sessions, at least 16. Then the oldest connection not yet
    #: logged in is closed to make room, or (none) the new one is answered 503 and closed
    max_connections: Annotated[int, Field(ge=1, le=65536)] | None = None
    #: open connections from one client address (IPv6: one /64); then 503 and closed
    max_connections_per_address: Annotated[int, Field(ge=1, le=65536)] = 16
    #: seconds a new connection has to authenticate (OPTIONS and failed logins do not count)
    auth_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0


class SessionLimits(StrictModel):
    """Caps on WebRTC sessions (WHEP viewers, WHIP publishers), connected or still connecting:
    over one, an offer is answered 429 (the client's own caps) or 503 (all taken) with Retry-After."""

    #: sessions in all
    max_sessions: Annotated[int, Field(ge=1, le=4096)] = 64
    #: sessions one client address holds (IPv6: one /64; behind listen.trusted_proxies, the forwarded client's)
    max_sessions_per_address: Annotated[int, Field(ge=1, le=4096)] = 16
    #: sessions one identity holds, over all its tokens
    max_sessions_per_principal: Annotated[int, Field(ge=1, le=4096)] = 16

class Tls(StrictModel):
    cert: Path
    key: Path


class ObjectLockSettings(StrictModel):
    """S3 Object Lock for finished vault segments (never key files: retention shreds those)."""

    #: COMPLIANCE: nobody can delete or shorten before the date; GOVERNANCE: who holds
    #: s3:BypassGovernanceRetention can
    mode: Literal["COMPLIANCE", "GOVERNANCE"] = "COMPLIANCE"
    #: days each segment is retained from its upload
    days: Annotated[int, Field(ge=1, le=36_500)]


class S3Storage(StrictModel):
    """An S3-compatible bucket for the vault's objects (docs/vault-format.md, "The vault in S3")."""

    #: the service's URL (``https://s3.example.net``); none: AWS S3 of ``region``
    endpoint: str | None = None
    bucket: Annotated[str, Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$")]
    region: str = "us-east-1"
    #: with ``secret_access_key_file``; both none: boto3's chain (AWS_ACCESS_KEY_ID and
    #: AWS_SECRET_ACCESS_KEY in the environment, a profile, an instance role)
    access_key_id: str | None = None
    #: a file holding the secret key alone, readable by its owner only (0600)
    secret_access_key_file: Path | None = None
    #: keys of the vault's objects start with this (``site-a/``); empty: the bucket's root
    prefix: Annotated[str, Field(pattern=r"^([A-Za-z0-9_-][A-Za-z0-9._-]*/)*$")] = ""
    #: CA certificate of the endpoint's TLS
    ca: Path | None = None
    object_lock: ObjectLockSettings | None = None

    @model_validator(mode="after")
    def _credentials(self) -> S3Storage:
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint: an http:// or https:// URL, not {self.endpoint!r}")
        if (self.access_key_id is None) != (self.secret_access_key_file is None):
            raise ValueError("access_key_id and secret_access_key_file go together (or leave both out to use "
                             "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
        return self


class ObjectStorage(StrictModel):
    """Where the vault's objects live when not under ``data_dir``; only ``s3`` for now."""

    s3: S3Storage


class Storage(StrictModel):
    #: everything the gateway keeps: keys/, vault/, recordings/, access/ (and, in the demo, identities/)
    data_dir: Path = Path("data")
    #: the vault's finished segments, key files, policies and anchor in an object store; none:
    #: files under <data_dir>/vault. The audit log and the segment being sealed stay in
    #: <data_dir>/vault either way
    objects: ObjectStorage | None = None
    #: seconds per recording file (and per vault segment of its sealed originals)
    recording_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    #: x264 preset of each camera's one H.264 encode (its recording, WHEP and RTSP stream): at
    #: 720p30 superfast takes about half the CPU of veryfast for about a quarter more bytes
    #: (perf/bench_gateway.py shows the encoder's share per camera)
    recording_preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] = "superfast"
    #: the key directory (public keys and the gateway signing key); default: <data_dir>/keys
    keys: Path | None = None
    #: seconds between retention runs (expired segments shredded, expired recordings deleted, quota kept)
    retention_check_s: Annotated[float, Field(gt=0, le=86_400)] = 3600.0
    #: most the data directory may hold; over it, the oldest finished recordings are deleted. None: no quota
    quota_gb: Annotated[float, Field(gt=0)] | None = None


class Escrow(StrictModel):
    """The co-signer (OpenBao) every sealed track also needs (docs/escrow.md).

    With no ``address``, ``serve`` runs an embedded OpenBao on loopback (storage under
    ``<data_dir>/openbao``), initialised and unsealed on first start: fine for trying the
    gateway, not a separation of duties. In production ``address`` points at an OpenBao
    cluster on other hosts."""

    #: an external OpenBao (``https://...``), or every node of an OpenBao cluster (a list, tried
    #: in turn when one cannot serve); none: the embedded one
    address: tuple[str, ...] | None = None
    #: its transit mount
    mount: str = "transit"
    #: CA certificate of its TLS
    ca: Path | None = None
    #: file holding the gateway's token (external only; see docs/escrow.md for its policy)
    token_file: Path | None = None
    #: whether that token also maintains people's access (ACCESS_POLICY); else officers do
    manage_access: bool = False
    #: the embedded OpenBao's loopback port (its cluster port is the next one)
    port: Annotated[int, Field(ge=1024, le=65534)] = 8200

    @field_validator("address", mode="before")
    @classmethod
    def _nodes(cls, value: object) -> object:
        """One URL, or a list of them (a cluster's nodes): kept as the list of nodes."""
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and not value:
            raise ValueError("address: at least one URL")
        return value

    @model_validator(mode="after")
    def _external(self) -> Escrow:
        if self.address is not None:
            for node in self.address:
                if not node.startswith(("http://", "https://")) or "," in node:
                    raise ValueError(f"address: an http:// or https:// URL, or a list of them, not {node!r}")
            if len(set(self.address)) != len(self.address):
                raise ValueError("address: a node is listed twice")
            if self.token_file is None:
                raise ValueError("token_file: required with an external address (the gateway's token)")
        elif self.token_file is not None or self.ca is not None:
            raise ValueError("token_file and ca go with an external address")
        return self


#: a node's name in the cluster (the lease table's owner column, the metrics' ``node`` label)
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: a password written into a conninfo (``password=...``) or into a URL (``user:secret@``)
_CONNINFO_PASSWORD = re.compile(r"(^|\s)password\s*=|://[^/@\s]*:[^/@\s]*@", re.IGNORECASE)


class Cluster(StrictModel):
    """Several nodes sharing the configured cameras through leases in PostgreSQL (docs/deploy.md).

    Absent: this node runs every camera, as a single gateway does, and needs no database."""

    #: this node's name, unique in the cluster
    node: str
    #: this node's base URL, where the other nodes send viewers of its cameras (``https://gw-2.example:8080``)
    url: str
    #: where the other nodes send RTSP clients of this node's cameras (``rtsp://gw-2.example:8554``); default:
    #: ``url``'s host with ``rtsp.port`` (none without an ``rtsp`` section)
    rtsp_url: str | None = None
    #: the PostgreSQL connection (a libpq conninfo or ``postgresql://`` URL) without a password: that comes
    #: from ``password_file`` or libpq's own means (PGPASSWORD, ~/.pgpass)
    database: str
    #: a file holding the database password (its first line)
    password_file: Path | None = None
    #: the most cameras this node runs
    capacity: Annotated[int, Field(ge=1, le=10_000)] = 16
    #: seconds a camera lease lasts; renewed every third of it. A node that could not renew stops its
    #: cameras a third of it before its leases end; a dead node's cameras move after at most about this long
    lease_s: Annotated[float, Field(ge=1.5, le=300)] = 6.0

    @field_validator("node")
    @classmethod
    def _node(cls, value: str) -> str:
        if not _NODE_NAME.fullmatch(value):
            raise ValueError("1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"an http:// or https:// base URL, not {value!r}")
        return value.rstrip("/")

    @field_validator("rtsp_url")
    @classmethod
    def _rtsp_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if (parts.scheme != "rtsp" or not parts.hostname or parts.username is not None or parts.path.strip("/")
                or parts.query or parts.fragment):
            raise ValueError(f"an rtsp://host[:port] address without path or credentials, not {value!r}")
        return value.rstrip("/")

    @field_validator("database")
    @classmethod
    def _database(cls, value: str) -> str:
        if _CONNINFO_PASSWORD.search(value):
            raise ValueError("no password here: put it in password_file (or PGPASSWORD, ~/.pgpass)")
        return value


class GatewayConfig(StrictModel):
    cameras: dict[str, Camera]
    storage: Storage = Field(default_factory=Storage)
    #: the co-signer: none configured means the embedded OpenBao
    escrow: Escrow = Field(default_factory=Escrow)
    listen: Listen = Field(default_factory=Listen)
    tls: Tls | None = None
    #: RTSP egress; none unless configured
    rtsp: RtspEgress | None = None
    #: caps on WHEP viewers' sessions
    whep: SessionLimits = Field(default_factory=SessionLimits)
    #: caps on WHIP publishers' sessions
    whip: SessionLimits = Field(default_factory=SessionLimits)
    #: STUN/TURN URLs offered to WebRTC peers; none by default (loopback and LAN candidates only)
    ice_servers: tuple[str, ...] = ()
    #: the addresses WebRTC gathers on and the networks of the peers it talks to
    webrtc: WebRtc = Field(default_factory=WebRtc)
    #: cameras shared with other nodes through PostgreSQL leases; none: this node runs every camera
    cluster: Cluster | None = None

    @field_validator("cameras")
    @classmethod
    def _camera_ids(cls, cameras: dict[str, Camera]) -> dict[str, Camera]:
        if not cameras:
            raise ValueError("at least one camera is needed")
        for name in cameras:
            check_camera(name)
        return cameras

    @model_validator(mode="after")
    def _rtsp_address(self) -> GatewayConfig:
        if self.cluster is not None and self.rtsp is not None and self.rtsp.port == 0 and self.cluster.rtsp_url is None:
            raise ValueError("cluster.rtsp_url: required with rtsp.port 0 (the other nodes send RTSP clients there)")
        return self

    @property
    def keys_dir(self) -> Path:
        return self.storage.keys or self.storage.data_dir / "keys"

    @property
    def rtsp_address(self) -> str | None:
        """Where other nodes of a cluster send RTSP clients of this node's cameras: ``cluster.rtsp_url``, or
        the host of ``cluster.url`` with ``rtsp.port``; None without RTSP egress (or without a cluster)."""
        if self.cluster is None or self.rtsp is None:
            return None
        if self.cluster.rtsp_url is not None:
            return self.cluster.rtsp_url
        host = urlsplit(self.cluster.url).hostname
        return f"rtsp://{f'[{host}]' if ':' in host else host}:{self.rtsp.port}"


def _resolve(config: GatewayConfig, base: Path) -> GatewayConfig:
    """Make every relative path relative to the configuration file's directory."""

    def at(path: Path | None) -> Path | None:
        return None if path is None or path.is_absolute() else base / path

    cameras = {}
    for name, camera in config.cameras.items():
        source = camera.source
        if camera.kind == "file":
            raw = Path(source.removeprefix("file://"))
            source = str(raw if raw.is_absolute() else base / raw)
        cameras[name] = camera.model_copy(update={"source": source, "policy": at(camera.policy) or camera.policy})
    objects = config.storage.objects
    if objects is not None:
        s3 = objects.s3
        objects = ObjectStorage(s3=s3.model_copy(update={
            "secret_access_key_file": at(s3.secret_access_key_file) or s3.secret_access_key_file,
            "ca": at(s3.ca) or s3.ca}))
    storage = config.storage.model_copy(update={
        "data_dir": at(config.storage.data_dir) or config.storage.data_dir,
        "keys": at(config.storage.keys) or config.storage.keys, "objects": objects})
    tls = None if config.tls is None else Tls(cert=at(config.tls.cert) or config.tls.cert,
                                              key=at(config.tls.key) or config.tls.key)
    escrow = config.escrow.model_copy(update={"ca": at(config.escrow.ca) or config.escrow.ca,
                                              "token_file": at(config.escrow.token_file) or config.escrow.token_file})
    cluster = None if config.cluster is None else config.cluster.model_copy(
        update={"password_file": at(config.cluster.password_file) or config.cluster.password_file})
    return config.model_copy(update={"cameras": cameras, "storage": storage, "tls": tls, "escrow": escrow,
                                     "cluster": cluster})


def _unbindable(address: str) -> str | None:
    """Why a UDP socket cannot bind ``address`` (not an address of this host, say); None if it can."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _s3_files(s3: S3Storage) -> list[str]:
    """What is wrong with the files the S3 settings name: missing, or a secret others may read."""
    problems = []
    if s3.ca is not None and not s3.ca.is_file():
        problems.append(f"storage.objects.s3.ca: no such file {s3.ca}")
    if (secret := s3.secret_access_key_file) is not None:
        try:
            mode = stat.S_IMODE(secret.stat().st_mode)
        except OSError as exc:
            problems.append(f"storage.objects.s3.secret_access_key_file: cannot read {secret}: {exc.strerror}")
        else:
            if mode & 0o077:
                problems.append(f"storage.objects.s3.secret_access_key_file: {secret} is readable by others "
                                f"(mode {mode:o}); chmod 600 it")
    return problems


def s3_secret(s3: S3Storage) -> str | None:
    """The secret access key from its file (None: boto3's own chain); never logged or shown."""
    if s3.secret_access_key_file is None:
        return None
    try:
        secret = s3.secret_access_key_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"storage.objects.s3.secret_access_key_file: cannot read "
                          f"{s3.secret_access_key_file}: {exc.strerror or exc}") from None
    if not secret or any(c.isspace() for c in secret):
        raise ConfigError(f"storage.objects.s3.secret_access_key_file: {s3.secret_access_key_file} must hold "
                          "the secret key alone, on one line")
    return secret


def load_config(path: Path | None = None, data_dir: Path | None = None) -> tuple[GatewayConfig, dict[str, Policy]]:
    """The configuration and every camera's policy, all validated; raises :class:`ConfigError`."""
    path = Path(path) if path is not None else DEFAULT
    try:
        data = load_document(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if "demo_identities" in data:
        raise ConfigError(f"{path}: invalid configuration\n{DEMO_IDENTITIES_REFUSED}")
    try:
        config = _resolve(GatewayConfig.model_validate(data), path.resolve().parent)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid configuration\n{format_validation_error(exc)}") from None
    if data_dir is not None:
        config = config.model_copy(update={"storage": config.storage.model_copy(update={"data_dir": data_dir})})
    policies, problems = {}, []
    for name, camera in config.cameras.items():
        try:
            policies[name] = load_policy(camera.policy)
        except PolicyError as exc:
            problems.append(f"cameras.{name}.policy: {exc}")
        if camera.kind == "file" and not Path(camera.source).is_file():
            problems.append(f"cameras.{name}.source: no such file {camera.source}")
    if config.tls is not None:
        for field in ("cert", "key"):
            if not getattr(config.tls, field).is_file():
                problems.append(f"tls.{field}: no such file {getattr(config.tls, field)}")
    for field in ("ca", "token_file"):
        if (file := getattr(config.escrow, field)) is not None and not file.is_file():
            problems.append(f"escrow.{field}: no such file {file}")
    if config.storage.objects is not None:
        problems += _s3_files(config.storage.objects.s3)
    if config.cluster is not None and (file := config.cluster.password_file) is not None and not file.is_file():
        problems.append(f"cluster.password_file: no such file {file}")
    for address in config.webrtc.local_addresses or ():
        if (why := _unbindable(address)) is not None:
            problems.append(f"webrtc.local_addresses: cannot gather on {address}: {why}")
    if problems:
        raise ConfigError(f"{path}: invalid configuration\n" + "\n".join(problems))
    return config, policies
