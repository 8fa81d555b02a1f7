"""Signed requests: how an identity proves itself with its own Ed25519 key, without any shared secret.

``Authorization: Signature keyId="<identity>",created="<unix seconds>",nonce="<random>",signature="<base64>"``
carries the identity's signature over the method, the Host, the gateway's key fingerprint, path
and query, the time, the nonce and the body's SHA-256 (:func:`signing_string`). It is accepted
within :data:`SIGNATURE_SKEW` seconds, once, also across restarts (the signatures used are kept
on disk, or in PostgreSQL for every node of a cluster: :class:`~gateway.state.SeenSignatures`): a
replayed signature is refused, at this gateway or any other. This is how an identity gets its
first token. Checking one writes what it used: call it off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from keys import PublicIdentity

from ...state import SeenFile, SeenSignatures
from .principals import Denied

log = logging.getLogger(__name__)

SIGNATURE_SKEW = 300.0  # seconds a signed request may be early or late
_SIGNATURE_PARAM = re.compile(r'\s*([a-zA-Z]+)="([^"]*)"\s*(?:,|$)')


def signing_string(method: str, host: str, gateway: str, target: str, created: int, nonce: str, body: bytes) -> bytes:
    """What a signed request's signature covers: the Host it was sent to and the gateway's key
    fingerprint (so it cannot be replayed at another gateway), ``target`` (the path with its query
    string); the nonce makes two otherwise identical requests in the same second differ."""
    return (f"privacy-gateway-request-v2\n{method.upper()}\n{host.lower()}\n{gateway}\n{target}\n{created}\n"
            f"{nonce}\n{hashlib.sha256(body).hexdigest()}").encode()


def sign_request(identity, method: str, target: str, body: bytes = b"", created: int | None = None, *, host: str,
                 gateway: str) -> str:
    """The Authorization header value for a request signed by ``identity`` (a PrivateIdentity), sent
    to ``host`` (the Host header) at the gateway whose key fingerprint is ``gateway`` (``GET /api/gateway``)."""
    created = int(time.time()) if created is None else created
    nonce = secrets.token_urlsafe(12)
    signature = identity.signing.sign(signing_string(method, host, gateway, target, created, nonce, body))
    return (f'Signature keyId="{identity.public.name}",created="{created}",nonce="{nonce}",'
            f'signature="{base64.b64encode(signature).decode("ascii")}"')


class SignatureChecker:
    """Verifies ``Signature`` authorization values, each accepted once within its time window."""

    def __init__(self, clock: Callable[[], float] = time.time, seen_file: Path | None = None,
                 seen: SeenSignatures | None = None) -> None:
        """``seen_file``: where the signatures already used are kept, so that a restart does not
        make them usable again within their window (0600; its loss only reopens that window);
        ``seen``: where else (a cluster's database), instead."""
        self._clock = clock
        self._seen = seen if seen is not None else SeenFile(seen_file, SIGNATURE_SKEW)

    def check(self, value: str, method: str, target: str, body: bytes, identities: dict[str, PublicIdentity],
              host: str = "", gateway: str = "") -> PublicIdentity:
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
            identity.signing_key().verify(signature, signing_string(method, host, gateway, target, created, nonce,
                                                                    body))
        except InvalidSignature:
            raise Denied(401, "invalid signature") from None
        if not self._seen.first_use(signature, created + SIGNATURE_SKEW + 1, now):
            raise Denied(401, "signed request replayed")
        return identity
