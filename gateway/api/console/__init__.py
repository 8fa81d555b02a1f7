"""The privacy officer's console at ``/console``: server-rendered pages over the same access control.

The page a browser loads (``/console``, ``/console/<page>``) is a shell with no data, the same for
everyone, like the viewer page: the token arrives in the URL fragment, is kept for the tab, and
goes with every request as a bearer header, never in a URL a server logs. The shell's script
(``static/console.js``) asks ``/console/part/<page>`` for each page's HTML, which is rendered here
with Jinja2 (autoescaped) for the principal asking, after the same permission check the API
makes: a viewer gets a 403 for every page, an investigator only the recordings and their own
audit entries. Actions (store, validate and activate a policy, grant, mint and revoke tokens, ...)
are calls to the ``/api`` resources themselves, so the console can do nothing the API would not
let the same token do. Pages are served under a strict content security policy: the gateway's
own scripts and styles only, nothing inline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ..access import Access, Denied, Principal
from ..pages import HEADERS
from ..requests import guarded

TEMPLATES = Path(__file__).with_name("templates")


@dataclass(frozen=True)
class Page:
    """One page of the console: its title, the permissions any of which opens it, and its data."""

    title: str
    permissions: tuple[str, ...]
    data: Callable[[Request, Principal], dict]


class Console:
    """The console's routes; pages are registered by the modules that render them (:meth:`page`)."""

    def __init__(self, access: Access, cameras: Callable[[], list[str]]) -> None:
        self.access, self._cameras = access, cameras
        self.pages: dict[str, Page] = {}
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                      undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.routes = [
            Route("/console", self.shell, methods=["GET"]),
            Route("/console/part/{page}", guarded(access, self.part), methods=["GET"]),
            Route("/console/{page}", self.shell, methods=["GET"]),
        ]

    def page(self, name: str, title: str, permissions: tuple[str, ...], data: Callable[[Request, Principal], dict]) -> None:
        """Register page ``name`` (rendered from ``templates/<name>.html`` with what ``data`` returns)."""
        self.pages[name] = Page(title, permissions, data)

    def allowed(self, who: Principal, page: Page) -> bool:
        """Whether ``who`` may open ``page`` (a camera-scoped permission: on at least one camera)."""
        known = self._cameras()
        return any(who.cameras(p, known) if p.endswith("*") else who.may(p) for p in page.permissions)

    def render(self, template: str, **values) -> str:
        return self.env.get_template(template).render(**values)

    async def shell(self, request: Request) -> Response:
        """The same empty page for everyone; its script loads the page the path names."""
        return HTMLResponse(self.render("shell.html"), headers=HEADERS)

    async def part(self, request: Request, who: Principal, body: bytes) -> Response:
        name = request.path_params["page"]
        page = self.pages.get(name)
        if page is None:
            raise Denied(404, f"no such console page: {name}")
        nav = [(key, p.title) for key, p in self.pages.items() if self.allowed(who, p)]
        if not self.allowed(who, page):
            if not nav:
                raise Denied(403, f"{who.name} may use no page of the console (a viewer watches at /view)")
            raise Denied(403, f"{who.name} may not open the console's {page.title} page")
        values = await asyncio.to_thread(page.data, request, who)  # reads the log, the vault: off the loop
        return HTMLResponse(self.render(f"{name}.html", who=who, nav=nav, page=name, title=page.title, **values),
                            headers={**HEADERS, "Content-Security-Policy": "default-src 'none'"})
