"""People over HTTP: an officer enrols a person by the public half of keys made on the person's own
machine (`keys new-identity`, `keys public`), and removes or revokes them with the command line's
rules, its OpenBao step included, plus the refusals only the network needs (the last officer, someone
a camera's unmask grant still needs). A real gateway (not started) answers over its ASGI app, with
the session's real OpenBao as its co-signer (test_access.py's `world`)."""

import base64
import json

import pytest
import test_access
from test_access import client, token_for

from gateway.cli import main
from gateway.cli.prompt import variable
from gateway.openbao import write_credentials
from gateway.roster import PENDING, public_identity
from keys import KeyDirectory, PrivateIdentity

PASSPHRASE = "a passphrase of nina's own"
world = test_access.world  # the fixture: a gateway (not started) with olga, vera, ivan, aldo and pete


def officer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def serial(gateway) -> int:
    return KeyDirectory.open(gateway.config.keys_dir).serial


async def actions(http, token) -> list[str]:
    return [e["action"] for e in (await http.get("/api/audit", headers=officer(token))).json()["entries"]]


@pytest.mark.asyncio
async def test_an_officer_enrols_a_person_by_the_public_half_of_keys_made_on_their_own_machine(
        world, tmp_path, monkeypatch, capsys):
    gateway, people = world
    # on nina's machine: her keys, under her passphrase, and the public half she sends
    own = tmp_path / "nina-laptop" / "nina.identity"
    own.parent.mkdir()
    monkeypatch.setenv(variable("nina"), PASSPHRASE)
    assert main(["keys", "new-identity", "nina", "--role", "viewer", "--out", str(own)]) == 0
    made = capsys.readouterr().out
    assert main(["keys", "public", str(own)]) == 0
    printed = capsys.readouterr()
    public = json.loads(printed.out)
    nina = PrivateIdentity.load(own, PASSPHRASE)
    assert public == nina.public.to_json() and set(public) == {"name", "roles", "hpke", "signing"}
    assert nina.public.fingerprint in made and nina.public.fingerprint in printed.err
    assert main(["keys", "new-identity", "nina", "--role", "viewer", "--out", str(own)]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err

    async with await client(gateway) as http:
        olga = await token_for(http, people["olga"])
        before = serial(gateway)
        reply = await http.post("/api/identities", json={"identity": public, "roles": ["viewer", "auditor"]},
                                headers=officer(olga))
        assert reply.status_code == 201, reply.text
        assert reply.json() == {"name": "nina", "roles": ["auditor", "viewer"], "post_quantum": False,
                                "fingerprint": nina.public.fingerprint, "cameras": []}
        assert serial(gateway) == before + 1
        listed = {i["name"]: i for i in (await http.get("/api/identities", headers=officer(olga))).json()["identities"]}
        assert listed["nina"]["fingerprint"] == nina.public.fingerprint and listed["nina"]["roles"] == ["auditor", "viewer"]
        # she signs in with her own key, as the officer chose her roles (not as her file asked)
        token = await token_for(http, nina)
        who = (await http.get("/api/whoami", headers=officer(token))).json()
        assert who["name"] == "nina" and who["roles"] == ["auditor", "viewer"]
        entries = (await http.get("/api/audit", headers=officer(olga))).json()["entries"]
        enrolled = [e for e in entries if e["action"] == "enrol-identity"]
        assert len(enrolled) == 1 and enrolled[0]["details"]["by"] == "olga"
        assert enrolled[0]["details"]["fingerprint"] == nina.public.fingerprint


@pytest.mark.asyncio
async def test_enrolment_refuses_private_keys_bad_keys_taken_names_and_non_officers(world, tmp_path):
    gateway, people = world
    fresh = PrivateIdentity.generate("nora", ["viewer"])
    private_file = tmp_path / "nora.identity"
    fresh.save(private_file, "nora's own passphrase")
    good = fresh.public.to_json()
    short = {**good, "signing": base64.b64encode(b"x" * 31).decode()}
    async with await client(gateway) as http:
        olga = await token_for(http, people["olga"])
        vera = await token_for(http, people["vera"])
        before, logged = serial(gateway), len(await actions(http, olga))
        cases = [
            ({"identity": json.loads(private_file.read_text())}, 400, "this is a private identity file"),
            ({"identity": {"public": good, "signing": good["signing"], "hpke": good["hpke"]}}, 400,
             "this is a private identity file"),
            ({"identity": {**good, "extra": 1}}, 400, "extra: unknown field"),
            ({"identity": short}, 400, "signing: not a 32-byte Ed25519 public key"),
            ({"identity": {**good, "hpke": "not base64!"}}, 400, "identity: "),
            ({"identity": {k: v for k, v in good.items() if k != "hpke"}}, 400, "hpke: missing"),
            ({"identity": "nora"}, 400, "expected a JSON object"),
            ({"identity": good, "roles": ["emperor"]}, 400, "unknown role 'emperor'"),
            ({"identity": good, "roles": []}, 400, "an identity needs at least one role"),
            ({"identity": good, "secret": "x"}, 400, "secret: unknown field"),
            ({"identity": {**good, "name": "Gateway"}}, 409, "is reserved"),
            ({"identity": {**good, "name": "vera"}}, 409, "an identity named 'vera' already exists"),
            ({"identity": {**people["ivan"].public.to_json(), "name": "ivan2"}}, 409, "are already 'ivan''s"),
        ]
        for body, status, message in cases:
            reply = await http.post("/api/identities", json=body, headers=officer(olga))
            assert reply.status_code == status and message in reply.json()["error"], (body, reply.text)
            assert str(gateway.config.keys_dir) not in reply.text  # the gateway's paths stay its own
        field = (await http.post("/api/identities", json={"identity": short}, headers=officer(olga))).json()
        assert field["errors"] == ["identity: signing: not a 32-byte Ed25519 public key"]  # shown beside the field
        # only officers enrol; nobody without credentials
        assert (await http.post("/api/identities", json={"identity": good}, headers=officer(vera))).status_code == 403
        assert (await http.post("/api/identities", json={"identity": good})).status_code == 401
        assert serial(gateway) == before and len(await actions(http, olga)) == logged  # nothing changed, nothing logged
        assert public_identity(good) == fresh.public


@pytest.mark.asyncio
async def test_leaving_takes_tokens_and_grants_and_the_network_keeps_an_officer_and_the_grants_met(world):
    gateway, people = world
    async with await client(gateway) as http:
        olga = await token_for(http, people["olga"])
        vera = await token_for(http, people["vera"])
        assert gateway.access.store.granted("vera") == {"lobby"}
        # non-officers may not; unknown names are 404
        assert (await http.delete("/api/identities/ivan", headers=officer(vera))).status_code == 403
        assert (await http.post("/api/identities/ivan/revoke", headers=officer(vera))).status_code == 403
        assert (await http.delete("/api/identities/nobody", headers=officer(olga))).status_code == 404
        # the last officer stays (else nobody could manage the gateway over the network)
        for method, path in (("DELETE", "/api/identities/olga"), ("POST", "/api/identities/olga/revoke")):
            reply = await http.request(method, path, headers=officer(olga))
            assert reply.status_code == 409 and "the last privacy officer" in reply.json()["error"]
        # ivan is the one investigator the cameras' face grant seals to: removing him is refused ...
        reply = await http.delete("/api/identities/ivan", headers=officer(olga))
        assert reply.status_code == 409 and "ivan is still needed: camera lobby: unmask.face" in reply.json()["error"]
        assert "ivan" in gateway.access.identities()

        # vera leaves: her tokens die with her, her grant goes, and her OpenBao login is ended
        before = serial(gateway)
        reply = await http.delete("/api/identities/vera", headers=officer(olga))
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["tokens_revoked"] == 1 and answer["access_ended"] and not answer["revoked"]
        assert any("removed from the key directory" in line for line in answer["messages"])
        assert serial(gateway) == before + 1 and "vera" not in gateway.access.identities()
        assert (await http.get("/api/whoami", headers=officer(vera))).status_code == 401
        assert gateway.access.store.granted("vera") == frozenset()
        # removed, not revoked: her keys may come back, with no camera and her old token still dead
        back = await http.post("/api/identities", json={"identity": people["vera"].public.to_json()}, headers=officer(olga))
        assert back.status_code == 201 and back.json()["cameras"] == []
        assert (await http.get("/api/whoami", headers=officer(vera))).status_code == 401

        # a revocation always proceeds, and says which cameras it blanks
        reply = await http.post("/api/identities/ivan/revoke", headers=officer(olga))
        assert reply.status_code == 200, reply.text
        assert reply.json()["revoked"] and reply.json()["blanked"][0].startswith("camera lobby: unmask.face")
        again = await http.post("/api/identities", json={"identity": people["ivan"].public.to_json()},
                                headers=officer(olga))
        assert again.status_code == 409 and "were revoked" in again.json()["error"]
        assert [r.name for r in KeyDirectory.open(gateway.config.keys_dir).revoked] == ["ivan"]
        logged = await actions(http, olga)
        assert logged.count("remove-identity") == 1 and logged.count("revoke-identity") == 1
        assert logged.count("enrol-identity") == 1


@pytest.mark.asyncio
async def test_an_openbao_that_does_not_answer_is_retried_by_asking_again(world):
    gateway, people = world
    keys = gateway.config.keys_dir
    document = json.loads((keys / "openbao.json").read_text())
    async with await client(gateway) as http:
        olga = await token_for(http, people["olga"])
        write_credentials(keys, "http://127.0.0.1:9", document["token"], manage_access=True)
        reply = await http.delete("/api/identities/aldo", headers=officer(olga))
        assert reply.status_code == 502
        assert "could not be ended" in reply.json()["error"] and "DELETE /api/identities/aldo" in reply.json()["error"]
        assert "aldo" not in gateway.access.identities() and (keys / PENDING).exists()  # the roster changed all the same
        write_credentials(keys, document["address"], document["token"], manage_access=True)
        reply = await http.delete("/api/identities/aldo", headers=officer(olga))
        assert reply.status_code == 200 and reply.json()["access_ended"], reply.text
        assert not (keys / PENDING).exists()
        assert (await http.delete("/api/identities/aldo", headers=officer(olga))).status_code == 404
