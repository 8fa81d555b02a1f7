"""Who may do what over the network: principals and roles, tokens, signed requests, rate limiting.

Every network entry point (the API, WHEP, WHIP, RTSP) authenticates through :class:`Access` and
checks one permission with :func:`require`. May import :mod:`gateway.config`,
:mod:`gateway.egress` (the RTSP user it answers with) and ``keys``' public API.
"""

from .authn import Access
from .handoff import HandOn
from .limiter import FAILURE_LIMIT, FAILURE_WINDOW, FailureLimiter
from .principals import ALL_CAMERAS_ROLES, PERMISSIONS, ROLE_PERMISSIONS, Denied, Principal, require
from .signing import SIGNATURE_SKEW, SignatureChecker, sign_request, signing_string
from .tokens import DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL, RTSP_REALM, TOKEN_PREFIX, TokenRecord, TokenStore

__all__ = [
    "ALL_CAMERAS_ROLES",
    "DEFAULT_TOKEN_TTL",
    "FAILURE_LIMIT",
    "FAILURE_WINDOW",
    "MAX_TOKEN_TTL",
    "PERMISSIONS",
    "ROLE_PERMISSIONS",
    "RTSP_REALM",
    "SIGNATURE_SKEW",
    "TOKEN_PREFIX",
    "Access",
    "Denied",
    "FailureLimiter",
    "HandOn",
    "Principal",
    "SignatureChecker",
    "TokenRecord",
    "TokenStore",
    "require",
    "sign_request",
    "signing_string",
]
