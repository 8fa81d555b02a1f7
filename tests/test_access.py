"""Access control over HTTP: every role × every endpoint × own and other camera; tokens; signed requests.

A real :class:`gateway.api.Gateway` (two cameras, not started: no frame is needed to
decide who may do what) answers over its ASGI app. Identities are real keys in a real key
directory; tokens are issued through the API the way users get them.
"""

import hashlib
import json

import httpx
import numpy as np
import pytest

from gateway.api.access import FAILURE_LIMIT, MAX_TOKEN_TTL, RTSP_REALM, Denied, HandOn, TokenStore, sign_request
from gateway.api.access.handoff import LOOK_UP_EVERY, LOOK_UPS_PER_SECOND
from gateway.config import load_config
from gateway.api import Gateway
from keys.directory import KeyDirectory
from keys.identity import PrivateIdentity

ROLES = {"olga": "privacy-officer", "vera": "viewer", "ivan": "investigator", "aldo": "auditor", "pete": "publisher"}
POLICY = {"classes": {"plate": {"enabled": False}}, "detection": {"stride": 2, "threads": 1},
          "unmask": {"face": {"roles": ["investigator"], "quorum": 1}, "watermark": "optional"}}


@pytest.fixture()
def world(tmp_path, openbao):
    """A gateway with cameras lobby, garage and door (WHIP); vera (viewer) is granted lobby, pete (publisher) door."""
    keys = tmp_path / "data" / "keys"
    directory = KeyDirectory.init(keys)
    people = {name: PrivateIdentity.generate(name, [role]) for name, role in ROLES.items()}
    for person in people.values():
        directory.add(person.public)
    (tmp_path / "faces.yaml").write_text(json.dumps(POLICY))
    from gateway.config import DEFAULT

    clip = DEFAULT.parent / "samples" / "vtest-10s.mp4"
    (tmp_path / "gateway.yaml").write_text(json.dumps({
        "cameras": {**{name: {"source": str(clip), "policy": "faces.yaml"} for name in ("lobby", "garage")},
                    "door": {"protocol": "whip", "policy": "faces.yaml"}},
        "storage": {"data_dir": "data"}, "escrow": openbao.config()}))
    config, policies = load_config(tmp_path / "gateway.yaml")
    gateway = Gateway(config, policies, announce=lambda line: None)
    gateway.access.store.grant("vera", ["lobby"])
    gateway.access.store.grant("pete", ["door"])
    yield gateway, people
    for camera in gateway.runtime.cameras.values():  # never started, but its sealers hold locks and threads
        camera.pipeline.step.close()


async def client(gateway, peer="10.0.0.1"):
    transport = httpx.ASGITransport(app=gateway.app, client=(peer, 4000))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


def sign(fingerprint, person, method, target, body=b"", **kw) -> str:
    """A signed request to this test's gateway (Host ``gateway``, whose key has ``fingerprint``)."""
    return sign_request(person, method, target, body, host="gateway", gateway=fingerprint, **kw)


async def token_for(http, person, **fields) -> str:
    """A token the way an identity gets its first one: a request signed with its own key."""
    body = json.dumps(fields).encode()
    fingerprint = (await http.get("/api/gateway")).json()["fingerprint"]  # public: what signatures name
    reply = await http.post("/api/tokens", content=body, headers={
        "Authorization": sign(fingerprint, person, "POST", "/api/tokens", body), "Content-Type": "application/json"})
    assert reply.status_code == 201, reply.text
    return reply.json()["token"]


# (method, path, body) -> who gets through (else 403). {own}/{other}: lobby/garage.
MATRIX = [
    ("GET", "/api/whoami", None, set(ROLES)),
    ("GET", "/api/cameras", None, {"olga", "vera", "pete"}),
    ("GET", "/api/cameras/{own}/policy", None, {"olga"}),
    ("GET", "/api/cameras/{other}/policy", None, {"olga"}),
    ("PUT", "/api/cameras/{own}/policy", {"version": "0" * 64}, {"olga"}),  # olga: 404, no such version
    ("GET", "/api/cameras/{own}", None, {"olga"}),
    ("POST", "/api/cameras", {"id": "attic", "holdback_ms": 1}, {"olga"}),  # olga: 422, nothing added
    ("PUT", "/api/cameras/{own}", {"holdback_ms": 1}, {"olga"}),  # olga: 422, nothing restarted
    ("DELETE", "/api/cameras/attic", None, {"olga"}),  # olga: 404, no such camera
    ("GET", "/api/policies", None, {"olga"}),
    ("POST", "/api/policies/validate", POLICY, {"olga"}),
    ("POST", "/api/policies", POLICY, {"olga"}),
    ("GET", "/api/identities", None, {"olga"}),
    ("PUT", "/api/identities/vera/cameras", {"cameras": ["lobby"]}, {"olga"}),
    ("GET", "/api/tokens", None, set(ROLES)),  # each sees its own; olga sees all (asserted below)
    ("GET", "/api/audit", None, {"olga", "aldo", "ivan"}),  # ivan: his own entries only (asserted below)
    ("GET", "/api/audit/verify", None, {"olga", "aldo"}),
    ("GET", "/metrics", None, {"olga", "aldo"}),
    # WHEP and WHIP: past access control a text/plain offer is refused 415 (or 404 for a camera without WHIP)
    ("POST", "/whep/{own}", "not sdp", {"olga", "vera"}),
    ("POST", "/whep/{other}", "not sdp", {"olga"}),
    ("DELETE", "/whep/{own}/no-session", None, {"olga", "vera"}),
    ("DELETE", "/whep/{other}/no-session", None, {"olga"}),
    ("POST", "/whip/door", "not sdp", {"pete"}),
    ("POST", "/whip/{other}", "not sdp", set()),
    ("DELETE", "/whip/door/no-session", None, {"pete"}),
]


