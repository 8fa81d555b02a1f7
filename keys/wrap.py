"""Wrapping data keys to the people a policy names, with HPKE (RFC 9180) alone.

A grant names roles and a quorum ``k``. Every identity holding one of the roles is a
recipient. With ``k == 1`` the data key is HPKE-sealed to each recipient. With ``k > 1`` it is
sealed per k-subset of recipients, in nested layers: the innermost layer to the first
member, that ciphertext to the second, and so on, so opening one wrap takes the private keys
of every member of its subset; no fewer than ``k`` people can open any wrap. Each subset is
sealed ``k`` times, each member innermost once, so that a quorum on different machines can
peel its layers one after another (:func:`peel`) and the data key appears only to the one who
peels last: the person who asked for the unmask. No secret sharing or other home-made
construction is involved, only HPKE's base mode.

Each layer uses the suite of the person it is sealed to: DHKEM(X25519) for classic identities,
the hybrid ML-KEM-768+X25519 KEM for post-quantum ones (both with HKDF-SHA256 and AES-256-GCM),
so a subset mixing the two nests layers of both kinds. A post-quantum layer is 1088 bytes (the
ML-KEM-768 ciphertext) larger than a classic one.

Each layer's HPKE ``info`` binds the caller's context (camera, segment, class, ...), the
subset and the layer, so a wrap cannot be moved to another segment or reordered. Every
failure to unwrap reads the same (:class:`UnwrapError`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from itertools import combinations
from math import comb

from cryptography.exceptions import InvalidTag

from .errors import UnwrapError
from .identity import SUITE_X25519, PrivateIdentity, PublicIdentity, canonical

SUITE = SUITE_X25519  # classic identities' suite; see PublicIdentity.hpke_recipient for the choice
MAX_SUBSETS = 256  # C(n, k) wraps per data key; e.g. 2 of 23, 3 of 12
_LABEL = b"privacy-gateway wrap v1\x00"


@dataclass(frozen=True)
class Grant:
    roles: tuple[str, ...]
    quorum: int = 1


@dataclass(frozen=True)
class Wrap:
    """The data key sealed to one subset of recipients, ``names`` innermost first."""

    names: tuple[str, ...]
    blob: bytes

    def to_json(self) -> dict:
        return {"names": list(self.names), "blob": base64.b64encode(self.blob).decode("ascii")}

    @classmethod
    def from_json(cls, data: dict) -> Wrap:
        return cls(tuple(data["names"]), base64.b64decode(data["blob"], validate=True))


def recipients(grant: Grant, identities: list[PublicIdentity]) -> list[PublicIdentity]:
    return sorted((i for i in identities if set(i.roles) & set(grant.roles)), key=lambda i: i.name)


def _info(context: bytes, names: tuple[str, ...], layer: int) -> bytes:
    return _LABEL + canonical({"context": context.hex(), "names": list(names), "layer": layer})


def wrap_key(data_key: bytes, grant: Grant, identities: list[PublicIdentity], context: bytes) -> list[Wrap]:
    """Seal ``data_key`` so that any ``grant.quorum`` of the grant's recipients can open it."""
    people = recipients(grant, identities)
    k = grant.quorum
    if k < 1:
        raise ValueError(f"quorum must be >= 1, got {k}")
    if len(people) < k:
        raise ValueError(
            f"roles {', '.join(grant.roles)} have {len(people)} identities; a quorum of {k} cannot be met"
        )
    if comb(len(people), k) > MAX_SUBSETS:
        raise ValueError(f"{k} of {len(people)} needs {comb(len(people), k)} wraps per key (limit {MAX_SUBSETS})")
    wraps = []
    for subset in combinations(people, k):
        for turn in range(k):  # each member innermost once (k == 1: one wrap)
            order = subset[turn:] + subset[:turn]
            names = tuple(p.name for p in order)
            blob = data_key
            for layer, person in enumerate(order):
                suite, public_key = person.hpke_recipient()
                blob = suite.encrypt(blob, public_key, info=_info(context, names, layer))
            wraps.append(Wrap(names, blob))
    return wraps


def peel(names: tuple[str, ...], peeled: int, blob: bytes, holder: PrivateIdentity, context: bytes) -> bytes:
    """Remove the outermost layer still on ``blob`` (a wrap sealed to ``names``, innermost first, of
    which ``peeled`` outer layers are gone already); it must be ``holder``'s. What is left: the next
    layer in, or the data key once the innermost is peeled. :class:`UnwrapError` if it does not open."""
    layer = len(names) - 1 - peeled
    if not 0 <= layer < len(names) or names[layer] != holder.public.name:
        raise UnwrapError("cannot unwrap the data key")
    suite, private_key = holder.hpke_opener()
    try:
        return suite.decrypt(blob, private_key, info=_info(context, names, layer))
    except (InvalidTag, ValueError):
        raise UnwrapError("cannot unwrap the data key") from None


def unwrap_key(wraps: list[Wrap], holders: list[PrivateIdentity], context: bytes) -> bytes:
    """The data key, if ``holders`` include every member of some wrap's subset."""
    have = {h.public.name: h for h in holders}
    for wrap in wraps:
        if not all(name in have for name in wrap.names):
            continue
        blob = wrap.blob
        try:
            for layer in reversed(range(len(wrap.names))):
                suite, private_key = have[wrap.names[layer]].hpke_opener()
                blob = suite.decrypt(blob, private_key, info=_info(context, wrap.names, layer))
        # Both suites raise InvalidTag for damaged, truncated or misdirected layers, low-order
        # X25519 points and bad ML-KEM ciphertexts alike (ML-KEM rejects implicitly, so that too
        # surfaces as a failed AEAD tag); ValueError stays caught for malformed input.
        except (InvalidTag, ValueError):
            raise UnwrapError("cannot unwrap the data key") from None
        return blob
    raise UnwrapError("cannot unwrap the data key")
