"""``/api/policies``: policy versions, stored by SHA-256 of their canonical JSON, validated, diffed.

A policy is posted as YAML or JSON, validated whole (unknown keys and strengths too weak to
anonymise are refused with field paths, 422), and stored in the vault under its version: the
64-hex-digit SHA-256 that segments name (in a cluster, in the shared state too, whence the other
nodes copy it into their vaults). Stored versions are never changed; activating one on a camera
is ``PUT /api/cameras/<id>/policy`` (:mod:`.cameras`).
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import re

import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from keys import EscrowError, VaultStore, canonical
from redaction import Policy, PolicyError, load_document, parse_policy

from ..http import content_type
from ..live import Runtime
from ..state import PolicyRows
from .access import Access, Denied, Principal, require
from .requests import MAX_DEPTH, ChangeLog, guarded, nesting

log = logging.getLogger(__name__)

VERSION = re.compile(r"^[0-9a-f]{64}$")


def canonical_yaml(policy: dict) -> str:
    return yaml.safe_dump(policy, sort_keys=True, default_flow_style=False)


class PolicyVersions:
    """Stored policy versions, read back and parsed."""

    def __init__(self, store: VaultStore, rows: PolicyRows | None = None) -> None:
        """``rows``: where other nodes find the versions stored here (a cluster's shared state)."""
        self.store, self.rows = store, rows

    def keep(self, policy: dict) -> str:
        """Store ``policy`` (blocking): in the vault, and where other nodes find it; returns its version."""
        version = self.store.store_policy(policy)
        if self.rows is not None:
            self.rows.put_document(version, canonical(policy))
        return version

    def load(self, version: str) -> dict:
        if not VERSION.match(version):
            raise Denied(404, f"no such policy version: {version}")
        try:
            return self.store.load_policy(version)
        except EscrowError:
            raise Denied(404, f"no such policy version: {version}") from None

    def policy(self, version: str) -> Policy:
        return parse_policy(self.load(version), f"policy {version[:12]}")

    def versions(self) -> list[str]:
        return sorted(v for v in self.store.policy_versions() if VERSION.match(v))


def parse_body(body: bytes, media_type: str) -> Policy:
    """A posted policy (YAML, or JSON with ``Content-Type: application/json``), validated."""
    as_json = media_type == "application/json"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Denied(400, "policy: not UTF-8 text") from None
    if nesting(text) > MAX_DEPTH:
        raise Denied(400, f"policy: nested deeper than {MAX_DEPTH} levels")
    try:
        data = load_document(text, as_json)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        raise Denied(400, f"policy: not valid {'JSON' if as_json else 'YAML'}: {exc}") from None
    try:
        return parse_policy(data, "policy")
    except PolicyError as exc:
        lines = str(exc).splitlines()
        raise Denied(422, lines[0], errors=lines[1:] or lines) from None


class PolicyRoutes:
    def __init__(self, runtime: Runtime, access: Access, versions: PolicyVersions, changes: ChangeLog) -> None:
        self.runtime, self.versions, self.changes = runtime, versions, changes
        self.routes = [
            Route("/api/policies", guarded(access, self.policies), methods=["GET", "POST"]),
            Route("/api/policies/validate", guarded(access, self.validate), methods=["POST"]),
            Route("/api/policies/{version}", guarded(access, self.policy), methods=["GET"]),
            Route("/api/policies/{old}/diff/{new}", guarded(access, self.diff), methods=["GET"]),
        ]

    async def policies(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "policies")
        if request.method == "GET":
            active = self.runtime.activations.versions()
            listed = []
            for version in self.versions.versions():
                data = self.versions.load(version)
                listed.append({"version": version, "name": data.get("name"),
                               "active_on": sorted(c for c, v in active.items() if v == version)})
            return JSONResponse({"policies": listed})
        policy = parse_body(body, content_type(request))
        data = policy.model_dump(mode="json")
        try:
            version = await asyncio.to_thread(self.versions.keep, data)
        except OSError as exc:  # the vault's disk, or the shared state
            log.error("storing policy %s failed: %s", data.get("name"), exc)
            raise Denied(503, f"policy not stored: {exc}") from None
        await self.changes.record(who, "store-policy", {"policy": version, "name": data.get("name")})
        return JSONResponse({"version": version, "policy": data}, status_code=201,
                            headers={"Location": f"/api/policies/{version}"})

    async def validate(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "policies")
        policy = parse_body(body, content_type(request))
        return JSONResponse({"valid": True, "policy": policy.model_dump(mode="json")})

    async def policy(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "policies")
        version = request.path_params["version"]
        self.versions.policy(version)
        return JSONResponse({"version": version, "policy": self.versions.load(version)})

    async def diff(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "policies")
        old, new = request.path_params["old"], request.path_params["new"]
        self.versions.policy(old), self.versions.policy(new)
        lines = difflib.unified_diff(canonical_yaml(self.versions.load(old)).splitlines(keepends=True),
                                     canonical_yaml(self.versions.load(new)).splitlines(keepends=True),
                                     fromfile=old, tofile=new)
        return PlainTextResponse("".join(lines), media_type="text/x-diff")
