"""What a camera shows officers: its latest released frame, and whether its view moved.

``GET /api/cameras/<id>/snapshot`` (``policies`` or ``cameras``): the newest frame the camera
*released*, as JPEG (default) or PNG (``?format=png``): redacted, or blanked if that is what left;
never a raw frame, since it is taken from a sink that only released frames reach. ``503`` with
``Retry-After`` until the camera has released one. ``X-Frame-State`` says ``redacted`` or
``blanked``, ``X-Frame-Index`` which frame it is.

While a camera is held for a moved view (:mod:`gateway.live.moved`) every frame it releases is
blank, so officers judging whether the zones still fit ask for ``?held=1`` (``policies``): the
newest frame the camera redacted but withheld: still redacted by the policy in force (its
zones where they were drawn, faces and plates masked), logged (``view-held-snapshot``) before
it is sent.

``GET /api/cameras/<id>/view`` (``policies`` or ``cameras``): the watch's state (watched, the
reference, the hold, the last measures). ``POST /api/cameras/<id>/view/confirm`` (``policies``):
the zones still fit; the current view becomes the reference and a hold ends; logged
(``confirm-view``) before it takes effect; ``409`` if the camera released no frame lately or is
not watched.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..egress import MEDIA_TYPES, encode_snapshot
from ..live import LiveCamera, Runtime, ViewError
from .access import Access, Denied, Principal, require
from .requests import ChangeLog, guarded

#: seconds a client waits before asking again for a snapshot the camera has not released yet
RETRY_AFTER = 2


class ViewRoutes:
    def __init__(self, runtime: Runtime, access: Access, changes: ChangeLog) -> None:
        self.runtime, self.changes = runtime, changes
        self.routes = [
            Route("/api/cameras/{camera}/snapshot", guarded(access, self.snapshot), methods=["GET"]),
            Route("/api/cameras/{camera}/view", guarded(access, self.view), methods=["GET"]),
            Route("/api/cameras/{camera}/view/confirm", guarded(access, self.confirm), methods=["POST"]),
        ]

    def _camera(self, request: Request, who: Principal) -> LiveCamera:
        if not (who.may("policies") or who.may("cameras")):
            require(who, "policies")  # the 403 names the permission
        name = request.path_params["camera"]
        camera = self.runtime.cameras.get(name)
        if camera is None:
            raise Denied(404, f"no such camera: {name}")
        return camera

    async def snapshot(self, request: Request, who: Principal, body: bytes) -> Response:
        camera = self._camera(request, who)
        fmt = request.query_params.get("format", "jpeg")
        if fmt not in MEDIA_TYPES:
            raise Denied(400, f"format: expected one of {', '.join(MEDIA_TYPES)}, got {fmt!r}")
        headers = {"Cache-Control": "no-store"}
        if request.query_params.get("held") not in (None, "", "0"):
            require(who, "policies")
            image = camera.view.held_image()
            if image is None:
                raise Denied(409, f"camera {camera.name} is not held for a moved view: its snapshot is the "
                                  "released frame (leave out held)")
            await self.changes.record(who, "view-held-snapshot", {"camera": camera.name,
                                                                  "held": camera.view.state()["held"]})
            headers["X-Frame-State"] = "held"
        else:
            latest = camera.snapshot.latest
            if latest is None:
                raise Denied(503, f"camera {camera.name} has released no frame yet",
                             headers={"Retry-After": str(RETRY_AFTER)})
            image = latest.image
            headers.update({"X-Frame-State": latest.state, "X-Frame-Index": str(latest.index)})
        data = await asyncio.to_thread(encode_snapshot, image, fmt)
        return Response(data, media_type=MEDIA_TYPES[fmt], headers=headers)

    async def view(self, request: Request, who: Principal, body: bytes) -> Response:
        camera = self._camera(request, who)
        return JSONResponse({"camera": camera.name, **camera.view.state()})

    async def confirm(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "policies")
        camera = self._camera(request, who)
        state = camera.view.state()
        if not state["watched"]:
            raise Denied(409, f"camera {camera.name} is not watched for a moved view (its policy has no zones, "
                              "or view_check is off)")
        await self.changes.record(who, "confirm-view", {"camera": camera.name, "held": state["held"],
                                                        "policy": self.runtime.active_version(camera.name)})
        try:
            done = await asyncio.to_thread(camera.view.confirm)
        except ViewError as exc:
            await self.changes.record(who, "confirm-view-failed", {"camera": camera.name, "error": str(exc)})
            raise Denied(409, str(exc)) from None
        return JSONResponse({**done, **camera.view.state()})