@pytest.mark.asyncio
async def test_every_role_on_every_endpoint_for_own_and_other_camera(world):
    gateway, people = world
    async with await client(gateway) as http:
        tokens = {name: await token_for(http, person) for name, person in people.items()}
        outcomes = {}
        for method, path, body, allowed in MATRIX:
            url = path.format(own="lobby", other="garage")
            content = body if isinstance(body, str) else (json.dumps(body) if body is not None else None)
            for name in ROLES:
                reply = await http.request(method, url, content=content,
                                           headers={"Authorization": f"Bearer {tokens[name]}", "Content-Type": "text/plain"
                                                    if isinstance(body, str) else "application/json"})
                through = reply.status_code not in (401, 403)
                outcomes[method, path, name] = reply.status_code
                assert through == (name in allowed), (method, url, name, reply.status_code, reply.text)
            anonymous = await http.request(method, url, content=content)
            assert anonymous.status_code == 401, (method, url, anonymous.text)
        # the ones that get through get the real answer
        assert outcomes["PUT", "/api/cameras/{own}/policy", "olga"] == 404
        assert outcomes["POST", "/api/cameras", "olga"] == outcomes["PUT", "/api/cameras/{own}", "olga"] == 422
        assert outcomes["DELETE", "/api/cameras/attic", "olga"] == 404
        assert outcomes["POST", "/whep/{own}", "vera"] == 415 and outcomes["POST", "/whip/door", "pete"] == 415
        assert outcomes["POST", "/api/policies", "olga"] == 201

        # what each sees of shared listings
        cameras = {name: (await http.get("/api/cameras", headers={"Authorization": f"Bearer {tokens[name]}"})).json()
                   for name in ("olga", "vera", "pete")}
        assert [c["id"] for c in cameras["olga"]["cameras"]] == ["lobby", "garage", "door"]
        assert "policy" in cameras["olga"]["cameras"][0]
        assert cameras["vera"] == {"cameras": [{"id": "lobby"}]} and cameras["pete"] == {"cameras": [{"id": "door"}]}
        # RTSP egress asks the same question of a token (digest username: its id)
        for name, token in tokens.items():
            user = gateway.access.rtsp_user(token.split("_")[1])
            assert [c for c in ("lobby", "garage", "door") if user.may_view(c)] == \
                {"olga": ["lobby", "garage", "door"], "vera": ["lobby"]}.get(name, []), name
        assert gateway.access.rtsp_user("no-such-token") is None
        listed = {name: (await http.get("/api/tokens", headers={"Authorization": f"Bearer {tokens[name]}"})).json()["tokens"]
                  for name in ROLES}
        assert {t["identity"] for t in listed["olga"]} == set(ROLES)
        assert all({t["identity"] for t in listed[n]} == {n} for n in ROLES if n != "olga")
        assert not any("digest" in t or "rtsp_ha1" in t for t in listed["olga"])
        entries = (await http.get("/api/audit", headers={"Authorization": f"Bearer {tokens['ivan']}"})).json()["entries"]
        everything = (await http.get("/api/audit", headers={"Authorization": f"Bearer {tokens['aldo']}"})).json()["entries"]
        assert entries and len(everything) > len(entries)
        assert all(e["details"].get("by") == "ivan" or e["actor"] == "ivan" for e in entries)
        health = await http.get("/health")
        assert set(health.json()) == {"status"}  # anyone: the status, nothing about cameras
        detailed = await http.get("/health", headers={"Authorization": f"Bearer {tokens['aldo']}"})
        assert set(detailed.json()["cameras"]) == {"lobby", "garage", "door"}


