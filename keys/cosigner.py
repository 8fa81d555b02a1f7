"""The online co-signer: OpenBao's transit engine holds a second key to every sealed track.

Every track of every segment is sealed under a key that needs two things (record.py): the
segment's data key, which the policy's quorum of identities unwraps (HPKE, wrap.py), and a
random 32-byte *share*, which the gateway had OpenBao's transit engine encrypt and which only
OpenBao can decrypt. The transit key is one per (vault, camera, class, segment), derived per
track: the decrypt request must name the track's context (camera, segment, class, track), so
one request opens one track, and OpenBao's audit device logs it before it answers. Deleting
the transit key crypto-shreds the segment for good; no copy of the vault's files undoes it.

Who may ask for what is OpenBao's to enforce, not this program's:

- the gateway's token (:data:`GATEWAY_POLICY`) may encrypt and create, read and delete the
  ``pg-`` transit keys, never decrypt; in the embedded default it may also maintain people's
  access (:data:`ACCESS_POLICY`), which a production layout keeps with the officers instead;
- each identity has its own JWT auth mount whose only validation key is that identity's
  Ed25519 public key (a mount-wide key list would let any listed key sign for any subject),
  and its own ACL policy allowing ``transit/decrypt`` on exactly the cameras and classes whose
  grants name one of its roles (:func:`grant_access`).

The client speaks OpenBao's HTTP API with httpx. Availability problems (no answer, sealed,
standby, audit device failing) raise :class:`CoSignerUnavailable` with a plain message; every
refusal raises one opaque :class:`CoSignerRefused` (the reason is in OpenBao's audit log).

A co-signer may be a cluster (integrated Raft, docs/escrow.md): the client is given every node's
address and sends each request to the node that last served, else to the next one in the list,
on any sign that *that node* cannot serve: no connection, a timeout, a 5xx or 429 (sealed, no
active node, audit device failing), or a redirect (a standby that cannot forward to an active
node). A 4xx answer is the cluster's answer, the same on every node: it is never sent elsewhere.
Every request, whatever it asks (a seal, a checkpoint of the audit log, a login, a share), goes
through that one path, :meth:`CoSigner._send`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import CoSignerRefused, CoSignerUnavailable
from .identity import PrivateIdentity, PublicIdentity, canonical, fingerprint

__all__ = ["ACCESS_POLICY", "GATEWAY_POLICY", "CoSigner", "grant_access", "nodes_of", "revoke_access",
           "segment_key", "set_up", "share_context"]

MOUNT = "transit"
# a decrypt rule of an identity's ACL policy: the key prefix of one camera and class (face, plate, zone.<name>.)
_RULE = re.compile(r'path "[^"/]+/decrypt/(pg-[0-9a-f]{16}-(?:[a-z]+|zone\.[a-z0-9-]+\.)-[0-9a-f]{16}-)\*"')
ISSUER = "privacy-gateway"
AUDIENCE = "openbao"
LOGIN_SECONDS = 60  # lifetime of the JWT an identity signs to log in
TOKEN_TTL = "15m"  # lifetime of the token an identity gets for one unmask
#: seconds grant_access goes on retrying a policy write that other writers keep changing under it
ACCESS_PATIENCE = 30.0

#: what the gateway's token may do with transit: seal (encrypt, creating the segment's key on
#: first use), look a key up, and shred (allow deletion in its config, delete); never decrypt,
#: export or back up (those paths are not granted)
GATEWAY_POLICY = """
path "{mount}/encrypt/pg-*" {{ capabilities = ["create", "update"] }}
path "{mount}/keys/pg-*" {{ capabilities = ["read", "update", "delete"] }}
path "auth/token/renew-self" {{ capabilities = ["update"] }}
path "auth/token/lookup-self" {{ capabilities = ["read"] }}
path "pg-kv/data/audit/*" {{ capabilities = ["create", "update", "read"] }}
"""

#: where the audit log's checkpoints are kept: a KV version 2 mount (every version is kept, and
#: neither the gateway's nor people's tokens may delete or destroy one)
KV_MOUNT = "pg-kv"
#: versions of a checkpoint read back: a rollback written over it stays visible this long
CHECKPOINT_HISTORY = 10
_AUDIT_RULE = 'path "pg-kv/data/audit/*" { capabilities = ["create", "update", "read"] }\n'

#: maintaining people's access: their JWT mounts and ACL policies (grant_access, revoke_access)
ACCESS_POLICY = """
path "sys/auth" { capabilities = ["read"] }
path "sys/auth/pg-id-*" { capabilities = ["create", "update", "delete", "sudo"] }
path "auth/pg-id-*" { capabilities = ["create", "update", "read", "delete"] }
path "sys/policies/acl/pg-id-*" { capabilities = ["create", "update", "read", "delete"] }
"""


def _camera_tag(camera: str) -> str:
    # camera ids may contain '.', '-' and '_', so a name built from them could be a prefix of
    # another camera's; a digest cannot, and keeps ACL globs exact
    return hashlib.sha256(camera.encode()).hexdigest()[:16]


def key_prefix(vault: str, camera: str, cls: str) -> str:
    """The common prefix of one camera's and class's transit key names in one vault.

    A zone's class ``zone:<name>`` is written ``zone.<name>.``: zone names hold only ``a-z0-9-``,
    so no zone's prefix is the beginning of another's (an ACL glob on one never covers another)."""
    tag = cls if ":" not in cls else cls.replace(":", ".", 1) + "."
    return f"pg-{vault}-{tag}-{_camera_tag(camera)}-"


def camera_prefix(prefix: str, vault: str, camera: str) -> bool:
    """Whether ``prefix`` (a :func:`key_prefix`) is of this vault's camera, whatever its class."""
    return prefix.startswith(f"pg-{vault}-") and prefix.endswith(f"-{_camera_tag(camera)}-")


