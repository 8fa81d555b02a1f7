"""The network face of the gateway: the Starlette app, routes by resource, metrics, pages (the top).

:mod:`.app` composes the live runtime with every entry point (WHEP, WHIP, RTSP, ``/api``,
``/health``, ``/metrics``, the pages); :mod:`.server` runs it under uvicorn, whose connections
:mod:`.connections` caps and holds to a request-head deadline. Resources:
:mod:`.cameras`, :mod:`.policies`, :mod:`.identities` (and tokens), :mod:`.audit`,
:mod:`.status`, :mod:`.recordings` and :mod:`.unmask_requests` (kept by :mod:`.unmask_store`);
:mod:`.console` the officer's and investigator's pages; :mod:`.demo` what the embedded demo adds (its people, its viewer token);
:mod:`.requests` is how every ``/api`` handler authenticates and logs changes;
:mod:`.access` who may do what. No handler touches pixels or does O(log) work on the event loop.

May import every other gateway package except ``cli``, and ``keys`` and ``redaction`` through
their public API.
"""

from .app import Gateway
from .demo import Demo
from .server import data_dir_default, serve

__all__ = ["Demo", "Gateway", "data_dir_default", "serve"]