@pytest.mark.asyncio
async def test_token_scope_limits_cameras_and_viewers_cannot_widen_it(world):
    gateway, people = world
    async with await client(gateway) as http:
        olga = await token_for(http, people["olga"])
        # an officer issues vera a token; vera's grant (lobby) still bounds it
        reply = await http.post("/api/tokens", json={"identity": "vera", "cameras": ["lobby", "garage"], "ttl": 600},
                                headers={"Authorization": f"Bearer {olga}"})
        assert reply.status_code == 201
        vera = reply.json()["token"]
        sdp = {"Content-Type": "text/plain"}
        assert (await http.post("/whep/lobby", content="x", headers={**sdp, "Authorization": f"Bearer {vera}"})).status_code == 415
        assert (await http.post("/whep/garage", content="x", headers={**sdp, "Authorization": f"Bearer {vera}"})).status_code == 403
        # an officer token scoped to garage (asked for with her key: a token never mints its own
        # identity's tokens) does not reach lobby
        assert (await http.post("/api/tokens", json={"cameras": ["garage"]},
                                headers={"Authorization": f"Bearer {olga}"})).status_code == 403
        scoped = await token_for(http, people["olga"], cameras=["garage"])
        assert (await http.post("/whep/lobby", content="x", headers={**sdp, "Authorization": f"Bearer {scoped}"})).status_code == 403
        assert (await http.post("/whep/garage", content="x", headers={**sdp, "Authorization": f"Bearer {scoped}"})).status_code == 415
        # a viewer's token cannot mint more tokens, nor tokens for others
        for body in ({}, {"identity": "olga"}):
            assert (await http.post("/api/tokens", json=body, headers={"Authorization": f"Bearer {vera}"})).status_code == 403
        # unknown identity, unknown camera, bad ttl, unknown field
        signed = lambda body: {"Authorization": sign(gateway.access.fingerprint, people["olga"], "POST", "/api/tokens", json.dumps(body).encode()),
                               "Content-Type": "application/json"}
        for body, status in (({"identity": "nobody"}, 404), ({"cameras": ["attic"]}, 404), ({"ttl": 0}, 400),
                             ({"ttl": 10**9}, 400), ({"scope": "all"}, 400)):
            reply = await http.post("/api/tokens", content=json.dumps(body).encode(), headers=signed(body))
            assert reply.status_code == status, (body, reply.text)


@pytest.mark.asyncio
async def test_expired_and_revoked_tokens_are_refused(world):
    gateway, people = world
    async with await client(gateway) as http:
        vera = await token_for(http, people["vera"], ttl=600)
        auth = {"Authorization": f"Bearer {vera}"}
        assert (await http.get("/api/whoami", headers=auth)).json()["name"] == "vera"
        token_id = vera.split("_")[1]
        clock = gateway.access.store._clock
        gateway.access.store._clock = lambda: clock() + 601  # the token's expiry passes
        reply = await http.get("/api/whoami", headers=auth)
        assert (reply.status_code, reply.json()["error"]) == (401, "token expired")
        gateway.access.store._clock = clock

        other = await token_for(http, people["vera"], ttl=600)
        olga = await token_for(http, people["olga"])
        assert (await http.delete(f"/api/tokens/{token_id}", headers={"Authorization": f"Bearer {other}"})).status_code == 200
        reply = await http.get("/api/whoami", headers=auth)
        assert (reply.status_code, reply.json()["error"]) == (401, "token revoked")
        # someone else's token: not even confirmed to exist, unless one may manage tokens
        ivan = await token_for(http, people["ivan"])
        other_id = other.split("_")[1]
        assert (await http.delete(f"/api/tokens/{other_id}", headers={"Authorization": f"Bearer {ivan}"})).status_code == 404
        assert (await http.delete(f"/api/tokens/{other_id}", headers={"Authorization": f"Bearer {olga}"})).status_code == 200
        assert (await http.get("/api/whoami", headers={"Authorization": f"Bearer {other}"})).status_code == 401
        actions = [e["action"] for e in (await http.get("/api/audit", headers={"Authorization": f"Bearer {olga}"})).json()["entries"]]
        assert actions.count("issue-token") == 4 and actions.count("revoke-token") == 2
    stored = (gateway.config.storage.data_dir / "access" / "tokens.json").read_text()
    assert vera not in stored and vera.split("_", 2)[2] not in stored  # hashed at rest


