"""Unmask request files a gateway keeps while a quorum of three approves them on their own machines: whose
turn it is, and which approved copies it takes (keys.UnmaskRequest.accept). Real keys and real wraps."""

import base64
import json
import os

import pytest

from keys import UnmaskError, UnmaskRequest
from keys.identity import PrivateIdentity
from keys.vault import key_context
from keys.wrap import Grant, peel, wrap_key

CONTEXT = key_context("lobby", 1, "face")


@pytest.fixture(scope="module")
def people():
    return {name: PrivateIdentity.generate(name, ["privacy-officer"]) for name in ("olga", "omar", "otto")}


@pytest.fixture
def filed(people):
    """What a gateway files for olga, who needs omar and otto: no approval yet, the wrap with olga innermost."""
    key = os.urandom(32)
    wraps = wrap_key(key, Grant(("privacy-officer",), quorum=3), [p.public for p in people.values()], CONTEXT)
    wrap = next(w for w in wraps if w.names[0] == "olga")
    request = {"camera": "lobby", "recording": "r1", "case": "C-1", "reason": "test", "identities": sorted(people),
               "selection": {"tracks": [3], "classes": ["face"], "from_us": None, "to_us": None},
               "tracks": [["face", 3]], "regions": 10, "output": "out.mp4", "watermark": True}
    layers = [{"segment": 1, "class": "face", "names": list(wrap.names), "peeled": 0,
               "blob": base64.b64encode(wrap.blob).decode("ascii")}]
    return UnmaskRequest(request, "olga", {"gateway": "http://gw", "camera": "lobby", "recording": "r1"}, layers), key


def key_of(people):
    return lambda name: people[name].public.signing_key() if name in people else None


def approved_by(filed: UnmaskRequest, holder) -> UnmaskRequest:
    """``holder`` approves a downloaded copy on their machine (what `unmask approve` does)."""
    copy = UnmaskRequest.from_bytes(filed.to_bytes())
    copy.approve(holder)
    return copy


def test_members_approve_in_turn_and_only_the_requester_ends_with_the_key(filed, people):
    filed, key = filed
    assert filed.layers[0]["names"] == ["olga", "omar", "otto"]  # otto's layer is the outermost
    assert filed.waiting_for == ["omar", "otto"] and filed.next_turn == ["otto"]
    with pytest.raises(UnmaskError, match="it is not omar's turn: otto peels next"):
        approved_by(filed, people["omar"])
    assert filed.accept(approved_by(filed, people["otto"]), key_of(people)) == ["otto"]
    assert filed.waiting_for == ["omar"] and filed.next_turn == ["omar"]
    with pytest.raises(UnmaskError, match="no new approval"):
        filed.accept(UnmaskRequest.from_bytes(filed.to_bytes()), key_of(people))
    assert filed.accept(approved_by(filed, people["omar"]), key_of(people)) == ["omar"]
    assert filed.waiting_for == [] and filed.next_turn == []
    layer = filed.layers[0]
    assert layer["peeled"] == 2
    assert peel(tuple(layer["names"]), 2, base64.b64decode(layer["blob"]), people["olga"], CONTEXT) == key


def test_a_copy_is_taken_only_as_this_request_approved_and_peeled_by_its_members(filed, people):
    filed, _ = filed
    good = json.loads(approved_by(filed, people["otto"]).to_bytes())

    def refused(document, message):
        with pytest.raises(UnmaskError, match=message):
            filed.accept(UnmaskRequest.from_bytes(json.dumps(document).encode()), key_of(people))

    refused({**good, "request": {**good["request"], "tracks": [["face", 4]]}}, "another request")
    refused({**good, "source": {**good["source"], "recording": "r2"}}, "another request")
    refused({**good, "approvals": {"otto": good["approvals"]["otto"][2:] + "00"}}, "otto's approval does not verify")
    refused({**good, "layers": [{**good["layers"][0], "peeled": 0, "blob": filed.layers[0]["blob"]}]},
            "the layers peeled are not those of the members who approved")
    refused({**good, "layers": [{**good["layers"][0], "peeled": 2}]},
            "the layers peeled are not those of the members who approved")
    refused({**good, "layers": [{**good["layers"][0], "names": ["olga", "otto", "omar"]}]}, "not the request's")
    refused({**good, "layers": []}, "not the request's")
    refused({**good, "layers": [{**good["layers"][0], "blob": "not base64!"}]}, "malformed")
    assert filed.approvals == {} and filed.layers[0]["peeled"] == 0  # nothing of them was taken
    filed.accept(UnmaskRequest.from_bytes(json.dumps(good).encode()), key_of(people))
    # an approval taken is never changed or dropped by a later copy
    later = json.loads(approved_by(filed, people["omar"]).to_bytes())
    refused({**later, "approvals": {"omar": later["approvals"]["omar"]}}, "otto's approval was changed or taken out")
    refused({**later, "approvals": {**later["approvals"], "otto": later["approvals"]["omar"]}},
            "otto's approval was changed or taken out")
    # someone the request does not name cannot add an approval, even signed with a real key
    stranger = PrivateIdentity.generate("sam", ["privacy-officer"])
    people_and_sam = {**people, "sam": stranger}
    with pytest.raises(UnmaskError, match="sam is not one of the people"):
        copy = UnmaskRequest.from_bytes(json.dumps(later).encode())
        copy.approvals["sam"] = stranger.signing.sign(b"anything").hex()
        filed.accept(copy, key_of(people_and_sam))
