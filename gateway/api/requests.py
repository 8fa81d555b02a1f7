"""How every ``/api`` handler runs: bounded body, authentication, one permission, JSON in and out.

:func:`guarded` wraps a handler ``(request, principal, body) -> Response``: it reads the body
(at most :data:`MAX_BODY` bytes), authenticates the request (a bearer token or a signed request,
the body included in what is signed) and turns :class:`~.access.Denied` into its JSON answer
``{"error": "..."}``. Every change is written to the audit log by :class:`ChangeLog` before it is
answered, off the event loop (the append takes a file lock and an fsync).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from keys import GATEWAY_ACTOR, AuditError, VaultStore

from ..http import BodyTooLarge, peer_of, read_body, target_of
from .access import Access, Denied, Principal

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
Handler = Callable[[Request, Principal, bytes], Awaitable[Response]]


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


async def authenticate(access: Access, request: Request, body: bytes = b"") -> Principal:
    """The request's principal; raises :class:`Denied` (401, 429)."""
    return access.authenticate(peer_of(request), request.headers.get("authorization"), request.method,
                               target_of(request), body)


async def bounded_body(request: Request, limit: int = MAX_BODY) -> bytes:
    try:
        return await read_body(request, limit)
    except BodyTooLarge as exc:
        raise Denied(413, str(exc)) from None


def guarded(access: Access, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Read the body (bounded), authenticate, run; :class:`Denied` becomes its JSON answer."""

    async def endpoint(request: Request) -> Response:
        try:
            body = await bounded_body(request)
            principal = await authenticate(access, request, body)
            return await handler(request, principal, body)
        except Denied as denied:
            return error(denied.status, denied.message, denied.headers, **denied.extra)

    return endpoint


def json_object(body: bytes) -> dict:
    """The body as a JSON object; :class:`Denied` (400) if it is not one."""
    try:
        data = json.loads(body or b"{}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise Denied(400, f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Denied(400, "malformed JSON: expected an object")
    return data


class ChangeLog:
    """Writes every change made over the API to the audit log, signed by the gateway, naming who asked."""

    def __init__(self, store: VaultStore, signer) -> None:
        self.store, self._signer = store, signer

    async def record(self, principal: Principal, action: str, details: dict) -> None:
        """Log a change before it is made and answered; if the log cannot be written it is refused (503)."""
        via = {"token": principal.token} if principal.token else {"via": "signed request"}
        try:
            await asyncio.to_thread(self.store.audit.append, GATEWAY_ACTOR, self._signer, action,
                                    {**details, "by": principal.name, **via})
        except AuditError as exc:
            log.error("audit log unwritable: %s", exc)
            raise Denied(503, "the audit log cannot be written; nothing was changed") from None
