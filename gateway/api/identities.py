"""``/api/identities`` and ``/api/tokens``: the key directory, camera grants, and tokens.

Identities are created with their private keys on their holder's machine (``privacy-gateway keys
add-identity``); over HTTP an officer reads the directory and grants cameras. Tokens are issued
to an identity by itself (a signed request: a token cannot mint its own successors) or by an
officer, within the issuer's own camera scope, and revoked by their holder or an officer;
revoking one ends its live sessions. Every change is audit-logged before it is answered.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .access import DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL, Access, Denied, Principal, require
from .cameras import CameraRoutes
from .requests import ChangeLog, guarded, json_object

log = logging.getLogger(__name__)


class IdentityRoutes:
    def __init__(self, access: Access, cameras: CameraRoutes, changes: ChangeLog) -> None:
        self.access, self.known_camera, self.changes = access, cameras.camera, changes
        self.routes = [
            Route("/api/identities", guarded(access, self.identities), methods=["GET"]),
            Route("/api/identities/{name}/cameras", guarded(access, self.grant), methods=["PUT"]),
            Route("/api/tokens", guarded(access, self.tokens), methods=["GET", "POST"]),
            Route("/api/tokens/{token}", guarded(access, self.revoke), methods=["DELETE"]),
        ]

    async def identities(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "identities")
        return JSONResponse({"identities": [
            {"name": i.name, "roles": list(i.roles), "post_quantum": i.post_quantum,
             "cameras": sorted(self.access.store.granted(i.name))}
            for i in self.access.identities().values()]})

    async def grant(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "identities")
        name = request.path_params["name"]
        if name not in self.access.identities():
            raise Denied(404, f"no such identity: {name}")
        cameras = json_object(body).get("cameras")
        if not isinstance(cameras, list) or not all(isinstance(c, str) for c in cameras):
            raise Denied(400, "cameras: expected a list of camera ids")
        for camera in cameras:
            self.known_camera(camera)
        await self.changes.record(who, "grant-cameras", {"identity": name, "cameras": sorted(set(cameras))})
        self.access.store.grant(name, cameras)
        return JSONResponse({"identity": name, "cameras": sorted(set(cameras))})

    async def tokens(self, request: Request, who: Principal, body: bytes) -> Response:
        if request.method == "GET":
            mine = None if who.may("tokens") else who.name
            return JSONResponse({"tokens": [t.public() for t in self.access.store.tokens(mine)]})
        data = json_object(body)
        unknown = sorted(set(data) - {"identity", "cameras", "ttl"})
        if unknown:
            raise Denied(400, f"{unknown[0]}: unknown field")
        identity = data.get("identity", who.name)
        cameras, ttl = data.get("cameras"), data.get("ttl", DEFAULT_TOKEN_TTL)
        if not isinstance(identity, str):
            raise Denied(400, "identity: expected a name")
        if cameras is not None and (not isinstance(cameras, list) or not all(isinstance(c, str) for c in cameras)):
            raise Denied(400, "cameras: expected a list of camera ids")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= MAX_TOKEN_TTL:
            raise Denied(400, f"ttl: expected seconds between 1 and {MAX_TOKEN_TTL:g}")
        if identity != who.name:
            require(who, "tokens")
        elif who.token is not None:
            # a token never mints its own identity's successors, an officer's neither: only the
            # identity's key (a signed request) can, so a stolen token cannot outlive itself
            raise Denied(403, "a token cannot issue tokens for its own identity; sign the request with your "
                              "identity key")
        if identity not in self.access.identities():
            raise Denied(404, f"no such identity: {identity}")
        for camera in cameras or ():
            self.known_camera(camera)
        if who.scope is not None and (cameras is None or not set(cameras) <= who.scope):
            raise Denied(403, "a token can only issue tokens within its own cameras")
        await self.changes.record(who, "issue-token", {"identity": identity, "cameras": cameras, "ttl": ttl})
        # a token issued by a token expires no later than its issuer and dies with it
        token, record = self.access.store.issue(identity, cameras, float(ttl), who.name, parent=who.token)
        log.info("token %s issued to %s by %s", record.id, identity, who.name)
        return JSONResponse({"token": token, **record.public()}, status_code=201)

    async def revoke(self, request: Request, who: Principal, body: bytes) -> Response:
        token_id = request.path_params["token"]
        record = next((t for t in self.access.store.tokens() if t.id == token_id), None)
        if record is None or (record.identity != who.name and not who.may("tokens")):
            raise Denied(404, "no such token")  # others' tokens are not even confirmed to exist
        await self.changes.record(who, "revoke-token", {"token": token_id, "identity": record.identity})
        return JSONResponse(self.access.store.revoke(token_id).public())