@pytest.mark.asyncio
async def test_signed_requests_are_checked_and_never_replayed(world):
    gateway, people = world
    async with await client(gateway) as http:
        body = b"{}"
        header = sign(gateway.access.fingerprint, people["vera"], "POST", "/api/tokens", body)
        headers = {"Authorization": header, "Content-Type": "application/json"}
        assert (await http.post("/api/tokens", content=body, headers=headers)).status_code == 201
        replay = await http.post("/api/tokens", content=body, headers=headers)
        assert (replay.status_code, replay.json()["error"]) == (401, "signed request replayed")
        # another body, path or key than the signature covers; a stale clock; a stranger; garbage
        fresh = sign(gateway.access.fingerprint, people["vera"], "POST", "/api/tokens", body)
        assert (await http.post("/api/tokens", content=b'{"ttl": 60}', headers={"Authorization": fresh})).status_code == 401
        assert (await http.get("/api/whoami", headers={"Authorization": sign(gateway.access.fingerprint, people["vera"], "GET", "/api/cameras")})).status_code == 401
        forged = sign(gateway.access.fingerprint, people["ivan"], "GET", "/api/whoami").replace('keyId="ivan"', 'keyId="olga"')
        assert (await http.get("/api/whoami", headers={"Authorization": forged})).status_code == 401
        stale = sign(gateway.access.fingerprint, people["vera"], "GET", "/api/whoami", created=1_000_000_000)
        reply = await http.get("/api/whoami", headers={"Authorization": stale})
        assert reply.status_code == 401 and "time window" in reply.json()["error"]
        stranger = PrivateIdentity.generate("mallory", ["privacy-officer"])
        assert (await http.get("/api/whoami", headers={"Authorization": sign(gateway.access.fingerprint, stranger, "GET", "/api/whoami")})).status_code == 401
    async with await client(gateway, peer="10.0.0.2") as http:  # a fresh address: under the failure limit
        for junk in ("Signature", 'Signature keyId="vera"', "Signature created=x", "Basic dmVyYTp4", "Bearer", "Bearer pgw_x_y"):
            reply = await http.get("/api/whoami", headers={"Authorization": junk})
            assert reply.status_code == 401 and reply.json()["error"], junk


@pytest.mark.asyncio
async def test_failed_authentication_is_rate_limited_logged_and_counted(world, caplog):
    gateway, people = world
    async with await client(gateway, peer="10.9.9.9") as attacker, await client(gateway, peer="10.1.1.1") as other:
        olga = await token_for(other, people["olga"])
        for _ in range(FAILURE_LIMIT):
            assert (await attacker.get("/api/whoami", headers={"Authorization": "Bearer pgw_guess"})).status_code == 401
        blocked = await attacker.get("/api/whoami", headers={"Authorization": "Bearer pgw_guess"})
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1  # the next failure
        # issue 14: someone else's failures from the same address (a NAT, a proxy) never lock out a valid token
        assert (await attacker.get("/api/whoami", headers={"Authorization": f"Bearer {olga}"})).status_code == 200
        assert (await other.get("/api/whoami", headers={"Authorization": f"Bearer {olga}"})).status_code == 200
        metrics = (await other.get("/metrics", headers={"Authorization": f"Bearer {olga}"})).text
        assert 'privacy_gateway_auth_failures_total{reason="invalid token"} 11.0' in metrics
    assert sum("authentication failed from 10.9.9.9" in r.getMessage() for r in caplog.records) == FAILURE_LIMIT + 1


@pytest.mark.asyncio
async def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client(world):
    """With listen.trusted_proxies, X-Forwarded-For names the client: one client's failures behind
    the proxy are its own, and an untrusted peer's X-Forwarded-For is ignored."""
    import ipaddress

    gateway, people = world
    gateway.app.state.trusted_proxies = (ipaddress.ip_network("10.5.0.0/16"),)
    async with await client(gateway, peer="10.5.0.1") as proxy, await client(gateway, peer="10.6.0.1") as direct:
        for _ in range(FAILURE_LIMIT):
            reply = await proxy.get("/api/whoami", headers={"Authorization": "Bearer pgw_guess",
                                                             "X-Forwarded-For": "192.0.2.7"})
            assert reply.status_code == 401
        bad = {"Authorization": "Bearer pgw_guess"}
        assert (await proxy.get("/api/whoami", headers={**bad, "X-Forwarded-For": "192.0.2.7"})).status_code == 429
        assert (await proxy.get("/api/whoami", headers={**bad, "X-Forwarded-For": "192.0.2.8"})).status_code == 401
        # a peer that is not a trusted proxy cannot pick its address
        for _ in range(FAILURE_LIMIT):
            await direct.get("/api/whoami", headers={**bad, "X-Forwarded-For": "192.0.2.9"})
        assert (await direct.get("/api/whoami", headers={**bad, "X-Forwarded-For": "192.0.2.10"})).status_code == 429


