"""What one WebRTC client may hold (issue 14): WHEP and WHIP sessions per principal, per address and
in all. Offers that never connect are the attack (each holds a peer connection and its sockets
until the connect timeout), so none of the sessions here connects. Requests come from several
client addresses through httpx's ASGI transport; the gateway-wide wiring (the identity as the
principal, /metrics) is tested in tests/test_access.py."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from whep_harness import CAMERA, FPS, HEIGHT, WIDTH, viewer_offer
from whip_harness import Publisher

from gateway.egress import Rendition, WhepServer
from gateway.ingest import WhipServer, WhipSource
from gateway.limits import Caps


async def as_named(request, camera) -> None:
    """Everyone may, and the principal is named (here by a header), as the gateway's authorisation leaves it."""
    request.state.principal = request.headers.get("x-who")


def poster(app, path: str, offer: str):
    async def post(address: str, who: str, body: str = offer) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            return await http.post(path.format(who=who), content=body,
                                   headers={"Content-Type": "application/sdp", "X-Who": who})

    return post


def assert_refused(response: httpx.Response, status: int, limit: str, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"error": error, "limit": limit}
    assert int(response.headers["retry-after"]) > 0


@pytest.mark.asyncio
async def test_whep_sessions_are_capped_per_principal_per_address_and_in_all():
    """Issue 14: one token opened 100 WHEP sessions (two open files each), with no cap."""
    rendition = Rendition(CAMERA, "h264", WIDTH, HEIGHT, FPS)
    server = WhepServer(lambda camera, codec: rendition if (camera, codec) == (CAMERA, "h264") else None, as_named,
                        caps=Caps(total=4, per_address=3, per_principal=2))
    post = poster(Starlette(routes=server.routes), f"/whep/{CAMERA}", await viewer_offer())
    try:
        assert [(await post("10.0.0.1", "vera")).status_code for _ in range(2)] == [201, 201]
        assert_refused(await post("10.0.0.1", "vera"), 429, "sessions_per_principal", "too many sessions for vera (at most 2)")
        assert (await post("10.0.0.1", "vera", "hello")).status_code == 429  # refused before the body is read
        kept = await post("10.0.0.1", "olga")  # the address's third
        assert kept.status_code == 201
        assert_refused(await post("10.0.0.1", "walt"), 429, "sessions_per_address",
                       "too many sessions from your address (at most 3)")
        assert (await post("10.0.0.2", "walt", "hello")).status_code == 400  # a bad offer holds no place
        assert (await post("10.0.0.2", "walt")).status_code == 201  # the fourth: all taken
        assert_refused(await post("10.0.0.3", "zoe"), 503, "sessions", "the gateway has all the sessions it takes (4); "
                       "try again later")
        transport = httpx.ASGITransport(app=Starlette(routes=server.routes))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            assert (await http.delete(kept.headers["location"])).status_code == 200  # gives its place back
        assert (await post("10.0.0.3", "zoe")).status_code == 201
        assert (server.ledger.held, dict(server.ledger.refused)) == (
            4, {"sessions_per_principal": 2, "sessions_per_address": 1, "sessions": 1})
    finally:
        await server.close()
        rendition.close()
    assert server.ledger.held == 0


@pytest.mark.asyncio
async def test_whip_sessions_are_capped_per_principal_per_address_and_in_all():
    sources = {f"cam{i}": WhipSource(f"cam{i}") for i in range(4)}
    for source in sources.values():
        source.start(lambda frame: None)
    server = WhipServer(sources.get, as_named, caps=Caps(total=3, per_address=2, per_principal=1))
    publisher = Publisher()
    try:
        offer = await publisher.offer()
    finally:
        await publisher.close()
    app = Starlette(routes=server.routes)
    try:
        post = {camera: poster(app, f"/whip/{camera}", offer) for camera in sources}
        assert (await post["cam0"]("10.0.0.1", "pete")).status_code == 201
        assert_refused(await post["cam1"]("10.0.0.1", "pete"), 429, "sessions_per_principal",
                       "too many sessions for pete (at most 1)")
        assert (await post["cam1"]("10.0.0.1", "paul")).status_code == 201
        assert_refused(await post["cam2"]("10.0.0.1", "quinn"), 429, "sessions_per_address",
                       "too many sessions from your address (at most 2)")
        assert (await post["cam0"]("10.0.0.2", "quinn")).status_code == 409  # one publisher a camera: no place held
        assert (await post["cam2"]("10.0.0.2", "quinn")).status_code == 201
        assert_refused(await post["cam3"]("10.0.0.3", "rosa"), 503, "sessions",
                       "the gateway has all the sessions it takes (3); try again later")
        assert server.ledger.held == 3
    finally:
        await server.close()
        for source in sources.values():
            source.stop()
    assert server.ledger.held == 0
