"""The embedded demo: what ``serve`` without ``--config`` does that a site configuration never does.

Only the command line turns it on (it loaded the embedded default, ``config/gateway.yaml``, and
passes a :class:`Demo`); no configuration file can. Every start says it is the demo, and not for
production. On the demo's first start (its key directory is new), before the runtime opens it:

* the key directory, and three people in it, each under a passphrase of their own shown once:
  ``demo-officer`` and ``demo-viewer``, whose identity files go to ``<data>/identities/`` (their
  private keys sit on the gateway's host: a demo), and ``demo-investigator``, whose file goes only
  where the operator asks (``--demo-investigator FILE``), never inside the data or key directory.
  Without that file its private key is not kept: the demo's recordings are sealed to it and
  nobody can unmask them. The investigator is created either way, because the demo policy seals
  faces to investigators and sealing is not optional;
* ``demo-viewer`` is granted every camera, once: a narrowing by an officer later is kept.

Every start prints viewer URLs carrying a token for ``demo-viewer``: a day's token, issued when no
valid one exists and kept in ``<data>/demo-viewer.token`` (0600: the access store keeps only
hashes, and the URL needs the secret), printed again at every start until it expires or is
revoked. Its cameras are whatever ``demo-viewer`` is granted at the time it is used.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from keys import GATEWAY_ACTOR, KeyDirectory, PrivateIdentity, write_durably

from ..config import ConfigError, GatewayConfig
from .access import Access, Denied, TokenRecord, TokenStore

DEMO_OFFICER, DEMO_VIEWER, DEMO_INVESTIGATOR = "demo-officer", "demo-viewer", "demo-investigator"
DEMO_PEOPLE = ((DEMO_OFFICER, "privacy-officer"), (DEMO_VIEWER, "viewer"), (DEMO_INVESTIGATOR, "investigator"))
DEMO_TOKEN_TTL = 24 * 3600.0  # the demo viewer's token, printed at every start while it lives
TOKEN_FILE = "demo-viewer.token"  # in the data directory, 0600
BANNER = ("DEMO MODE (serve without --config): a bundled clip as the camera; demo people made at its first start, "
          "the officer's and viewer's private keys on this host; an embedded OpenBao on this host; the viewer's "
          "token kept in the data directory. For trying the gateway, not for production: a site runs "
          "`privacy-gateway serve --config FILE` with its own people (docs/gateway.md, docs/access.md).")


@dataclass(frozen=True)
class ViewerToken:
    """The demo viewer's token as a start prints it."""

    token: str
    record: TokenRecord
    new: bool  # issued at this start (else: kept from an earlier one, still valid)
    file: Path
    granted: frozenset[str]  # the cameras demo-viewer is granted now

    def url_end(self, camera: str) -> str:
        """What follows ``/view/<camera>`` in the printed viewer URL."""
        if camera in self.granted:
            return f"#token={self.token}"
        return (f" ({DEMO_VIEWER} is not granted this camera; an officer grants it with "
                f"PUT /api/identities/{DEMO_VIEWER}/cameras)")

    def note(self) -> str:
        """Where the token came from and how long it is printed."""
        expires = self.record.public()["expires"]
        return (f"{DEMO_VIEWER}'s token: " + ("new" if self.new else "the one issued at an earlier start")
                + f", valid until {expires}; kept in {self.file} (readable by you only) and printed at each start "
                "until it expires or is revoked, then a new one is issued")