@pytest.mark.asyncio
async def test_malformed_requests_get_clear_4xx(world):
    gateway, people = world
    async with await client(gateway) as http:
        olga = {"Authorization": f"Bearer {await token_for(http, people['olga'])}"}
        cases = [
            ("POST", "/api/tokens", b"{not json", 400),
            ("POST", "/api/tokens", b"[1, 2]", 400),
            ("POST", "/api/tokens", b"\xff\xfe", 400),
            ("POST", "/api/policies", b"classes: [unclosed", 400),
            ("POST", "/api/policies", b"\xff", 400),
            ("POST", "/api/policies", b"x" * (70 * 1024), 413),
            ("PUT", "/api/identities/vera/cameras", b'{"cameras": "lobby"}', 400),
            ("PUT", "/api/identities/nobody/cameras", b'{"cameras": []}', 404),
            ("PUT", "/api/cameras/lobby/policy", b'{"version": "latest"}', 400),
            ("PUT", "/api/cameras/attic/policy", b'{"version": "latest"}', 404),
            ("GET", "/api/policies/not-a-version", b"", 404),
            ("GET", f"/api/policies/{'a' * 64}/diff/{'b' * 64}", b"", 404),
            ("DELETE", "/api/tokens/nothing", b"", 404),
        ]
        for method, path, body, status in cases:
            reply = await http.request(method, path, content=body, headers=olga)
            assert reply.status_code == status and reply.json()["error"], (method, path, reply.status_code, reply.text)


@pytest.mark.asyncio
async def test_activation_refusals_are_409_and_unexpected_failures_500_without_details(world, caplog):
    """A policy that cannot run here is the officer's to fix (409, why, the old policy stays); an
    unexpected failure is the gateway's bug: 500, a generic message, the traceback in the log."""
    from keys import VaultError

    gateway, people = world
    pipeline = gateway.cameras["lobby"].pipeline
    async with await client(gateway) as http:
        olga = {"Authorization": f"Bearer {await token_for(http, people['olga'])}"}
        stored = await http.post("/api/policies", content=json.dumps({**POLICY, "name": "other"}),
                                 headers={**olga, "Content-Type": "application/json"})
        version = stored.json()["version"]
        before = (await http.get("/api/cameras/lobby/policy", headers=olga)).json()["version"]

        def refuse(policy, identities=None, timeout=30.0):
            raise VaultError("unmask.face: roles auditor have 0 identities; a quorum of 1 cannot be met")

        def crash(policy, identities=None, timeout=30.0):
            raise RuntimeError("secret internals: /var/lib/thing at 0x7f")

        for fake, status in ((refuse, 409), (crash, 500)):
            pipeline.activate = fake
            reply = await http.put("/api/cameras/lobby/policy", content=json.dumps({"version": version}), headers=olga)
            assert reply.status_code == status, reply.text
            assert "stays in force" in reply.json()["error"]
        assert "quorum of 1 cannot be met" not in reply.json()["error"] and "secret" not in reply.json()["error"]
        assert (await http.get("/api/cameras/lobby/policy", headers=olga)).json()["version"] == before
        entries = (await http.get("/api/audit", headers=olga)).json()["entries"]
        failed = [e["details"]["error"] for e in entries if e["action"] == "activate-policy-failed"]
        assert failed == ["unmask.face: roles auditor have 0 identities; a quorum of 1 cannot be met", "internal error"]
    crashes = [r for r in caplog.records if r.levelname == "ERROR" and r.exc_info]
    assert any("secret internals" in str(r.exc_info[1]) for r in crashes)  # the traceback is in the log


@pytest.mark.asyncio
async def test_frames_egress_gives_up_are_counted_on_metrics(world):
    """What the live encoders and the viewers skip reaches /metrics per camera and codec (and the RTSP skips)."""
    from gateway.frames import Released

    gateway, people = world
    output = gateway.cameras["lobby"].output
    image = np.zeros((64, 96, 3), np.uint8)
    for index in range(2):  # the renditions are made from the camera's first two frames
        output(Released("lobby", index, index / 10, "redacted", image, image.shape))
    try:
        h264, vp8 = output.rendition("h264"), output.rendition("vp8")
        h264.frames_dropped, h264.packets_dropped, vp8.packets_dropped = 3, 17, 5
        async with await client(gateway) as http:
            olga = {"Authorization": f"Bearer {await token_for(http, people['olga'])}"}
            metrics = (await http.get("/metrics", headers=olga)).text
    finally:
        output.close()
    assert 'privacy_gateway_rendition_frames_dropped_total{camera="lobby",codec="h264"} 3.0' in metrics
    assert 'privacy_gateway_viewer_packets_dropped_total{camera="lobby",codec="h264"} 17.0' in metrics
    assert 'privacy_gateway_viewer_packets_dropped_total{camera="lobby",codec="vp8"} 5.0' in metrics
    assert 'privacy_gateway_rtsp_frames_skipped_total{camera="lobby"} 0.0' in metrics


