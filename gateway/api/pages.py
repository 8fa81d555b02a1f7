"""The browser pages: the camera list and the viewer, static HTML with their scripts beside them.

The pages hold no data and are the same for everyone: whether a camera exists and whether the
token may watch it is for the API and the WHEP request to say. They are served with a content
security policy that lets only the gateway's own scripts and styles run (nothing inline), and
the token, which arrives in the URL fragment, never reaches a server log.

In a cluster, the viewer of a camera another node runs is redirected (307) to that node's viewer
page (the browser carries the fragment, and so the token, over): the page then talks WHEP to the
node that runs the camera, on its own origin. A cross-origin redirect of the page's WHEP request
itself would not do: browsers drop the Authorization header on it and the page's content security
policy allows only its own origin. So the viewer page, when its offer is redirected (it offers
again when the gateway ends its session: the camera may have moved), reloads itself with the token
put back into the fragment, and this redirect sends it on. This tells whoever asks that a camera of
that name exists and which node runs it; nothing more (watching still needs the token).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
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


def routes(owner_url: Callable[[str], str | None] = lambda camera: None) -> list[BaseRoute]:
    """``owner_url(camera)``: the base URL of the cluster node that runs ``camera``, if not this one."""

    async def viewer(request: Request) -> Response:
        """One camera's live view over WHEP (on the node that runs it)."""
        owner = owner_url(request.path_params["camera"])
        if owner is not None:
            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(f"{owner}{request.url.path}{query}", status_code=307, headers=HEADERS)
        return HTMLResponse(_html("viewer.html"), headers=HEADERS)

    return [
        Route("/", index, methods=["GET"]),
        Route("/view", index, methods=["GET"]),
        Route("/view/{camera}", viewer, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