def segment_key(vault: str, camera: str, cls: str, segment: int) -> str:
    """The transit key of one segment's class: deleting it shreds that class of the segment."""
    return f"{key_prefix(vault, camera, cls)}{segment:08d}"


def share_context(camera: str, segment: int, cls: str, track: int) -> bytes:
    """The transit key derivation context of one track: a decrypt must name exactly this."""
    return canonical({"camera": camera, "segment": segment, "class": cls, "track": track})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mount_of(identity: PublicIdentity) -> str:
    return f"pg-id-{fingerprint(identity.signing)}"


def nodes_of(address: str | Sequence[str]) -> tuple[str, ...]:
    """A co-signer's node addresses, in order, without repeats: from one URL, a comma-separated
    list of them (as a vault's escrow.json and ``--escrow`` carry it) or a list."""
    items = address.split(",") if isinstance(address, str) else [str(item) for item in address]
    nodes = tuple(dict.fromkeys(item.strip().rstrip("/") for item in items if item.strip()))
    if not nodes:
        raise ValueError("no co-signer address given")
    return nodes


#: why a node cannot serve, by its HTTP status (any other 5xx: "fails", any 3xx: a standby's redirect)
_CANNOT_SERVE = {
    429: "is a standby or over its rate limit",
    500: "cannot write its audit log or has no active node",
    501: "is not initialised",
    502: "has no active node",
    503: "is sealed or has no active node",
}
#: GET sys/health: a standby (429) forwards to the active node, so it serves too
_HEALTH = {200: None, 429: None, 473: None, 501: "is not initialised", 503: "is sealed"}


def _serves(status: int) -> str | None:
    """None if an answer with this status is the cluster's own; else why this node cannot serve."""
    if 300 <= status < 400:
        return f"is a standby that cannot reach an active node (HTTP {status})"
    if status == 429 or status >= 500:
        return f"{_CANNOT_SERVE.get(status, 'fails')} (HTTP {status})"
    return None


def _health(status: int) -> str | None:
    return _HEALTH.get(status, f"is not active (HTTP {status})")