@dataclass(frozen=True)
class Demo:
    """``serve`` running the embedded default; ``investigator``: where to write the demo
    investigator's identity file on first start (None: its private key is not kept)."""

    investigator: Path | None = None

    def prepare(self, config: GatewayConfig, announce: Callable[[str], None] = print) -> bool:
        """Say it is the demo; on first start create its people and grant the viewer every camera.

        Runs before the runtime opens the key directory (the demo policy's grants need the
        investigator). Returns whether the people were created now; raises :class:`ConfigError`
        for an investigator file that cannot be used, before anything is written."""
        investigator = self._checked_file(config)
        announce(BANNER)
        if KeyDirectory.exists(config.keys_dir):
            if investigator is not None and PrivateIdentity.name_in(investigator) != DEMO_INVESTIGATOR:
                raise ConfigError(
                    f"--demo-investigator {investigator}: the demo in {config.storage.data_dir} was set up at its "
                    "first start, and its investigator with it; the option only applies to a first start. Start a "
                    "new demo (another --data DIR), or add an investigator of your own to the demo, written "
                    f"outside it: privacy-gateway keys add-identity {config.keys_dir} NAME --role investigator "
                    "--out FILE (recordings sealed from the next start on include them)")
            left = config.storage.data_dir / "identities" / f"{DEMO_INVESTIGATOR}.identity"
            if left.exists():  # written by versions before the demo kept it out of the data directory
                announce(f"WARNING: {left} is an investigator's private key inside the data directory (an earlier "
                         "version put it there): move it off this host, or delete it")
            return False
        if investigator is not None:
            if investigator.exists():
                raise ConfigError(f"--demo-investigator {investigator}: already exists; refusing to overwrite "
                                  "a private key file")
            if not investigator.parent.is_dir():
                raise ConfigError(f"--demo-investigator {investigator}: no such directory {investigator.parent}")
        self._create(config, investigator, announce)
        return True

    def _checked_file(self, config: GatewayConfig) -> Path | None:
        """The investigator's file, absolute; refused inside the data or key directory."""
        if self.investigator is None:
            return None
        path = Path(self.investigator).expanduser().resolve()
        for root, what in ((config.storage.data_dir, "data directory"), (config.keys_dir, "key directory")):
            root = Path(root).resolve()
            if path.is_relative_to(root):
                raise ConfigError(f"--demo-investigator {path}: inside the gateway's {what} {root}; an "
                                  "investigator's private key never goes there (anyone who reads the gateway's "
                                  "files could unmask): name a file elsewhere, e.g. in your home directory")
        return path

    def _create(self, config: GatewayConfig, investigator: Path | None, announce: Callable[[str], None]) -> None:
        people = {name: PrivateIdentity.generate(name, [role]) for name, role in DEMO_PEOPLE}
        # each its own passphrase: one person's secret opens nobody else's file
        phrases = {name: secrets.token_urlsafe(15) for name in people}
        files = {DEMO_OFFICER: config.storage.data_dir / "identities" / f"{DEMO_OFFICER}.identity",
                 DEMO_VIEWER: config.storage.data_dir / "identities" / f"{DEMO_VIEWER}.identity"}
        if investigator is not None:
            try:  # first: if it cannot be written, nothing of the demo exists yet
                people[DEMO_INVESTIGATOR].save(investigator, phrases[DEMO_INVESTIGATOR])
            except OSError as exc:
                raise ConfigError(f"--demo-investigator {investigator}: cannot write: {exc.strerror or exc}") from None
            files[DEMO_INVESTIGATOR] = investigator
        directory = KeyDirectory.init(config.keys_dir)
        (config.storage.data_dir / "identities").mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in (DEMO_OFFICER, DEMO_VIEWER):
            people[name].save(files[name], phrases[name])
        for identity in people.values():
            directory.add(identity.public)
        # once, here: later starts leave the viewer's cameras to the officers
        TokenStore(config.storage.data_dir / "access").grant(DEMO_VIEWER, list(config.cameras))
        announce(f"demo identities created in {config.keys_dir}, each with its own passphrase, shown only now "
                 "(give it when asked, or in PRIVACY_GATEWAY_PASSPHRASE_<NAME>, e.g. "
                 "PRIVACY_GATEWAY_PASSPHRASE_DEMO_OFFICER):")
        for name, role in DEMO_PEOPLE:
            if name in files:
                announce(f"  {name} ({role}): {files[name]}, passphrase: {phrases[name]}")
            else:
                announce(f"  {name} ({role}): private key not kept (no --demo-investigator FILE), so the demo's "
                         "recordings are sealed to a key nobody holds; to try unmasking, start a new demo "
                         "(another --data DIR) with --demo-investigator FILE outside it")

    def viewer_token(self, config: GatewayConfig, access: Access, log: Callable[[str, dict], None],
                     created: bool) -> ViewerToken | None:
        """The token the start prints for ``demo-viewer``: the kept one while it is valid, else a
        new day's token (audit-logged through ``log(action, details)`` before it is issued), kept
        for the next starts. None once an officer took ``demo-viewer`` out of the key directory.

        Blocking (audit entries and files are written durably): call it off the event loop."""
        if created:  # the grant made with the people, before the vault was open
            log("grant-cameras", {"identity": DEMO_VIEWER, "cameras": sorted(config.cameras), "by": GATEWAY_ACTOR,
                                  "via": "demo set-up"})
        if DEMO_VIEWER not in access.identities():
            return None
        file = config.storage.data_dir / TOKEN_FILE
        granted = access.store.granted(DEMO_VIEWER)
        try:
            kept = file.read_text(encoding="ascii").strip()
            record = access.store.check(kept)
            if record.identity == DEMO_VIEWER:
                return ViewerToken(kept, record, False, file, granted)
        except (OSError, UnicodeDecodeError, Denied):
            pass  # none kept, unreadable, expired or revoked: a new one
        log("issue-token", {"identity": DEMO_VIEWER, "cameras": None, "ttl": DEMO_TOKEN_TTL, "by": GATEWAY_ACTOR,
                            "via": "demo start-up"})
        token, record = access.store.issue(DEMO_VIEWER, None, DEMO_TOKEN_TTL, GATEWAY_ACTOR)
        write_durably(file, f"{token}\n".encode("ascii"), 0o600)
        return ViewerToken(token, record, True, file, granted)
