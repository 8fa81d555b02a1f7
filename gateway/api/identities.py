"""``/api/identities`` and ``/api/tokens``: the key directory, camera grants, and tokens.

Identities are created with their private keys on their holder's machine (``privacy-gateway keys
new-identity``, or ``keys add-identity`` on the gateway's host); over HTTP an officer enrols one by
its public half (``POST /api/identities``, what ``keys public FILE`` prints: a private identity file
is refused, and no private key is ever made here), grants cameras, and removes or revokes it with
the same rules and steps as ``keys remove-identity`` and ``keys revoke`` (:mod:`gateway.roster`),
refusing, besides, to remove the last privacy officer (nobody could manage the gateway over the
network any more) and to remove someone a camera's unmask grant still needs (its frames would be
blanked; a revocation always proceeds). Someone who leaves loses their tokens and camera grants, so
a newcomer given the same name inherits neither.

Tokens are issued to an identity by itself (a signed request: a token cannot mint its own
successors) or by an officer, within the issuer's own camera scope, and revoked by their holder or
an officer; revoking one ends its live sessions. Every change is audit-logged before it is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keys import (
    ROLES,
    DirectoryError,
    EscrowError,
    KeyDirectory,
    PublicIdentity,
    check_grants,
    grants_of,
)

from ..roster import RosterError, leave, public_identity, read_pending
from .access import DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL, Access, Denied, Principal, require
from .cameras import CameraRoutes
from .requests import ChangeLog, guarded, json_object

log = logging.getLogger(__name__)

OFFICER = "privacy-officer"


class IdentityRoutes:
    def __init__(self, access: Access, cameras: CameraRoutes, changes: ChangeLog) -> None:
        self.access, self.known_camera, self.changes = access, cameras.camera, changes
        self.runtime = cameras.runtime
        self._roster = asyncio.Lock()  # one change of the roster at a time (each rewrites the whole roster)
        self.routes = [
            Route("/api/identities", guarded(access, self.identities), methods=["GET", "POST"]),
            Route("/api/identities/{name}", guarded(access, self.remove), methods=["DELETE"]),
            Route("/api/identities/{name}/revoke", guarded(access, self.revoke_identity), methods=["POST"]),
            Route("/api/identities/{name}/cameras", guarded(access, self.grant), methods=["PUT"]),
            Route("/api/tokens", guarded(access, self.tokens), methods=["GET", "POST"]),
            Route("/api/tokens/{token}", guarded(access, self.revoke), methods=["DELETE"]),
        ]

    async def identities(self, request: Request, who: Principal, body: bytes) -> Response:
        require(who, "identities")
        if request.method == "POST":
            return await self.enrol(who, body)
        return JSONResponse({"identities": [
            {"name": i.name, "roles": list(i.roles), "post_quantum": i.post_quantum, "fingerprint": i.fingerprint,
             "cameras": sorted(self.access.store.granted(i.name))}
            for i in self.access.identities().values()]})

    # -- enrolling and leaving -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _changing_roster(self) -> AsyncIterator[None]:
        """One change of the roster at a time: on this node, and in a cluster on every node (the
        cluster's newest roster taken in first, the changed one put there after)."""
        async with self._roster:
            shared = self.runtime.shared_roster
            if shared is None:
                yield
                return
            changing = shared.changing()
            try:
                await asyncio.to_thread(changing.__enter__)
            except DirectoryError as exc:
                raise Denied(503, f"the cluster's roster cannot be taken in here: {self._quiet(str(exc))}") from None
            try:
                yield
            finally:
                await asyncio.to_thread(changing.__exit__, None, None, None)

    def _quiet(self, message: str) -> str:
        """A roster message without the key directory's path on the gateway's disk."""
        return message.replace(f"{self.access.keys_dir}: ", "").replace(str(self.access.keys_dir), "the key directory")

    async def enrol(self, who: Principal, body: bytes) -> Response:
        """``POST /api/identities`` ``{"identity": <public identity>, "roles": [...]}``: add a person by
        their public keys (``roles``: the officer's choice; default, those the identity asks for)."""
        data = json_object(body)
        unknown = sorted(set(data) - {"identity", "roles"})
        if unknown:
            raise Denied(400, f"{unknown[0]}: unknown field (expected identity, roles)")
        try:
            identity = public_identity(data.get("identity"))
        except ValueError as exc:
            raise Denied(400, f"identity: {exc}", errors=[f"identity: {exc}"]) from None
        roles = data.get("roles")
        if roles is not None:
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise Denied(400, "roles: expected a list of role names", errors=["roles: expected a list of role names"])
            wrong = sorted(set(roles) - set(ROLES))
            problem = (f"unknown role {wrong[0]!r}: roles are {', '.join(ROLES)}" if wrong
                       else "an identity needs at least one role" if not roles else None)
            if problem:
                raise Denied(400, f"roles: {problem}", errors=[f"roles: {problem}"])
            identity = dataclasses.replace(identity, roles=tuple(sorted(set(roles))))
        keys_dir = self.access.keys_dir
        async with self._changing_roster():
            try:
                directory = await asyncio.to_thread(KeyDirectory.open, keys_dir)
                directory.check_new(identity)
            except EscrowError as exc:
                message = self._quiet(str(exc))
                raise Denied(409, message, errors=[f"identity: {message}"]) from None
            store = self.access.store
            leftovers = [t.id for t in store.tokens(identity.name) if store.live(t.id) is not None]
            details = {"identity": identity.name, "fingerprint": identity.fingerprint, "roles": list(identity.roles),
                       "post_quantum": identity.post_quantum}
            await self.changes.record(who, "enrol-identity", details)
            try:
                await asyncio.to_thread(self._enrol, identity, leftovers)
            except (EscrowError, OSError) as exc:
                log.exception("enrolling %s failed", identity.name)
                await self.changes.record(who, "enrol-identity-failed", {**details, "error": self._quiet(str(exc))})
                raise Denied(409, f"not enrolled: {self._quiet(str(exc))}") from None
        log.info("identity %s (%s) enrolled by %s", identity.name, identity.fingerprint, who.name)
        return JSONResponse({"name": identity.name, "roles": list(identity.roles), "post_quantum": identity.post_quantum,
                             "fingerprint": identity.fingerprint, "cameras": []}, status_code=201)

    def _enrol(self, identity: PublicIdentity, leftovers: list[str]) -> None:
        """A newcomer starts with no camera and no token, whatever someone of that name once had."""
        for token_id in leftovers:
            self.access.store.revoke(token_id)
        self.access.store.grant(identity.name, [])
        KeyDirectory.open(self.access.keys_dir).add(identity)  # checks again, against the roster as it is now

    async def remove(self, request: Request, who: Principal, body: bytes) -> Response:
        return await self._leave(request.path_params["name"], who, revoke=False)

    async def revoke_identity(self, request: Request, who: Principal, body: bytes) -> Response:
        return await self._leave(request.path_params["name"], who, revoke=True)

    def _unmet(self, remaining: list[PublicIdentity]) -> list[str]:
        """The cameras whose policy in force could no longer seal (an unmask grant without enough holders)."""
        unmet = []
        for name, camera in self.runtime.cameras.items():
            try:
                check_grants(grants_of(camera.policy), remaining)
            except EscrowError as exc:
                unmet.append(f"camera {name}: {exc}")
        return unmet

    async def _leave(self, name: str, who: Principal, *, revoke: bool) -> Response:
        """``DELETE /api/identities/<name>`` and ``POST /api/identities/<name>/revoke``: as ``keys
        remove-identity`` and ``keys revoke`` (the roster, then OpenBao), and the person's tokens and
        camera grants go too. Asked again, it retries ending an OpenBao access that is still pending."""
        require(who, "identities")
        action = "revoke-identity" if revoke else "remove-identity"
        keys_dir = self.access.keys_dir
        async with self._changing_roster():
            people = self.access.identities()
            listed = people.get(name)
            try:
                pending = [i for i in await asyncio.to_thread(read_pending, keys_dir) if i.name == name]
            except RosterError as exc:
                raise Denied(409, self._quiet(str(exc))) from None
            if listed is None and not pending:
                raise Denied(404, f"no such identity: {name}")
            if listed is not None:
                others = [i for i in people.values() if i.name != name]
                if OFFICER in listed.roles and not any(OFFICER in i.roles for i in others):
                    raise Denied(409, f"{name} is the last privacy officer: enrol another first (nobody could manage "
                                      "people, tokens or policies over the network otherwise; on the gateway's host "
                                      "`privacy-gateway keys revoke` still can)")
                unmet = await asyncio.to_thread(self._unmet, others)
                if unmet and not revoke:
                    raise Denied(409, f"{name} is still needed: {'; '.join(unmet)}. Without them that camera's "
                                      "frames would be blanked; activate a policy that does not need them or enrol "
                                      "someone first (a revocation, for keys that must go now, always proceeds)")
            else:
                unmet = []
            store = self.access.store
            tokens = [t.id for t in store.tokens(name) if store.live(t.id) is not None]
            fingerprint = (listed or pending[0]).fingerprint
            details = {"identity": name, "fingerprint": fingerprint, "tokens": tokens,
                       **({"blanked": unmet} if unmet else {})}
            await self.changes.record(who, action, details)
            retry = f"ask again ({'POST /api/identities/' + name + '/revoke' if revoke else 'DELETE /api/identities/' + name})"
            try:
                departure = await asyncio.to_thread(leave, keys_dir, name, revoke=revoke, action=retry)
            except RosterError as exc:
                log.error("%s of %s failed: %s", action, name, exc)
                await self.changes.record(who, f"{action}-failed", {**details, "error": self._quiet(str(exc))})
                raise Denied(409, self._quiet(str(exc))) from None
            await asyncio.to_thread(self._forget, name, tokens)
        log.info("identity %s %s by %s", name, "revoked" if revoke else "removed", who.name)
        answer = {"identity": name, "fingerprint": fingerprint, "revoked": revoke, "tokens_revoked": len(tokens),
                  "access_ended": departure.access_ended, "messages": [self._quiet(line) for line in departure.lines],
                  "blanked": unmet}  # cameras whose frames are blanked until the roster meets their policy again
        if departure.failure is not None:
            return JSONResponse({**answer, "error": self._quiet(departure.failure)}, status_code=502)
        return JSONResponse(answer)

    def _forget(self, name: str, tokens: list[str]) -> None:
        for token_id in tokens:
            self.access.store.revoke(token_id)
        self.access.store.grant(name, [])

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
        await asyncio.to_thread(self.access.store.grant, name, cameras)
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
        token, record = await asyncio.to_thread(self.access.store.issue, identity, cameras, float(ttl), who.name,
                                                who.token)
        log.info("token %s issued to %s by %s", record.id, identity, who.name)
        return JSONResponse({"token": token, **record.public()}, status_code=201)

    async def revoke(self, request: Request, who: Principal, body: bytes) -> Response:
        token_id = request.path_params["token"]
        record = next((t for t in self.access.store.tokens() if t.id == token_id), None)
        if record is None or (record.identity != who.name and not who.may("tokens")):
            raise Denied(404, "no such token")  # others' tokens are not even confirmed to exist
        await self.changes.record(who, "revoke-token", {"token": token_id, "identity": record.identity})
        return JSONResponse((await asyncio.to_thread(self.access.store.revoke, token_id)).public())