class CoSigner:
    """A client of one OpenBao server, or of a cluster's nodes, and one transit mount."""

    def __init__(self, address: str | Sequence[str], token: str | None = None, *, mount: str = MOUNT,
                 ca: Path | None = None, timeout: float = 10.0, connect_timeout: float = 3.0) -> None:
        """``address``: one node's URL, or every node's (a list, or URLs joined by commas).
        ``timeout``: seconds a node may take to answer, ``connect_timeout`` to accept the
        connection; a request tried at every node is bounded by their sum times the nodes."""
        self.address, self.mount, self.token = address, mount, token
        self._tls = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
        self._timeout = httpx.Timeout(timeout, connect=min(connect_timeout, timeout))
        self.requests = 0  # HTTP requests made (what the tests and benchmarks count)

    @property
    def address(self) -> str:
        """The nodes' addresses joined by commas (one for a single server): what a vault records."""
        return ",".join(self.nodes)

    @address.setter
    def address(self, value: str | Sequence[str]) -> None:
        self.nodes = nodes_of(value)
        self._current = 0  # the node that served last: asked first

    @property
    def node(self) -> str:
        """The node asked first: the one that served the last request."""
        return self.nodes[self._current]

    def _send(self, method: str, path: str, body: dict | None = None, token: str | None = None,
              judge: Callable[[int], str | None] = _serves) -> httpx.Response:
        """The answer of the first node, from the one that served last, that can serve (``judge``
        says why not); raises :class:`CoSignerUnavailable` naming every node and why, if none can."""
        headers = {"X-Vault-Token": token or self.token} if token or self.token else {}
        failures = []
        for step in range(len(self.nodes)):
            index = (self._current + step) % len(self.nodes)
            self.requests += 1
            try:
                # a connection per call: nothing to close, and a node restarted in between is simply reached again
                with httpx.Client(base_url=f"{self.nodes[index]}/v1/", timeout=self._timeout, verify=self._tls,
                                  follow_redirects=False) as http:
                    reply = http.request(method, path, json=body, headers=headers)
            except httpx.HTTPError:
                failures.append((self.nodes[index], "does not answer"))
                continue
            if (why := judge(reply.status_code)) is not None:
                failures.append((self.nodes[index], why))
                continue
            self._current = index
            return reply
        if len(failures) == 1:
            raise CoSignerUnavailable(f"the co-signer (OpenBao) at {failures[0][0]} {failures[0][1]}")
        raise CoSignerUnavailable(f"the co-signer (OpenBao) answers at none of its {len(failures)} nodes: "
                                  + "; ".join(f"{node} {why}" for node, why in failures))

    def _call(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
        reply = self._send(method, path, body, token)
        if reply.status_code >= 400:
            raise CoSignerRefused("the co-signer refused the request")
        return reply.json() if reply.content else {}

    def check(self) -> None:
        """Raise :class:`CoSignerUnavailable` unless OpenBao answers, initialised and unsealed
        (at some node: an active one, or a standby, which forwards to the active one)."""
        self._send("GET", "sys/health", judge=_health)

    # --- the gateway's side -------------------------------------------------------------------

    def seal_shares(self, key: str, items: Iterable[tuple[bytes, bytes]]) -> list[str]:
        """Encrypt ``(context, share)`` pairs under the derived transit ``key`` in one request
        (the key is created, derived, on first use); returns the ciphertexts in order."""
        batch = [{"context": _b64(context), "plaintext": _b64(share)} for context, share in items]
        reply = self._call("POST", f"{self.mount}/encrypt/{key}", {"batch_input": batch})
        results = reply.get("data", {}).get("batch_results", [])
        if len(results) != len(batch) or any("error" in r and r["error"] for r in results):
            raise CoSignerRefused("the co-signer refused the request")
        return [str(r["ciphertext"]) for r in results]

    def key_exists(self, key: str) -> bool:
        try:
            self._call("GET", f"{self.mount}/keys/{key}")
        except CoSignerRefused:
            return False
        return True

    def delete_key(self, key: str) -> bool:
        """Destroy a transit key (crypto-shredding); False if there was none."""
        if not self.key_exists(key):
            return False
        self._call("POST", f"{self.mount}/keys/{key}/config", {"deletion_allowed": True})
        self._call("DELETE", f"{self.mount}/keys/{key}")
        return True

    # --- the audit log's checkpoints (KV version 2, check-and-set) ------------------------------

    def checkpoint(self, vault: str, seq: int, head: str, token: str | None = None) -> None:
        """Record that the vault's audit log reached entry ``seq`` (line digest ``head``), unless a
        later entry is recorded already; check-and-set, so two writers never undo each other."""
        for _ in range(5):
            current, version = self._checkpoint(vault, token)
            if current is not None and current[0] >= seq:
                return
            try:
                self._call("POST", f"{KV_MOUNT}/data/audit/{vault}",
                           {"options": {"cas": version}, "data": {"seq": seq, "head": head}}, token=token)
                return
            except CoSignerRefused:
                continue  # another writer got there first: read again
        raise CoSignerRefused("the co-signer refused the request")

    def _checkpoint(self, vault: str, token: str | None, version: int | None = None) -> tuple[tuple[int, str] | None, int]:
        path = f"{KV_MOUNT}/data/audit/{vault}" + ("" if version is None else f"?version={version}")
        try:
            reply = self._call("GET", path, token=token)
        except CoSignerRefused:  # none yet (404), or that version deleted
            return None, 0
        data = reply.get("data") or {}
        values, meta = data.get("data") or {}, data.get("metadata") or {}
        try:
            found = (int(values["seq"]), str(values["head"]))
        except (KeyError, TypeError, ValueError):
            found = None
        return found, int(meta.get("version") or 0)

    def checkpoints(self, vault: str, token: str | None = None) -> list[tuple[int, str, int]]:
        """The audit log's checkpoints the co-signer keeps: ``(seq, head, version)``, the latest
        :data:`CHECKPOINT_HISTORY` versions (a lower seq after a higher one is a rollback)."""
        latest, version = self._checkpoint(vault, token)
        if latest is None:
            return []
        out = [(*latest, version)]
        for older in range(version - 1, max(0, version - CHECKPOINT_HISTORY), -1):
            found, _ = self._checkpoint(vault, token, older)
            if found is not None:
                out.append((*found, older))
        return out

    def revoke_self(self) -> None:
        """Revoke this client's token (the root token, once set-up is done)."""
        self._call("POST", "auth/token/revoke-self", {})

    def renew(self) -> None:
        """Renew the gateway's periodic token (done at every start, so it never lapses in use)."""
        self._call("POST", "auth/token/renew-self", {})

    # --- an investigator's side -----------------------------------------------------------------

    def login(self, identity: PrivateIdentity) -> str:
        """A short-lived token for ``identity``: it signs a JWT with its own Ed25519 key."""
        now = int(time.time())
        head = _b64url(json.dumps({"alg": "EdDSA", "typ": "JWT"}).encode())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": identity.public.name, "iat": now, "nbf": now - 5,
                  "exp": now + LOGIN_SECONDS}
        body = _b64url(json.dumps(claims).encode())
        signature = _b64url(identity.signing.sign(f"{head}.{body}".encode()))
        reply = self._call("POST", f"auth/{_mount_of(identity.public)}/login",
                           {"role": "unmask", "jwt": f"{head}.{body}.{signature}"})
        try:
            return str(reply["auth"]["client_token"])
        except (KeyError, TypeError):
            raise CoSignerRefused("the co-signer refused the request") from None

    def open_share(self, token: str, key: str, context: bytes, ciphertext: str) -> bytes:
        """Decrypt one track's share: one request, one track, logged by OpenBao before it answers."""
        reply = self._call("POST", f"{self.mount}/decrypt/{key}", {"ciphertext": ciphertext, "context": _b64(context)},
                           token=token)
        try:
            return base64.b64decode(reply["data"]["plaintext"], validate=True)
        except (KeyError, TypeError, ValueError):
            raise CoSignerRefused("the co-signer refused the request") from None