@pytest.mark.asyncio
async def test_offers_naming_only_addresses_outside_the_ice_networks_are_refused_and_counted_on_metrics(world):
    """Issue 14 (ICE): on the default listen address (loopback), WHEP and WHIP offers whose
    candidates all name 127.0.0.90 are answered 400 before any peer connection exists, and
    /metrics counts what was ignored per endpoint and reason (tests/test_webrtc_ice.py has the
    packets)."""
    import re

    from aiortc import RTCConfiguration, RTCPeerConnection, VideoStreamTrack

    from gateway.frames import Released

    gateway, people = world
    output = gateway.cameras["lobby"].output
    image = np.zeros((64, 96, 3), np.uint8)
    for index in range(2):  # the renditions are made from the camera's first two frames
        output(Released("lobby", index, index / 10, "redacted", image, image.shape))
    try:
        async with await client(gateway) as http:
            named = {}
            for person, endpoint, path in (("vera", "whep", "/whep/lobby"), ("pete", "whip", "/whip/door")):
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                if endpoint == "whep":
                    pc.addTransceiver("video", direction="recvonly")
                else:
                    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
                await pc.setLocalDescription(await pc.createOffer())
                await pc.close()
                offer, named[endpoint] = re.subn(r"^(a=candidate:\S+ \d+ \S+ \d+ )\S+", r"\g<1>127.0.0.90",
                                                 pc.localDescription.sdp, flags=re.MULTILINE)
                assert named[endpoint] >= 1  # aiortc names every non-loopback address of this host
                token = await token_for(http, people[person])
                reply = await http.post(path, content=offer, headers={"Authorization": f"Bearer {token}",
                                                                      "Content-Type": "application/sdp"})
                assert reply.status_code == 400
                assert reply.text.startswith(f"no usable ICE candidate: the offer's {named[endpoint]} candidate")
            olga = {"Authorization": f"Bearer {await token_for(http, people['olga'])}"}
            metrics = (await http.get("/metrics", headers=olga)).text
    finally:
        output.close()
    assert gateway.whep.viewers("lobby") == 0 and gateway.whip.publishers("door") == 0
    for endpoint, count in named.items():
        assert f'privacy_gateway_ice_candidates_ignored_total{{endpoint="{endpoint}",reason="network"}} {count}.0' in metrics


@pytest.mark.asyncio
async def test_a_token_never_outlives_or_outranks_the_token_that_issued_it(world):
    """Issue 14: an 8-hour officer token minted a 90-day token for its own identity that survived
    revoking the parent. Now only a signed request mints one's own tokens; a token issued by a
    token expires no later and is revoked with it."""
    gateway, people = world
    async with await client(gateway) as http:
        olga = await token_for(http, people["olga"], ttl=8 * 3600)
        own = await http.post("/api/tokens", json={"ttl": 90 * 86400}, headers={"Authorization": f"Bearer {olga}"})
        assert own.status_code == 403 and "identity key" in own.json()["error"]
        child = await http.post("/api/tokens", json={"identity": "vera", "ttl": 90 * 86400},
                                headers={"Authorization": f"Bearer {olga}"})
        assert child.status_code == 201
        record = child.json()
        parent_id = olga.split("_")[1]
        parent = next(t for t in gateway.access.store.tokens() if t.id == parent_id)
        assert record["expires"] == next(t for t in gateway.access.store.tokens()
                                         if t.id == record["id"]).public()["expires"] <= parent.public()["expires"]
        vera = {"Authorization": f"Bearer {child.json()['token']}"}
        assert (await http.get("/api/whoami", headers=vera)).status_code == 200
        assert (await http.delete(f"/api/tokens/{parent_id}", headers={"Authorization": f"Bearer {olga}"})).status_code == 200
        reply = await http.get("/api/whoami", headers=vera)
        assert (reply.status_code, reply.json()["error"]) == (401, "token revoked")


