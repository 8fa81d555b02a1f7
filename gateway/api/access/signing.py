"""Signed requests: how an identity proves itself with its own Ed25519 key, without any shared secret.

``Authorization: Signature keyId="<identity>",created="<unix seconds>",nonce="<random>",signature="<base64>"``
carries the identity's signature over the method, path and query, the time, the nonce and the
body's SHA-256 (:func:`signing_string`). It is accepted within :data:`SIGNATURE_SKEW` seconds,
once: a replayed signature is refused. This is how an identity gets its first token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature

from keys import PublicIdentity

from .principals import Denied

SIGNATURE_SKEW = 300.0  # seconds a signed request may be early or late
_SIGNATURE_PARAM = re.compile(r'\s*([a-zA-Z]+)="([^"]*)"\s*(?:,|$)')


def signing_string(method: str, target: str, created: int, nonce: str, body: bytes) -> bytes:
    """What a signed request's signature covers: ``target`` is the path with its query string; the
    nonce makes two otherwise identical requests in the same second differ (Ed25519 is deterministic)."""
    return (f"privacy-gateway-request-v1\n{method.upper()}\n{target}\n{created}\n{nonce}\n"
            f"{hashlib.sha256(body).hexdigest()}").encode()


def sign_request(identity, method: str, target: str, body: bytes = b"", created: int | None = None) -> str:
    """The Authorization header value for a request signed by ``identity`` (a PrivateIdentity)."""
    created = int(time.time()) if created is None else created
    nonce = secrets.token_urlsafe(12)
    signature = identity.signing.sign(signing_string(method, target, created, nonce, body))
    return (f'Signature keyId="{identity.public.name}",created="{created}",nonce="{nonce}",'
            f'signature="{base64.b64encode(signature).decode("ascii")}"')


class SignatureChecker:
    """Verifies ``Signature`` authorization values, each accepted once within its time window."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seen: dict[bytes, float] = {}  # signatures already used -> when they stop mattering
        self._lock = threading.Lock()

    def check(self, value: str, method: str, target: str, body: bytes,
              identities: dict[str, PublicIdentity]) -> PublicIdentity:
        """The identity that signed this request; raises :class:`Denied` (401) saying why not, in general terms."""
        params = dict(_SIGNATURE_PARAM.findall(value))
        try:
            name, created, nonce = params["keyId"], int(params["created"]), params["nonce"]
            signature = base64.b64decode(params["signature"], validate=True)
        except (KeyError, ValueError, binascii.Error):
            raise Denied(401, "malformed signature header") from None
        now = self._clock()
        if abs(now - created) > SIGNATURE_SKEW:
            raise Denied(401, "signed request outside its time window (check the clock)")
        identity = identities.get(name)
        if identity is None:
            raise Denied(401, "invalid signature")
        try:
            identity.signing_key().verify(signature, signing_string(method, target, created, nonce, body))
        except InvalidSignature:
            raise Denied(401, "invalid signature") from None
        with self._lock:
            self._seen = {s: until for s, until in self._seen.items() if until > now}
            if signature in self._seen:
                raise Denied(401, "signed request replayed")
            self._seen[signature] = created + SIGNATURE_SKEW + 1
        return identity