# --- set-up and people's access (a token with ACCESS_POLICY, or root during set-up) -----------------

def set_up(admin: CoSigner, embedded: bool) -> str:
    """Mount transit (if not yet), write the gateway's policies and return a new periodic gateway token.

    ``embedded``: the gateway also maintains people's access (the single-host default); a
    production layout leaves that to an officer's token (docs/escrow.md)."""
    mounts = admin._call("GET", "sys/mounts")
    if f"{admin.mount}/" not in mounts.get("data", mounts):
        admin._call("POST", f"sys/mounts/{admin.mount}", {"type": "transit"})
    # OpenBao's audit log shows which track each request named (contexts are not secret; shares are)
    admin._call("POST", f"sys/mounts/{admin.mount}/tune", {"audit_non_hmac_request_keys": ["context"]})
    if f"{KV_MOUNT}/" not in mounts.get("data", mounts):
        admin._call("POST", f"sys/mounts/{KV_MOUNT}", {"type": "kv", "options": {"version": "2"}})
    admin._call("PUT", "sys/policies/acl/pg-gateway", {"policy": GATEWAY_POLICY.format(mount=admin.mount)})
    policies = ["pg-gateway"]
    if embedded:
        admin._call("PUT", "sys/policies/acl/pg-access", {"policy": ACCESS_POLICY})
        policies.append("pg-access")
    reply = admin._call("POST", "auth/token/create-orphan", {
        "policies": policies, "no_default_policy": True, "period": "768h", "display_name": "privacy-gateway"})
    return str(reply["auth"]["client_token"])


