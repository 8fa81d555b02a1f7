"""``/api/whoami`` and ``/api/cameras``: who is asking, which cameras they see, switching policies
live, and cameras added, edited and removed while the gateway runs.

Officers see every camera with its state, its settings and the policy version in force; viewers
and publishers see only the cameras they may watch or publish. ``PUT /api/cameras/<id>/policy``
activates a stored policy version on a running camera between two frames (audit-logged first);
if it cannot run there (its unmask grants cannot be met by the roster, the vault refuses) the
answer is 409 and the previous policy stays in force; an unexpected failure is a 500 whose
traceback goes to the log, not to the caller. In a cluster any node takes the activation of any
configured camera: it is written to the shared state (after the same checks), and the node that
runs the camera switches it within a second (:meth:`~gateway.live.Runtime.follow_shared`; this
node at once, if it is that node).

``POST /api/cameras``, ``PUT /api/cameras/<id>`` and ``DELETE /api/cameras/<id>`` (``cameras:manage``)
take the camera fields of the configuration file, validated by the same model (422 with one
``errors`` line per field path), and a stored ``policy`` version. Each change is audit-logged
before it is made, kept in ``<data_dir>/cameras.json`` (:mod:`gateway.live.camera_changes`) and
made by the runtime (:meth:`~gateway.live.Runtime.add_camera` ...); the WHEP and RTSP sessions of
a camera that is removed or restarted by an edit end. In a cluster any node takes them: they are
kept in the shared state instead, the node that runs the camera restarts or stops it, and a change
made on a camera another node changed first (since this node took that in) is refused 409. A source's credentials (``user:password@``,
``?password=``) are never answered or logged: :func:`~gateway.config.redact_source`; a ``PUT``
giving back the shown form of the current source keeps the current one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keys import EscrowError, check_camera
from redaction import Policy, PolicyError, format_validation_error

from ..config import Camera, redact_source
from ..live import LiveCamera, Runtime
from ..state import StateUnavailable
from .access import Access, Denied, Principal, require
from .policies import VERSION, PolicyVersions
from .requests import ChangeLog, guarded, json_object

log = logging.getLogger(__name__)

#: failures of an activation that say why this policy cannot run on this camera (answered 409):
#: the roster cannot meet its unmask grants, the vault or its audit log refused, the disk failed
EXPECTED_ACTIVATION_ERRORS = (EscrowError, OSError)
#: failures of adding or editing a camera that say why it cannot run (409): the same, and a
#: name taken meanwhile (ValueError), a camera gone meanwhile (KeyError), the gateway stopping
#: or, in a cluster, another node's change of that camera first (RuntimeError); the shared state
#: unreachable is 503 (nothing was written: the same request may be sent again)
EXPECTED_CHANGE_ERRORS = (EscrowError, OSError, ValueError, KeyError, RuntimeError)
#: what the runtime is told when a camera stopped: (camera, the stopped camera or None, removed)
Ended = Callable[[str, LiveCamera | None, bool], Awaitable[None]]


def camera_view(camera: Camera) -> dict:
    """A camera's settings as answered and audit-logged: its source without credentials."""
    return {**camera.model_dump(mode="json", exclude={"policy"}), "source": redact_source(camera.source)}


def parse_camera(data: dict, current: Camera | None = None) -> tuple[Camera, str | None]:
    """A posted camera (the configuration's fields; ``policy``: a stored version) and that version;
    422 with every problem by field path. With ``current`` (an edit), a ``source`` that is the
    shown form of the current one means the current one (its credentials are never shown)."""
    fields = dict(data)
    version = fields.pop("policy", None)
    errors = []
    if version is not None and not (isinstance(version, str) and VERSION.match(version)):
        errors.append("policy: expected the 64-hex-digit version of a stored policy (POST /api/policies stores one)")
    if current is not None and current.source is not None and fields.get("source") == redact_source(current.source):
        fields["source"] = current.source
    camera = None
    try:
        camera = Camera.model_validate(fields)
    except ValidationError as exc:
        errors += format_validation_error(exc).splitlines()
    if camera is not None and camera.kind == "file":
        path = Path(camera.source.removeprefix("file://"))
        if not path.is_absolute():
            errors.append("source: a video file's absolute path (the gateway's own file system)")
        elif not path.is_file():
            errors.append(f"source: no such file {path}")
        else:
            camera = camera.model_copy(update={"source": str(path)})
    if errors:
        raise Denied(422, "invalid camera: " + "; ".join(errors), errors=errors)
    return camera, version


