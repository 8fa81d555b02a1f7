"""The browser pages: the camera list and the viewer, static HTML with their scripts beside them.

The pages hold no data and are the same for everyone: whether a camera exists and whether the
token may watch it is for the API and the WHEP request to say. They are served with a content
security policy that lets only the gateway's own scripts and styles run (nothing inline), and
the token, which arrives in the URL fragment, never reaches a server log.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")
HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "media-src 'self' blob: mediastream:; img-src 'self' blob:; frame-ancestors 'none'; "
                                "base-uri 'none'; form-action 'none'"),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


@cache
def _html(name: str) -> str:
    return (STATIC / name).read_text("utf-8")


async def index(request: Request) -> Response:
    """The camera list: only the cameras the viewer's token grants (asked of ``/api/cameras`` with it)."""
    return HTMLResponse(_html("index.html"), headers=HEADERS)


async def viewer(request: Request) -> Response:
    """One camera's live view over WHEP."""
    return HTMLResponse(_html("viewer.html"), headers=HEADERS)


def routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET"]),
        Route("/view", index, methods=["GET"]),
        Route("/view/{camera}", viewer, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
