"""Principals and roles: who a request comes from, and what each role may do.

Everything is denied unless a role grants it. What a principal may do is
:data:`ROLE_PERMISSIONS` of its roles (read from the key directory on every request, so a role
taken away is gone at once); camera-scoped permissions (marked ``*``) are further limited to the
cameras granted to the identity (officers: all) and, for a token, to its scope.
"""

from __future__ import annotations

from dataclasses import dataclass

#: permission -> what it covers; ``*`` marks the camera-scoped ones
PERMISSIONS = {
    "feeds*": "watch a camera's redacted feed (WHEP, RTSP) and see the camera listed",
    "ingest*": "publish a camera's video (WHIP)",
    "cameras": "every camera's status and active policy",
    "cameras:manage": "add, edit and remove cameras while the gateway runs (kept in the data directory)",
    "policies": "create, validate, diff and activate policy versions",
    "identities": "read the key directory; enrol (by public keys), remove and revoke identities; grant them cameras",
    "tokens": "issue tokens to any identity, list and revoke any token",
    "audit": "read and verify the whole audit log",
    "audit:own": "read the audit entries of one's own actions",
    "unmask*": "fetch a camera's redacted recordings and sealed records, and log unmask requests of it "
               "(decryption happens on the person's machine, with their keys and the co-signer's shares)",
    "metrics": "read /metrics and the detailed /health",
}
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "privacy-officer": frozenset({"feeds*", "cameras", "cameras:manage", "policies", "identities", "tokens", "audit",
                                  "metrics", "unmask*"}),
    "viewer": frozenset({"feeds*"}),
    "investigator": frozenset({"audit:own", "unmask*"}),
    "auditor": frozenset({"audit", "metrics"}),
    "publisher": frozenset({"ingest*"}),
}
#: roles whose camera-scoped permissions cover every camera without a grant
ALL_CAMERAS_ROLES = frozenset({"privacy-officer"})

class Denied(Exception):
    """An answer other than success: ``status`` (401, 403, 404, 429 ...) with a one-line reason."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers or {}, extra


@dataclass(frozen=True)
class Principal:
    """An authenticated identity as one request sees it."""

    name: str
    roles: frozenset[str]
    granted: frozenset[str] | None  # cameras granted to the identity; None: every camera
    scope: frozenset[str] | None  # the token's cameras; None: no limit beyond the grant
    token: str | None  # the token's id, None for a signed request

    @property
    def permissions(self) -> frozenset[str]:
        return frozenset().union(*(ROLE_PERMISSIONS.get(role, ()) for role in self.roles))

    def cameras(self, permission: str, known: list[str]) -> list[str]:
        """The cameras among ``known`` on which this principal holds the camera-scoped ``permission``."""
        if permission not in self.permissions:
            return []
        return [c for c in known if (self.granted is None or c in self.granted) and (self.scope is None or c in self.scope)]

    def may(self, permission: str, camera: str | None = None) -> bool:
        if permission not in self.permissions:
            return False
        if permission.endswith("*"):
            return camera is not None and bool(self.cameras(permission, [camera]))
        return True


def require(principal: Principal, permission: str, camera: str | None = None) -> None:
    """Raise 403 unless ``principal`` holds ``permission`` (on ``camera``, for the camera-scoped ones)."""
    if not principal.may(permission, camera):
        where = f" on camera {camera}" if camera is not None else ""
        raise Denied(403, f"{principal.name} lacks the {permission.rstrip('*')} permission{where} ({PERMISSIONS[permission]})")