@pytest.mark.asyncio
async def test_deeply_nested_json_and_yaml_get_a_clean_400(world):
    gateway, people = world
    async with await client(gateway) as http:
        olga = await token_for(http, people["olga"])
        auth = {"Authorization": f"Bearer {olga}"}
        deep = b"[" * 30000 + b"]" * 30000
        reply = await http.post("/api/tokens", content=b'{"cameras": ' + deep + b"}", headers=auth)
        assert reply.status_code == 400 and "nested deeper" in reply.json()["error"]
        reply = await http.post("/api/policies", content=deep, headers={**auth, "Content-Type": "application/json"})
        assert reply.status_code == 400 and "nested deeper" in reply.json()["error"]
        yaml_deep = ("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 3000))).encode()[:60000]
        reply = await http.post("/api/policies", content=yaml_deep, headers={**auth, "Content-Type": "application/yaml"})
        assert reply.status_code in (400, 422)  # never a 500 with a RecursionError


@pytest.mark.asyncio
async def test_a_signed_request_replays_neither_after_a_restart_nor_at_another_gateway_or_host(world, tmp_path):
    """Issue 14: a signed request captured before a restart minted a token after it. The signature
    now covers the Host and the gateway's key fingerprint, and used signatures are kept on disk."""
    from gateway.api.access import Access

    gateway, people = world
    body = b'{"ttl": 60}'
    header = sign(gateway.access.fingerprint, people["vera"], "POST", "/api/tokens", body)
    async with await client(gateway) as http:
        assert (await http.post("/api/tokens", content=body, headers={"Authorization": header})).status_code == 201
    # the gateway restarts: a new Access over the same data directory still knows the signature
    restarted = Access(gateway.config.keys_dir, TokenStore(gateway.config.storage.data_dir / "access"))
    with pytest.raises(Denied, match="replayed"):
        restarted.authenticate("10.0.0.1", header, "POST", "/api/tokens", body, "gateway")
    # at another gateway (another key), or sent to another Host, the signature does not verify
    fresh = sign(gateway.access.fingerprint, people["vera"], "POST", "/api/tokens", body)
    with pytest.raises(Denied, match="invalid signature"):
        restarted.authenticate("10.0.0.1", fresh, "POST", "/api/tokens", body, "other.example:8080")
    elsewhere = sign("0123456789abcdef", people["vera"], "POST", "/api/tokens", body)
    with pytest.raises(Denied, match="invalid signature"):
        restarted.authenticate("10.0.0.1", elsewhere, "POST", "/api/tokens", body, "gateway")
    assert restarted.authenticate("10.0.0.1", fresh, "POST", "/api/tokens", body, "gateway").name == "vera"


def test_the_rtsp_digest_hash_a_password_equivalent_is_kept_private(tmp_path):
    """Issue 14: tokens.json holds each token's HA1, which alone opens its RTSP feeds: 0600 in a 0700
    directory, and tightened when the gateway finds it looser (an older version's files, a copy)."""
    import stat

    from gateway.api.access import TokenStore

    directory = tmp_path / "data" / "access"
    token, record = TokenStore(directory).issue("vera", None, 60, "test")
    tokens = directory / "tokens.json"
    assert record.rtsp_ha1 in tokens.read_text() and token.rsplit("_", 1)[1] not in tokens.read_text()
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert (mode(tokens), mode(directory)) == (0o600, 0o700)
    tokens.chmod(0o644)
    directory.chmod(0o755)
    assert TokenStore(directory).live(record.id) == record
    assert (mode(tokens), mode(directory)) == (0o600, 0o700)


@pytest.mark.asyncio
async def test_one_identitys_whep_sessions_are_capped_over_all_its_tokens(world):
    """Issue 14: one viewer token opened 100 WHEP sessions that never connected. The gateway counts
    them per identity (a second token of the same viewer does not double the cap), shows 429 with
    Retry-After, and /metrics has the sessions and the refusal."""
    from gateway.frames import Released
    from whep_harness import viewer_offer

    gateway, people = world
    output = gateway.cameras["lobby"].output
    image = np.zeros((64, 96, 3), np.uint8)
    for index in range(2):  # the renditions are made from the camera's first two frames
        output(Released("lobby", index, index / 10, "redacted", image, image.shape))
    cap = gateway.config.whep.max_sessions_per_principal
    offer = await viewer_offer()
    try:
        async with await client(gateway) as http:
            tokens = [await token_for(http, people["vera"], cameras=["lobby"]) for _ in range(2)]
            sdp = lambda token: {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}  # noqa: E731
            statuses = [(await http.post("/whep/lobby", content=offer, headers=sdp(tokens[0]))).status_code
                        for _ in range(cap)]
            assert statuses == [201] * cap
            for token in tokens:
                refused = await http.post("/whep/lobby", content=offer, headers=sdp(token))
                assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
                assert refused.json() == {"error": f"too many sessions for vera (at most {cap})",
                                          "limit": "sessions_per_principal"}
            olga = await token_for(http, people["olga"])
        async with await client(gateway, peer="10.0.0.2") as http:  # (10.0.0.1 is at its address's cap too)
            assert (await http.post("/whep/lobby", content=offer, headers=sdp(olga))).status_code == 201
            metrics = (await http.get("/metrics", headers={"Authorization": f"Bearer {olga}"})).text
    finally:
        await gateway.whep.close()
        output.close()
    assert f'privacy_gateway_open_sessions{{entry="whep"}} {cap + 1}.0' in metrics
    assert 'privacy_gateway_limit_refusals_total{entry="whep",limit="sessions_per_principal"} 2.0' in metrics
    assert 'privacy_gateway_open_sessions{entry="whip"} 0.0' in metrics
    assert 'privacy_gateway_open_connections{entry="http"} 0.0' in metrics  # (no sockets through ASGI)
    assert gateway.whep.ledger.held == 0


@pytest.mark.asyncio
async def test_an_rtsp_redirect_hands_on_a_login_for_that_camera_alone_that_dies_with_the_clients_token(world):
    """What a cluster node's RTSP 302 puts in its Location (FFmpeg no longer sends the URL's own credentials to
    the host a redirect names): a child of the client's token for that one camera, its issue written to the
    change log first, made once per token and camera, and dead once the client's token is revoked."""
    gateway, people = world
    async with await client(gateway) as http:
        vera = (await token_for(http, people["vera"])).split("_")[1]
    written = []

    async def record(principal, action, details):
        if details.get("refuse"):
            raise Denied(503, "the audit log cannot be written; nothing was changed")
        written.append((principal.name, principal.token, action, details))

    hand_on = HandOn(gateway.access, record)
    assert hand_on.rtsp_user("no-such-token") is None
    login = await hand_on.rtsp_user(vera).hand_on("lobby")
    assert written == [("vera", vera, "issue-token",
                        {"identity": "vera", "cameras": ["lobby"], "ttl": MAX_TOKEN_TTL, "for": "rtsp-redirect"})]
    child = gateway.access.rtsp_user(login[0])
    assert [c for c in ("lobby", "garage", "door") if child.may_view(c)] == ["lobby"]
    assert child.ha1 == hashlib.md5(f"{login[0]}:{RTSP_REALM}:{login[1]}".encode()).hexdigest()
    record_of = {t.id: t for t in gateway.access.store.tokens("vera")}
    assert record_of[login[0]].expires <= record_of[vera].expires
    assert record_of[login[0]].public()["parent"] == vera  # what GET /api/tokens shows
    assert await hand_on.login(vera, "lobby") == login and len(written) == 1  # handed on again while it lives
    assert record_of[login[0]].issued_by == "rtsp-redirect"
    # a client sent on again with the login it was handed (its camera moved, or two nodes briefly disagree
    # on where it runs) is handed the same one, not a child of a child at every bounce
    assert await hand_on.login(login[0], "lobby") == login and len(written) == 1
    assert await HandOn(gateway.access, record).login(login[0], "lobby") != login  # another node: its own
    assert written[-1][:3] == ("vera", vera, "issue-token")  # for vera's own token, on that node too

    # nothing is issued that the change log did not take first
    refusing = HandOn(gateway.access, lambda principal, action, details: record(principal, action, {"refuse": 1}))
    before = len(gateway.access.store.tokens("vera"))
    with pytest.raises(Denied):
        await refusing.login(vera, "lobby")
    assert len(gateway.access.store.tokens("vera")) == before

    gateway.access.store.revoke(vera)
    assert gateway.access.rtsp_user(login[0]) is None  # dies with the client's token
    with pytest.raises(LookupError):
        await hand_on.login(vera, "lobby")


@pytest.mark.asyncio
async def test_an_rtsp_login_made_on_another_node_is_looked_up_at_most_once_in_a_while(world):
    gateway, _ = world
    store = gateway.access.store
    elsewhere = TokenStore(store.directory)  # another node writing the same rows
    _, made = elsewhere.issue("vera", ["lobby"], 600.0, "olga")
    assert gateway.access.rtsp_user(made.id) is None  # not taken in yet
    now = [0.0]
    hand_on = HandOn(gateway.access, None, clock=lambda: now[0])
    reads = []
    refresh = store.refresh_token
    store.refresh_token = lambda token_id: reads.append(token_id) or refresh(token_id)
    await hand_on.look_up(made.id)
    assert reads == [made.id] and gateway.access.rtsp_user(made.id) is not None
    for name in ("A" * 16, "A" * 16, "not a token id", None):
        await hand_on.look_up(name)
    assert reads == [made.id, "A" * 16]  # the same unknown name again only after LOOK_UP_EVERY seconds
    now[0] += LOOK_UP_EVERY
    await hand_on.look_up("A" * 16)
    assert reads == [made.id, "A" * 16, "A" * 16]
    # a spray of distinct names: LOOK_UPS_PER_SECOND of them a second in all, the rest refused unread
    now[0] += 1.0
    reads.clear()
    for i in range(LOOK_UPS_PER_SECOND + 5):
        await hand_on.look_up(f"{i:016d}")
    assert len(reads) == LOOK_UPS_PER_SECOND
    now[0] += 1.0
    await hand_on.look_up(f"{LOOK_UPS_PER_SECOND:016d}")  # refused a second ago, read now
    assert len(reads) == LOOK_UPS_PER_SECOND + 1
