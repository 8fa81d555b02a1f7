"""How every ``/api`` handler runs: bounded body, authentication, one permission, JSON in and out.

:func:`guarded` wraps a handler ``(request, principal, body) -> Response``: it reads the body
(at most :data:`MAX_BODY` bytes), authenticates the request (a bearer token or a signed request,
the body included in what is signed) and turns :class:`~.access.Denied` into its JSON answer
``{"error": "..."}`` (a cluster's shared state out of reach: 503). Every change is written to
the audit log by :class:`ChangeLog` before it is answered, off the event loop (the append takes a
file lock and an fsync).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from keys import AuditError, VaultStore, actor_of

from ..http import BodyTooLarge, json_error, peer_of, read_body, target_of
from ..state import StateUnavailable
from .access import Access, Denied, Principal

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
Handler = Callable[[Request, Principal, bytes], Awaitable[Response]]


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    return json_error(status, message, headers, **extra)


async def authenticate(access: Access, request: Request, body: bytes = b"") -> Principal:
    """The request's principal; raises :class:`Denied` (401, 429). A signed request is checked off
    the event loop (its signature is written where replays are refused: a file, or the database)."""
    authorization = request.headers.get("authorization")
    args = (peer_of(request), authorization, request.method, target_of(request), body,
            request.headers.get("host", ""))
    if authorization and authorization.strip().lower().startswith("signature"):
        return await asyncio.to_thread(access.authenticate, *args)
    return access.authenticate(*args)


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
        except StateUnavailable as exc:  # a cluster's database: nothing was changed, ask again later
            log.error("%s %s: %s", request.method, request.url.path, exc)
            return error(503, "the cluster's shared state is unavailable; nothing was changed, try again later")

    return endpoint


#: deepest nesting of lists and objects a request body may have (a policy needs 4)
MAX_DEPTH = 32


def nesting(text: bytes | str) -> int:
    """How deep ``[`` and ``{`` nest in a JSON or YAML flow text (strings skipped), without
    parsing it: deep bodies are refused before a recursive parser could overflow."""
    data = text.encode() if isinstance(text, str) else text
    depth = deepest = 0
    quoted = escaped = False
    for byte in data:
        if quoted:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                quoted = False
        elif byte == 0x22:
            quoted = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def json_object(body: bytes) -> dict:
    """The body as a JSON object; :class:`Denied` (400) if it is not one, or nests deeper than
    :data:`MAX_DEPTH`."""
    if nesting(body) > MAX_DEPTH:
        raise Denied(400, f"malformed JSON: nested deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(body or b"{}")
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
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
            await asyncio.to_thread(self.store.audit.append, actor_of(self._signer), self._signer, action,
                                    {**details, "by": principal.name, **via})
        except AuditError as exc:
            log.error("audit log unwritable: %s", exc)
            raise Denied(503, "the audit log cannot be written; nothing was changed") from None
