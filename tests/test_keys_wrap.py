"""HPKE wrapping with quorums: who can open a data key, and who cannot."""

import os

import pytest

from keys.identity import PrivateIdentity
from keys.wrap import Grant, UnwrapError, Wrap, unwrap_key, wrap_key

CONTEXT = b"camera=lobby;segment=7;class=face"


@pytest.fixture(scope="module")
def people():
    return {
        "olga": PrivateIdentity.generate("olga", ["privacy-officer"]),
        "omar": PrivateIdentity.generate("omar", ["privacy-officer"]),
        "otto": PrivateIdentity.generate("otto", ["privacy-officer", "auditor"]),
        "ivan": PrivateIdentity.generate("ivan", ["investigator"]),
        "vera": PrivateIdentity.generate("vera", ["viewer"]),
    }


def publics(people):
    return [p.public for p in people.values()]


def test_single_recipient_role(people):
    key = os.urandom(32)
    wraps = wrap_key(key, Grant(("investigator",)), publics(people), CONTEXT)
    assert [w.names for w in wraps] == [("ivan",)]
    assert unwrap_key(wraps, [people["ivan"]], CONTEXT) == key
    for outsider in ("vera", "olga"):
        with pytest.raises(UnwrapError):
            unwrap_key(wraps, [people[outsider]], CONTEXT)


def test_two_of_three_officers(people):
    key = os.urandom(32)
    wraps = wrap_key(key, Grant(("privacy-officer",), quorum=2), publics(people), CONTEXT)
    assert sorted(w.names for w in wraps) == [("olga", "omar"), ("olga", "otto"), ("omar", "otto")]
    for a, b in (("olga", "omar"), ("otto", "olga"), ("omar", "otto")):
        assert unwrap_key(wraps, [people[a], people[b]], CONTEXT) == key
    for alone in ("olga", "omar", "otto"):  # k-1 of k
        with pytest.raises(UnwrapError):
            unwrap_key(wraps, [people[alone]], CONTEXT)
    with pytest.raises(UnwrapError):
        unwrap_key(wraps, [people["olga"], people["ivan"], people["vera"]], CONTEXT)


def test_wrap_bound_to_its_context(people):
    wraps = wrap_key(os.urandom(32), Grant(("investigator",)), publics(people), CONTEXT)
    with pytest.raises(UnwrapError, match="^cannot unwrap the data key$"):
        unwrap_key(wraps, [people["ivan"]], b"camera=lobby;segment=8;class=face")


def test_tampered_or_relabelled_wrap_fails(people):
    key = os.urandom(32)
    wraps = wrap_key(key, Grant(("privacy-officer",), quorum=2), publics(people), CONTEXT)
    blob = bytearray(wraps[0].blob)
    blob[-1] ^= 1
    with pytest.raises(UnwrapError):
        unwrap_key([Wrap(wraps[0].names, bytes(blob))], [people[n] for n in wraps[0].names], CONTEXT)
    swapped = Wrap(tuple(reversed(wraps[0].names)), wraps[0].blob)
    with pytest.raises(UnwrapError):
        unwrap_key([swapped], [people[n] for n in wraps[0].names], CONTEXT)
    assert Wrap.from_json(wraps[1].to_json()) == wraps[1]


def test_impossible_grants_are_refused(people):
    with pytest.raises(ValueError, match="have 1 identities; a quorum of 2 cannot be met"):
        wrap_key(os.urandom(32), Grant(("investigator",), quorum=2), publics(people), CONTEXT)
    with pytest.raises(ValueError, match="quorum must be >= 1"):
        wrap_key(os.urandom(32), Grant(("investigator",), quorum=0), publics(people), CONTEXT)
    many = [PrivateIdentity.generate(f"p{i}", ["privacy-officer"]).public for i in range(30)]
    with pytest.raises(ValueError, match="needs 4060 wraps per key"):
        wrap_key(os.urandom(32), Grant(("privacy-officer",), quorum=3), many, CONTEXT)