def _same(a: Camera, b: Camera) -> bool:
    return a.model_dump(exclude={"policy"}) == b.model_dump(exclude={"policy"})


class CameraRoutes:
    def __init__(self, runtime: Runtime, access: Access, versions: PolicyVersions, changes: ChangeLog,
                 ended: Ended | None = None) -> None:
        """``ended``: told (on the event loop) of every camera stopped by a change, to end its sessions."""
        self.runtime, self.versions, self.changes = runtime, versions, changes
        self._ended = ended
        self.routes = [
            Route("/api/whoami", guarded(access, self.whoami), methods=["GET"]),
            Route("/api/cameras", guarded(access, self.cameras), methods=["GET", "POST"]),
            Route("/api/cameras/{camera}", guarded(access, self.one), methods=["GET", "PUT", "DELETE"]),
            Route("/api/cameras/{camera}/policy", guarded(access, self.camera_policy), methods=["GET", "PUT"]),
        ]

    def camera(self, name: str) -> str:
        """``name`` if it is a configured camera (running here, or, in a cluster, on any node); 404 otherwise."""
        if name not in self.runtime.cameras and not (self.runtime.cluster is not None
                                                     and name in self.runtime.config.cameras):
            raise Denied(404, f"no such camera: {name}")
        return name

    def describe(self, name: str, health: dict) -> dict:
        """What an officer is told of camera ``name``: its state, settings and policy in force."""
        config = self.runtime.config.cameras.get(name)
        return {"id": name, "policy": self.runtime.activations.versions().get(name),
                **({"config": camera_view(config)} if config is not None else {}), **health}

    async def whoami(self, request: Request, who: Principal, body: bytes) -> Response:
        known = list(self.runtime.cameras)
        return JSONResponse({"name": who.name, "roles": sorted(who.roles), "permissions": sorted(who.permissions),
                             "cameras": who.cameras("feeds*", known), "token": who.token})

    async def cameras(self, request: Request, who: Principal, body: bytes) -> Response:
        if request.method == "POST":
            return await self.add(who, body)
        known = list(self.runtime.cameras)
        if who.may("cameras"):  # every configured camera, one an edit left stopped too (degraded, and why)
            health = self.runtime.camera_health()
            return JSONResponse({"cameras": [self.describe(name, health[name]) for name in self.runtime.config.cameras
                                             if name in health]})
        if not who.permissions & {"feeds*", "ingest*"}:
            raise Denied(403, f"{who.name} may not list cameras")
        return JSONResponse({"cameras": [{"id": name} for name in known
                                         if who.may("feeds*", name) or who.may("ingest*", name)]})

    async def one(self, request: Request, who: Principal, body: bytes) -> Response:
        name = request.path_params["camera"]
        if request.method == "GET":
            require(who, "cameras")
            health = self.runtime.camera_health()
            if name not in health:
                raise Denied(404, f"no such camera: {name}")
            return JSONResponse(self.describe(name, health[name]))
        require(who, "cameras:manage")
        if name not in self.runtime.config.cameras:
            raise Denied(404, f"no such camera: {name}")
        if request.method == "PUT":
            return await self.edit(who, name, body)
        return await self.remove(who, name)

    # --- add, edit, remove ---------------------------------------------------------------------

    def _policy(self, version: str) -> Policy:
        try:
            return self.versions.policy(version)
        except Denied:
            raise Denied(422, f"policy: no stored policy version {version}",
                         errors=[f"policy: no stored policy version {version[:12]}... (POST /api/policies stores one)"]) \
                from None
        except PolicyError as exc:
            raise Denied(422, f"policy: {exc}", errors=[f"policy: {exc}"]) from None

    async def add(self, who: Principal, body: bytes) -> Response:
        require(who, "cameras:manage")
        data = json_object(body)
        name = data.pop("id", None)
        problems = []
        if not isinstance(name, str):
            problems.append("id: required, the camera's id (1-64 letters, digits and - _ .)")
        else:
            try:
                check_camera(name)
            except ValueError as exc:
                problems.append(f"id: {exc}")
        try:
            camera, version = parse_camera(data)
        except Denied as denied:
            problems += denied.extra["errors"]
        if problems:
            raise Denied(422, "invalid camera: " + "; ".join(problems), errors=problems)
        if name in self.runtime.config.cameras or self.runtime.known(name):
            raise Denied(409, f"camera {name} exists; PUT /api/cameras/{name} edits it")
        policy = self._policy(version) if version is not None else Policy()
        version = await asyncio.to_thread(self.runtime.store.store_policy, policy.model_dump(mode="json"))
        details = {"camera": name, "config": camera_view(camera), "policy": version}
        await self.changes.record(who, "add-camera", details)
        await self._change(who, "add-camera-failed", name, self.runtime.add_camera, name, camera, policy)
        return JSONResponse({"id": name, "config": camera_view(camera), "policy": version}, status_code=201,
                            headers={"Location": f"/api/cameras/{name}"})

    async def edit(self, who: Principal, name: str, body: bytes) -> Response:
        data = json_object(body)
        if "id" in data and data.pop("id") != name:
            raise Denied(422, "id: a camera keeps its id; remove it and add it under the new one",
                         errors=["id: a camera keeps its id; remove it and add it under the new one"])
        current = self.runtime.config.cameras[name]
        camera, version = parse_camera(data, current)
        previous = self.runtime.activations.versions().get(name)
        policy = self._policy(version) if version is not None else None
        if policy is None:  # the policy in force stays
            live = self.runtime.cameras.get(name)
            policy = live.policy if live is not None else self._policy(previous)
            version = previous
        else:
            version = await asyncio.to_thread(self.runtime.store.store_policy, policy.model_dump(mode="json"))
        answer = {"id": name, "config": camera_view(camera), "policy": version,
                  "previous": {"config": camera_view(current), "policy": previous}}
        # only the policy: switched live (in a cluster through the shared state, wherever it runs)
        if _same(camera, current) and (name in self.runtime.cameras or self.runtime.cluster is not None):
            if version == previous:
                return JSONResponse({**answer, "changed": False, "restarted": False})
            await self.activate(who, name, policy, version)
            return JSONResponse({**answer, "changed": True, "restarted": False})
        await self.changes.record(who, "edit-camera", {"camera": name, "config": camera_view(camera),
                                                       "policy": version, "previous": answer["previous"]})
        old, _ = await self._change(who, "edit-camera-failed", name, self.runtime.replace_camera, name, camera, policy)
        if self._ended is not None:
            await self._ended(name, old, False)
        return JSONResponse({**answer, "changed": True, "restarted": True})

    async def remove(self, who: Principal, name: str) -> Response:
        config = self.runtime.config.cameras[name]
        version = self.runtime.activations.versions().get(name)
        await self.changes.record(who, "remove-camera", {"camera": name, "config": camera_view(config),
                                                         "policy": version})
        old = await self._change(who, "remove-camera-failed", name, self.runtime.remove_camera, name)
        if self._ended is not None:
            await self._ended(name, old, True)
        return JSONResponse({"id": name, "removed": True, "config": camera_view(config), "policy": version})

    async def _change(self, who: Principal, failed: str, name: str, change: Callable, *args):
        """Run a runtime change off the event loop; a failure is logged (``failed``) and answered
        409 (what the caller can act on), 503 (the cluster's shared state unreachable) or 500 (a bug:
        its traceback goes to the log)."""
        try:
            return await asyncio.to_thread(change, *args)
        except StateUnavailable as exc:
            log.warning("camera %s: %s refused: %s", name, failed.removesuffix("-failed"), exc)
            await self.changes.record(who, failed, {"camera": name, "error": str(exc)})
            raise Denied(503, f"camera {name}: {exc}; nothing was changed, try again") from None
        except EXPECTED_CHANGE_ERRORS as exc:
            why = "it is no longer configured" if isinstance(exc, KeyError) else str(exc)
            log.warning("camera %s: %s refused: %s", name, failed.removesuffix("-failed"), why)
            await self.changes.record(who, failed, {"camera": name, "error": why})
            raise Denied(409, f"camera {name}: {why}; nothing was changed") from None
        except Exception:
            log.exception("camera %s: %s failed unexpectedly", name, failed.removesuffix("-failed"))
            await self.changes.record(who, failed, {"camera": name, "error": "internal error"})
            raise Denied(500, f"camera {name}: internal error (see the gateway's log)") from None

    # --- the policy in force -------------------------------------------------------------------

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
        switched = await self.activate(who, camera, policy, version)
        answer = {"camera": camera, "version": version, "previous": previous, "switched": switched}
        if self.runtime.cluster is not None:  # whether this node runs it (else its node switches it)
            answer["runs_here"] = camera in self.runtime.cameras
        return JSONResponse(answer)

    async def share(self, who: Principal, camera: str, policy: Policy, version: str) -> bool:
        """Cluster: activate ``version`` on ``camera`` in the shared state, logged first (here:
        audit logs are per node); 409 if this node's roster cannot meet its grants. The node running
        the camera switches it; if that is this one, now (whether it switched is answered)."""
        previous = self.runtime.active_version(camera)
        try:
            await asyncio.to_thread(self.runtime.roster, policy)
        except EscrowError as exc:
            raise Denied(409, f"policy {version[:12]} cannot run on camera {camera}: {exc}; "
                              f"the previous policy stays in force") from None
        await self.changes.record(who, "activate-policy", {"camera": camera, "policy": version, "previous": previous})
        try:
            await asyncio.to_thread(self.runtime.activations.share, camera, version)
        except (EscrowError, OSError) as exc:
            log.warning("camera %s: policy %s not activated: %s", camera, version[:12], exc)
            await self.changes.record(who, "activate-policy-failed", {"camera": camera, "policy": version,
                                                                      "error": str(exc)})
            raise Denied(503, f"policy {version[:12]} not activated on camera {camera}: {exc}; the previous policy "
                              "stays in force") from None
        try:
            return await asyncio.to_thread(self.runtime.follow_shared, camera)
        except Exception:  # activated in the shared state: the node running it reports its own failure
            log.exception("camera %s: policy %s is activated in the shared state but could not switch here",
                          camera, version[:12])
            return False

    async def activate(self, who: Principal, camera: str, policy: Policy, version: str) -> bool:
        """Switch ``camera`` to ``policy`` live, logged first (``activate-policy``); 409 if it cannot run.
        In a cluster, through the shared state (:meth:`share`)."""
        if self.runtime.activations.rows.shared:
            return await self.share(who, camera, policy, version)
        previous = self.runtime.active_version(camera)
        await self.changes.record(who, "activate-policy", {"camera": camera, "policy": version, "previous": previous})
        try:
            return await asyncio.to_thread(self.runtime.activate, camera, policy, version)
        except KeyError:
            await self.changes.record(who, "activate-policy-failed", {"camera": camera, "policy": version,
                                                                      "error": "the camera is not running"})
            raise Denied(409, f"camera {camera} is not running (removed or being edited meanwhile)") from None
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