def _errors(reply: httpx.Response) -> str:
    """The error text of a refusal (OpenBao's ``errors`` list), for telling a conflict from a refusal."""
    try:
        return " ".join(str(e) for e in reply.json().get("errors") or ())
    except (ValueError, AttributeError):
        return ""


def _collided(reply: httpx.Response) -> bool:
    """Whether another writer's request won: a policy's check-and-set failed, or OpenBao's storage
    transaction did (two writers of one mount's config or role at once: HTTP 500, nothing written)."""
    return ((reply.status_code == 400 and "check-and-set" in _errors(reply))
            or (reply.status_code == 500 and "transaction commit failed" in _errors(reply)))


def _write(admin: CoSigner, method: str, path: str, body: dict | None) -> httpx.Response:
    """The answer to one write of people's access, a collision (:func:`_collided`) included: any other
    5xx is the node's, and the write goes to the next node as every request does (:meth:`CoSigner._send`)."""
    reply = admin._send(method, path, body, judge=lambda status: None if status == 500 else _serves(status))
    if reply.status_code == 500 and not _collided(reply):
        reply = admin._send(method, path, body)
    return reply


class _Patience:
    """Retrying what collided with another writer: jittered, growing pauses, until a deadline."""

    def __init__(self, admin: CoSigner, identity: PublicIdentity, seconds: float) -> None:
        self.admin, self.identity, self.deadline, self.attempt = admin, identity, time.monotonic() + seconds, 0

    def wait(self) -> None:
        if time.monotonic() > self.deadline:
            raise CoSignerUnavailable(f"the co-signer (OpenBao) at {self.admin.node}: {self.identity.name}'s access "
                                      f"kept changing under {self.attempt + 1} attempts to update it")
        time.sleep(random.uniform(0, min(0.5, 0.005 * 2 ** self.attempt)))  # jittered: writers spread out
        self.attempt += 1


def _write_same(admin: CoSigner, patience: _Patience, method: str, path: str, body: dict | None) -> None:
    """An idempotent write (every writer writes the same), again after a collision."""
    while _collided(reply := _write(admin, method, path, body)):
        patience.wait()
    if reply.status_code >= 400:
        raise CoSignerRefused("the co-signer refused the request")


def _enable_login(admin: CoSigner, patience: _Patience, identity: PublicIdentity, mount: str) -> None:
    """Enable ``identity``'s JWT auth mount unless it is there; another writer (a node of a cluster,
    an officer) enabling it at the same moment is success, not a refusal."""
    auths = admin._call("GET", "sys/auth")
    if f"{mount}/" in auths.get("data", auths):
        return
    body = {"type": "jwt", "description": f"privacy-gateway {identity.name}"}
    while _collided(reply := _write(admin, "POST", f"sys/auth/{mount}", body)):
        patience.wait()
    if reply.status_code >= 400 and not (reply.status_code == 400 and "already in use" in _errors(reply)):
        raise CoSignerRefused("the co-signer refused the request")


