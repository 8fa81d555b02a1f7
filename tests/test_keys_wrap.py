"""HPKE wrapping with quorums: who can open a data key, and who cannot."""

import os
from dataclasses import replace
from itertools import combinations

import pytest
from cryptography.hazmat.primitives import hpke

from keys.identity import PrivateIdentity
from keys.wrap import peel, Grant, UnwrapError, Wrap, unwrap_key, wrap_key

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
    # every pair, each member innermost once (whoever peels last of a quorum on different machines)
    assert sorted(w.names for w in wraps) == [("olga", "omar"), ("olga", "otto"), ("omar", "olga"), ("omar", "otto"),
                                              ("otto", "olga"), ("otto", "omar")]
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


@pytest.fixture(scope="module")
def mixed():
    """Two classic and two post-quantum privacy officers."""
    return {
        "cara": PrivateIdentity.generate("cara", ["privacy-officer"]),
        "cole": PrivateIdentity.generate("cole", ["privacy-officer"]),
        "pia": PrivateIdentity.generate("pia", ["privacy-officer"], post_quantum=True),
        "pete": PrivateIdentity.generate("pete", ["privacy-officer"], post_quantum=True),
    }


# one HPKE layer adds enc + 16-byte AES-GCM tag: 32 + 16 classic, 1120 (1088 ML-KEM + 32 X25519) + 16 hybrid
CLASSIC_LAYER, HYBRID_LAYER = 48, 1136


def test_hybrid_layer_carries_an_mlkem_ciphertext(mixed):
    """Same key, one layer each: the hybrid wrap is larger by exactly the ML-KEM-768 ciphertext."""
    key = os.urandom(32)
    classic = wrap_key(key, Grant(("privacy-officer",)), [mixed["cara"].public], CONTEXT)[0]
    hybrid = wrap_key(key, Grant(("privacy-officer",)), [mixed["pia"].public], CONTEXT)[0]
    assert len(classic.blob) == 32 + CLASSIC_LAYER == 80
    assert len(hybrid.blob) == 32 + HYBRID_LAYER == 1168
    assert len(hybrid.blob) - len(classic.blob) == hpke.KEM.MLKEM768.enc_length() == 1088
    assert unwrap_key([hybrid], [mixed["pia"]], CONTEXT) == key


def test_two_of_four_mixed_classic_and_post_quantum(mixed):
    key = os.urandom(32)
    wraps = wrap_key(key, Grant(("privacy-officer",), quorum=2), [p.public for p in mixed.values()], CONTEXT)
    assert len(wraps) == 12  # 6 pairs, each member innermost once
    for wrap in wraps:
        hybrids = sum(mixed[n].public.post_quantum for n in wrap.names)
        assert len(wrap.blob) == 32 + hybrids * HYBRID_LAYER + (2 - hybrids) * CLASSIC_LAYER
    for a, b in combinations(mixed, 2):
        assert unwrap_key(wraps, [mixed[a], mixed[b]], CONTEXT) == key
        assert unwrap_key(wraps, [mixed[b], mixed[a]], CONTEXT) == key
    for alone in mixed:  # k-1 of k
        with pytest.raises(UnwrapError, match="^cannot unwrap the data key$"):
            unwrap_key(wraps, [mixed[alone]], CONTEXT)


def test_k_minus_one_of_k_post_quantum_fails(mixed):
    key = os.urandom(32)
    officers = [p.public for p in mixed.values()]
    wraps = wrap_key(key, Grant(("privacy-officer",), quorum=3), officers, CONTEXT)
    assert len(wraps) == 12  # 4 triples, each member innermost once
    assert unwrap_key(wraps, [mixed["pia"], mixed["pete"], mixed["cara"]], CONTEXT) == key
    for pair in combinations(mixed, 2):
        with pytest.raises(UnwrapError, match="^cannot unwrap the data key$"):
            unwrap_key(wraps, [mixed[n] for n in pair], CONTEXT)


def test_hybrid_layer_needs_the_mlkem_key_too(mixed):
    """The X25519 half of a post-quantum identity alone, or a damaged ML-KEM ciphertext, opens nothing."""
    key = os.urandom(32)
    pia = mixed["pia"]
    wraps = wrap_key(key, Grant(("privacy-officer",)), [pia.public], CONTEXT)
    x25519_only = PrivateIdentity(replace(pia.public, mlkem=None), pia.hpke, pia.signing)
    with pytest.raises(UnwrapError, match="^cannot unwrap the data key$"):
        unwrap_key(wraps, [x25519_only], CONTEXT)
    for position in (0, 1087, 1088, 1119, -1):  # ML-KEM ciphertext, X25519 share, AEAD tag
        blob = bytearray(wraps[0].blob)
        blob[position] ^= 1
        with pytest.raises(UnwrapError, match="^cannot unwrap the data key$"):
            unwrap_key([Wrap(wraps[0].names, bytes(blob))], [pia], CONTEXT)
    with pytest.raises(UnwrapError, match="^cannot unwrap the data key$"):
        unwrap_key([Wrap(wraps[0].names, wraps[0].blob[:1120])], [pia], CONTEXT)
    with pytest.raises(UnwrapError, match="^cannot unwrap the data key$"):
        unwrap_key(wraps, [pia], b"camera=lobby;segment=8;class=face")


def test_a_quorum_peels_its_layers_one_after_another_and_only_the_last_sees_the_key(people):
    """Two officers on two machines: omar peels his layer, olga (who asked) the innermost one."""
    key = os.urandom(32)
    wraps = wrap_key(key, Grant(("privacy-officer",), quorum=2), publics(people), CONTEXT)
    wrap = next(w for w in wraps if w.names == ("olga", "omar"))  # olga innermost: she opens last
    with pytest.raises(UnwrapError):
        peel(wrap.names, 0, wrap.blob, people["olga"], CONTEXT)  # not hers to peel first
    inner = peel(wrap.names, 0, wrap.blob, people["omar"], CONTEXT)
    assert inner != key and key not in inner
    assert peel(wrap.names, 1, inner, people["olga"], CONTEXT) == key
    with pytest.raises(UnwrapError):
        peel(wrap.names, 1, inner, people["olga"], b"another context")
