"""The HTTP API under ``/api``: who am I, cameras, policy versions, identities, tokens, audit.

Every handler authenticates first (:class:`~gateway.access.Access`), then checks the one
permission it needs; answers are JSON, errors ``{"error": "..."}`` with a 4xx status. Every
change (a token issued or revoked, cameras granted, a policy stored or activated) is written
to the vault's audit log, signed by the gateway and naming who asked, before it is answered.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from keys.audit import AuditError
from keys.audit import verify as verify_audit
from keys.store import GATEWAY_ACTOR
from keys.vault import VaultError
from redaction.policy import Policy, PolicyError, parse_policy

from .access import DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL, Access, Denied, Principal, require

if TYPE_CHECKING:
    from .server import Gateway

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
_VERSION = re.compile(r"^[0-9a-f]{64}$")


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def peer_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Denied(413, f"request body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Denied(413, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def target_of(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


async def authenticate(access: Access, request: Request, body: bytes = b"") -> Principal:
    return access.authenticate(peer_of(request), request.headers.get("authorization"), request.method,
                               target_of(request), body)


def _json(body: bytes) -> dict:
    try:
        data = json.loads(body or b"{}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise Denied(400, f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Denied(400, "malformed JSON: expected an object")
    return data


def canonical_yaml(policy: dict) -> str:
    return yaml.safe_dump(policy, sort_keys=True, default_flow_style=False)


class Api:
    """Routes bound to one running :class:`~gateway.server.Gateway`."""

    def __init__(self, gateway: Gateway, access: Access, activate: Callable[[str, Policy, str], bool]) -> None:
        """``activate(camera, policy, version)``: switch a camera's policy (blocking, run off the loop); True
        once frames run under it, False if it waits for the camera's next frame."""
        self.gateway, self.access, self._activate = gateway, access, activate
        self.routes = [
            Route("/api/whoami", self._guard(self.whoami), methods=["GET"]),
            Route("/api/cameras", self._guard(self.cameras), methods=["GET"]),
            Route("/api/cameras/{camera}/policy", self._guard(self.camera_policy), methods=["GET", "PUT"]),
            Route("/api/policies", self._guard(self.policies), methods=["GET", "POST"]),
            Route("/api/policies/validate", self._guard(self.validate), methods=["POST"]),
            Route("/api/policies/{version}", self._guard(self.policy), methods=["GET"]),
            Route("/api/policies/{old}/diff/{new}", self._guard(self.diff), methods=["GET"]),
            Route("/api/identities", self._guard(self.identities), methods=["GET"]),
            Route("/api/identities/{name}/cameras", self._guard(self.grant), methods=["PUT"]),
            Route("/api/tokens", self._guard(self.tokens), methods=["GET", "POST"]),
            Route("/api/tokens/{token}", self._guard(self.revoke), methods=["DELETE"]),
            Route("/api/audit", self._guard(self.audit), methods=["GET"]),
            Route("/api/audit/verify", self._guard(self.audit_verify), methods=["GET"]),
        ]

    def _guard(self, handler):
        """Read the body (bounded), authenticate, run; :class:`Denied` becomes its JSON answer."""

        async def endpoint(request: Request) -> Response:
            try:
                body = await read_body(request)
                principal = await authenticate(self.access, request, body)
                return await handler(request, principal, body)
            except Denied as denied:
                return error(denied.status, denied.message, denied.headers, **denied.extra)

        return endpoint

    def _audit(self, principal: Principal, action: str, details: dict) -> None:
        """Log a change before it is answered; if the log cannot be written the change is refused."""
        via = {"token": principal.token} if principal.token else {"via": "signed request"}
        try:
            self.gateway.store.audit.append(GATEWAY_ACTOR, self.gateway.signer, action,
                                            {**details, "by": principal.name, **via})
        except AuditError as exc:
            log.error("audit log unwritable: %s", exc)
            raise Denied(503, "the audit log cannot be written; nothing was changed") from None

    # -- who, cameras ----------------------------------------------------------------------------------

    async def whoami(self, request: Request, who: Principal, body: bytes) -> Response:
        known = list(self.gateway.cameras)
        return JSONResponse({"name": who.name, "roles": sorted(who.roles), "permissions": sorted(who.permissions),
                             "cameras": who.cameras("feeds*", known), "token": who.token})

    async def cameras(self, request: Request, who: Principal, body: bytes) -> Response:
        known = list(self.gateway.cameras)
        if who.may("cameras"):
            health = self.gateway.health()["cameras"]
            return JSONResponse({"cameras": [{"id": name, "policy": self.gateway.active_version(name), **health[name]}
                                             for name in known]})
        if not who.permissions & {"feeds*", "ingest*"}:
            raise Denied(403, f"{who.name} may not list cameras")
        return JSONResponse({"cameras": [{"id": name} for name in known if who.may("feeds*", name) or who.may("ingest*", name)]})

    def _camera(self, name: str) -> str:
        if name not in self.gateway.cameras:
            raise Denied(404, f"no such camera: {name}")
        return name

    async def camera_policy(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "policies")
        camera = self._camera(request.path_params["camera"])
        if request.method == "GET":
            version = self.gateway.active_version(camera)
            return JSONResponse({"camera": camera, "version": version, "policy": self._load(version)})
        version = _json(body).get("version")
        if not isinstance(version, str) or not _VERSION.match(version):
            raise Denied(400, "version: expected the 64-hex-digit version of a stored policy")
        policy = self._policy(version)
        previous = self.gateway.active_version(camera)
        self._audit(who, "activate-policy", {"camera": camera, "policy": version, "previous": previous})
        try:
            switched = await asyncio.to_thread(self._activate, camera, policy, version)
        except Exception as exc:  # the analyzer could not be built, a grant cannot be met: the old policy stays
            log.warning("camera %s: policy %s not activated: %s", camera, version[:12], exc)
            self._audit(who, "activate-policy-failed", {"camera": camera, "policy": version, "error": str(exc)})
            raise Denied(409, f"policy {version[:12]} cannot run on camera {camera}: {exc}; "
                              f"the previous policy stays in force") from None
        return JSONResponse({"camera": camera, "version": version, "previous": previous, "switched": switched})

    # -- policies ------------------------------------------------------------------------------------

    def _parse(self, body: bytes, content_type: str) -> Policy:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise Denied(400, "policy: not UTF-8 text") from None
        try:
            data = json.loads(text) if content_type == "application/json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise Denied(400, f"policy: not valid {'JSON' if content_type == 'application/json' else 'YAML'}: {exc}") from None
        try:
            return parse_policy(data, "policy")
        except PolicyError as exc:
            lines = str(exc).splitlines()
            raise Denied(422, lines[0], errors=lines[1:] or lines) from None

    def _load(self, version: str) -> dict:
        try:
            return self.gateway.store.load_policy(version)
        except VaultError:
            raise Denied(404, f"no such policy version: {version}") from None

    def _policy(self, version: str) -> Policy:
        if not _VERSION.match(version):
            raise Denied(404, f"no such policy version: {version}")
        return parse_policy(self._load(version), f"policy {version[:12]}")

    def _versions(self) -> list[str]:
        return sorted(p.stem for p in (self.gateway.store.root / "policies").glob("*.json") if _VERSION.match(p.stem))

    async def policies(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "policies")
        if request.method == "GET":
            active = {name: self.gateway.active_version(name) for name in self.gateway.cameras}
            listed = []
            for version in self._versions():
                data = self._load(version)
                listed.append({"version": version, "name": data.get("name"),
                               "active_on": sorted(c for c, v in active.items() if v == version)})
            return JSONResponse({"policies": listed})
        policy = self._parse(body, request.headers.get("content-type", "").split(";")[0].strip().lower())
        data = policy.model_dump(mode="json")
        version = self.gateway.store.store_policy(data)
        self._audit(who, "store-policy", {"policy": version, "name": data.get("name")})
        return JSONResponse({"version": version, "policy": data}, status_code=201,
                            headers={"Location": f"/api/policies/{version}"})

    async def validate(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "policies")
        policy = self._parse(body, request.headers.get("content-type", "").split(";")[0].strip().lower())
        return JSONResponse({"valid": True, "policy": policy.model_dump(mode="json")})

    async def policy(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "policies")
        version = request.path_params["version"]
        self._policy(version)
        return JSONResponse({"version": version, "policy": self._load(version)})

    async def diff(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "policies")
        old, new = request.path_params["old"], request.path_params["new"]
        self._policy(old), self._policy(new)
        lines = difflib.unified_diff(canonical_yaml(self._load(old)).splitlines(keepends=True),
                                     canonical_yaml(self._load(new)).splitlines(keepends=True),
                                     fromfile=old, tofile=new)
        return PlainTextResponse("".join(lines), media_type="text/x-diff")

    # -- identities and grants ---------------------------------------------------------------------------

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
        cameras = _json(body).get("cameras")
        if not isinstance(cameras, list) or not all(isinstance(c, str) for c in cameras):
            raise Denied(400, "cameras: expected a list of camera ids")
        for camera in cameras:
            self._camera(camera)
        self._audit(who, "grant-cameras", {"identity": name, "cameras": sorted(set(cameras))})
        self.access.store.grant(name, cameras)
        return JSONResponse({"identity": name, "cameras": sorted(set(cameras))})

    # -- tokens ------------------------------------------------------------------------------------------

    async def tokens(self, request: Request, who: Principal, body: bytes) -> Response:
        if request.method == "GET":
            mine = None if who.may("tokens") else who.name
            return JSONResponse({"tokens": [t.public() for t in self.access.store.tokens(mine)]})
        data = _json(body)
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
        elif who.token is not None and not who.may("tokens"):
            # a token cannot mint its own successors: only the identity's key (a signed request) can
            raise Denied(403, "a token cannot issue tokens; sign the request with your identity key")
        if identity not in self.access.identities():
            raise Denied(404, f"no such identity: {identity}")
        for camera in cameras or ():
            self._camera(camera)
        if who.scope is not None and (cameras is None or not set(cameras) <= who.scope):
            raise Denied(403, "a token can only issue tokens within its own cameras")
        self._audit(who, "issue-token", {"identity": identity, "cameras": cameras, "ttl": ttl})
        token, record = self.access.store.issue(identity, cameras, float(ttl), who.name)
        log.info("token %s issued to %s by %s", record.id, identity, who.name)
        return JSONResponse({"token": token, **record.public()}, status_code=201)

    async def revoke(self, request: Request, who: Principal, body: bytes) -> Response:
        token_id = request.path_params["token"]
        record = next((t for t in self.access.store.tokens() if t.id == token_id), None)
        if record is None or (record.identity != who.name and not who.may("tokens")):
            raise Denied(404, "no such token")  # others' tokens are not even confirmed to exist
        self._audit(who, "revoke-token", {"token": token_id, "identity": record.identity})
        return JSONResponse(self.access.store.revoke(token_id).public())

    # -- audit -------------------------------------------------------------------------------------------

    async def audit(self, request: Request, who: Principal, body: bytes) -> Response:
        if not who.may("audit"):
            require(who, "audit:own")
        path = self.gateway.store.audit.path
        entries = []
        try:
            text = path.read_text("utf-8") if path.exists() else ""
        except OSError as exc:
            raise Denied(503, f"cannot read the audit log: {exc.strerror or exc}") from None
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"malformed": line[:200]}
            details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
            if who.may("audit") or entry.get("actor") == who.name or details.get("by") == who.name:
                entries.append(entry)
        return JSONResponse({"entries": entries})

    async def audit_verify(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "audit")
        store = self.gateway.store
        try:
            count = await asyncio.to_thread(verify_audit, store.audit.path, store.key_of)
        except AuditError as exc:
            return JSONResponse({"valid": False, "error": str(exc)}, status_code=409)
        return JSONResponse({"valid": True, "entries": count})
