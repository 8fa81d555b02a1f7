"""``/api/whoami`` and ``/api/cameras``: who is asking, which cameras they see, and switching policies live.

Officers see every camera with its state and the policy version in force; viewers and
publishers see only the cameras they may watch or publish. ``PUT /api/cameras/<id>/policy``
activates a stored policy version on a running camera between two frames (audit-logged first);
if it cannot run there (its unmask grants cannot be met by the roster, the vault refuses) the
answer is 409 and the previous policy stays in force; an unexpected failure is a 500 whose
traceback goes to the log, not to the caller.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keys import EscrowError

from ..live import Runtime
from .access import Access, Denied, Principal, require
from .policies import VERSION, PolicyVersions
from .requests import ChangeLog, guarded, json_object

log = logging.getLogger(__name__)

#: failures of an activation that say why this policy cannot run on this camera (answered 409):
#: the roster cannot meet its unmask grants, the vault or its audit log refused, the disk failed
EXPECTED_ACTIVATION_ERRORS = (EscrowError, OSError)


class CameraRoutes:
    def __init__(self, runtime: Runtime, access: Access, versions: PolicyVersions, changes: ChangeLog) -> None:
        self.runtime, self.versions, self.changes = runtime, versions, changes
        self.routes = [
            Route("/api/whoami", guarded(access, self.whoami), methods=["GET"]),
            Route("/api/cameras", guarded(access, self.cameras), methods=["GET"]),
            Route("/api/cameras/{camera}/policy", guarded(access, self.camera_policy), methods=["GET", "PUT"]),
        ]

    def camera(self, name: str) -> str:
        """``name`` if it is a configured camera; 404 otherwise."""
        if name not in self.runtime.cameras:
            raise Denied(404, f"no such camera: {name}")
        return name

    async def whoami(self, request: Request, who: Principal, body: bytes) -> Response:
        known = list(self.runtime.cameras)
        return JSONResponse({"name": who.name, "roles": sorted(who.roles), "permissions": sorted(who.permissions),
                             "cameras": who.cameras("feeds*", known), "token": who.token})

    async def cameras(self, request: Request, who: Principal, body: bytes) -> Response:
        known = list(self.runtime.cameras)
        if who.may("cameras"):
            health = self.runtime.health()["cameras"]
            return JSONResponse({"cameras": [{"id": name, "policy": self.runtime.active_version(name), **health[name]}
                                             for name in known]})
        if not who.permissions & {"feeds*", "ingest*"}:
            raise Denied(403, f"{who.name} may not list cameras")
        return JSONResponse({"cameras": [{"id": name} for name in known
                                         if who.may("feeds*", name) or who.may("ingest*", name)]})

    async def camera_policy(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "policies")
        camera = self.camera(request.path_params["camera"])
        if request.method == "GET":
            version = self.runtime.active_version(camera)
            return JSONResponse({"camera": camera, "version": version, "policy": self.versions.load(version)})
        version = json_object(body).get("version")
        if not isinstance(version, str) or not VERSION.match(version):
            raise Denied(400, "version: expected the 64-hex-digit version of a stored policy")
        policy = self.versions.policy(version)
        previous = self.runtime.active_version(camera)
        await self.changes.record(who, "activate-policy", {"camera": camera, "policy": version, "previous": previous})
        try:
            switched = await asyncio.to_thread(self.runtime.activate, camera, policy, version)
        except EXPECTED_ACTIVATION_ERRORS as exc:  # the old policy stays
            log.warning("camera %s: policy %s not activated: %s", camera, version[:12], exc)
            await self.changes.record(who, "activate-policy-failed", {"camera": camera, "policy": version,
                                                                      "error": str(exc)})
            raise Denied(409, f"policy {version[:12]} cannot run on camera {camera}: {exc}; "
                              f"the previous policy stays in force") from None
        except Exception:
            log.exception("camera %s: activating policy %s failed unexpectedly", camera, version[:12])
            await self.changes.record(who, "activate-policy-failed", {"camera": camera, "policy": version,
                                                                      "error": "internal error"})
            raise Denied(500, "internal error while activating the policy; the previous policy stays in force "
                              "(see the gateway's log)") from None
        return JSONResponse({"camera": camera, "version": version, "previous": previous, "switched": switched})
