"""HTTP plumbing shared by every endpoint (WHEP, WHIP, the API): bounded bodies, plain errors, peers.

Starlette reads a request body whole unless asked otherwise; every endpoint here reads it
through :func:`read_body`, which stops at a limit (declared or streamed), so no client can make
the gateway buffer more than the endpoint expects.
"""

from __future__ import annotations

import ipaddress

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse


class BodyTooLarge(Exception):
    """A request body over the endpoint's limit (answer 413); nothing past the limit was read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; raises :class:`BodyTooLarge` as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def content_type(request: Request) -> str:
    """The media type of the body, lower case, without parameters."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def text_error(status: int, message: str, headers: dict[str, str] | None = None) -> PlainTextResponse:
    """A one-line ``text/plain`` error, as the media endpoints (WHEP, WHIP) answer."""
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


def json_error(status: int, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    """``{"error": message, ...extra}``, as the API answers its errors (and every entry point its caps)."""
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def peer_of(request: Request) -> str:
    """The client's address (the rate limiter's key): the connection's, or, when that is a trusted
    proxy (``listen.trusted_proxies``), the nearest address in ``X-Forwarded-For`` that is not."""
    host = request.client.host if request.client else "unknown"
    trusted = getattr(request.app.state, "trusted_proxies", ()) if "app" in request.scope else ()
    if not trusted or not within_networks(host, trusted):
        return host
    for hop in reversed(request.headers.get("x-forwarded-for", "").split(",")):
        hop = hop.strip()
        if not hop:
            continue
        if not within_networks(hop, trusted):
            return hop
    return host


def within_networks(address: str, networks) -> bool:
    """Whether ``address`` (text; anything unparsable is not) lies in one of ``networks``."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def target_of(request: Request) -> str:
    """The path and query a signed request covers."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")