def grant_access(admin: CoSigner, identity: PublicIdentity, prefixes: Iterable[str],
                 keep: Callable[[str], bool] = lambda prefix: False, *, patience: float = ACCESS_PATIENCE) -> None:
    """Let ``identity`` (and nobody else through its mount) decrypt shares of the transit keys
    starting with ``prefixes`` (see :func:`key_prefix`), besides the prefixes it already has
    that ``keep`` keeps; none at all leaves it a login and nothing else.

    Safe from any number of concurrent writers (the nodes of a cluster, an officer's
    ``sync-access``): the policy is written with OpenBao's check-and-set on its version, and a
    write that lost to another one reads the policy again and applies ``prefixes`` and ``keep``
    to what that one left, so no writer's update is lost; the login's mount, config and role are
    the same whoever writes them, and a write that collided is made again. Gives up with
    :class:`CoSignerUnavailable` after ``patience`` seconds of collisions."""
    mount = _mount_of(identity)
    retry = _Patience(admin, identity, patience)
    _enable_login(admin, retry, identity, mount)
    pem = identity.signing_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode("ascii")
    _write_same(admin, retry, "POST", f"auth/{mount}/config", {
        "jwt_validation_pubkeys": [pem], "jwt_supported_algs": ["EdDSA"], "bound_issuer": ISSUER})
    _write_same(admin, retry, "POST", f"auth/{mount}/role/unmask", {
        "role_type": "jwt", "user_claim": "sub", "bound_subject": identity.name, "bound_audiences": [AUDIENCE],
        "token_policies": [mount], "token_no_default_policy": True, "token_ttl": TOKEN_TTL,
        "token_max_ttl": TOKEN_TTL})
    prefixes = set(prefixes)
    while True:
        current, version = _policy(admin, mount)
        had = set(_RULE.findall(current))
        wanted = {p for p in had if keep(p)} | prefixes
        # nothing to write: sound because the read came from the active node (a cluster's standbys
        # forward reads: disable_standby_reads, docs/escrow.md), not from a lagging copy
        if wanted == had and _AUDIT_RULE in current:
            return
        rules = "".join(f'path "{admin.mount}/decrypt/{p}*" {{ capabilities = ["update"] }}\n' for p in sorted(wanted))
        # every identity that unmasks also checkpoints the audit log it appended to
        reply = _write(admin, "PUT", f"sys/policies/acl/{mount}", {"policy": rules + _AUDIT_RULE, "cas": version})
        if not _collided(reply):
            break
        retry.wait()  # another writer got there first: read again
    if reply.status_code >= 400:
        raise CoSignerRefused("the co-signer refused the request")


def _policy(admin: CoSigner, mount: str) -> tuple[str, int]:
    """An identity's ACL policy and its version (for check-and-set); ``("", 0)`` when there is none."""
    reply = admin._send("GET", f"sys/policies/acl/{mount}")
    if reply.status_code == 404:
        return "", 0
    if reply.status_code >= 400:
        raise CoSignerRefused("the co-signer refused the request")
    data = reply.json().get("data") or {}
    if "version" not in data:  # a server that would ignore "cas" and let concurrent writers undo each other
        raise CoSignerUnavailable(f"the co-signer (OpenBao) at {admin.node} does not version ACL policies "
                                  "(check-and-set on policies: OpenBao 2.4 or later, as pyproject.toml requires)")
    return str(data.get("policy") or ""), int(data["version"])


def revoke_access(admin: CoSigner, identity: PublicIdentity, *, patience: float = ACCESS_PATIENCE) -> None:
    """End ``identity``'s access: its mount goes (revoking every token it issued), then its policy.
    Another writer revoking it at the same moment is success, not a refusal."""
    mount = _mount_of(identity)
    retry = _Patience(admin, identity, patience)
    while (reply := _write(admin, "DELETE", f"sys/auth/{mount}", None)).status_code >= 400:
        auths = admin._call("GET", "sys/auth")
        if f"{mount}/" not in auths.get("data", auths):
            break  # another writer removed it first ("failed to remove entry in auth table")
        if not (_collided(reply) or "failed to remove entry" in _errors(reply)):
            raise CoSignerRefused("the co-signer refused the request")
        retry.wait()
    _write_same(admin, retry, "DELETE", f"sys/policies/acl/{mount}", None)
