"""``/health`` and ``/metrics``: whether the gateway is well, for load balancers and Prometheus.

``/health`` answers anyone with ``ok`` (200) or ``degraded`` (503: a camera is not well, see
:meth:`~gateway.live.LiveCamera.health`); holders of the ``metrics`` permission get every
camera's reasons and counters too. ``/metrics`` is the Prometheus exposition (bearer token in the scrape config).
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..live import Runtime
from .access import Access, Denied, require
from .metrics import CONTENT_TYPE, Metrics
from .requests import authenticate


class StatusRoutes:
    def __init__(self, runtime: Runtime, access: Access, metrics: Metrics) -> None:
        self.runtime, self.access, self.metrics = runtime, access, metrics
        self.routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/api/gateway", self.gateway, methods=["GET"]),
            Route("/metrics", self.render, methods=["GET"]),
        ]

    async def gateway(self, request: Request) -> Response:
        """Public: the gateway key's fingerprint, which signed requests name (and people compare out of band)."""
        return JSONResponse({"fingerprint": self.access.fingerprint})

    async def health(self, request: Request) -> Response:
        report = self.runtime.health()
        status = 200 if report["status"] == "ok" else 503
        if not request.headers.get("authorization"):
            return JSONResponse({"status": report["status"]}, status_code=status)
        try:
            require(await authenticate(self.access, request), "metrics")
        except Denied as denied:
            return JSONResponse({"error": denied.message}, status_code=denied.status, headers=denied.headers)
        return JSONResponse(report, status_code=status)

    async def render(self, request: Request) -> Response:
        try:
            require(await authenticate(self.access, request), "metrics")
        except Denied as denied:
            return JSONResponse({"error": denied.message}, status_code=denied.status, headers=denied.headers)
        return Response(await asyncio.to_thread(self.metrics.render), media_type=CONTENT_TYPE)
