"""Unmask requests a quorum passes around when its members are on different machines.

The person who asks (the *requester*) writes the request file: the unmask's details as the
audit entry will hold them (:meth:`keys.Unmask.request`), their approval, where the recording
is, and per needed (segment, class) the wrap sealed to exactly the quorum with the requester
innermost (:meth:`keys.Unmask.layers`). Each other member, on their own machine, checks what is
asked, adds their approval (an Ed25519 signature of the details) and peels their layer off
every wrap (:func:`keys.wrap.peel`): the outermost one left must be theirs, so they go in the
order the wraps name, last sealed first. Nobody but the requester ever holds a data key: the
innermost layer is theirs, and they run the unmask once every approval is in.

A gateway may write the file for the requester (:meth:`UnmaskRequest.planned`: the console files
a request for an investigator): everything in it is public (the details, and wraps the vault
keeps anyway), so no key is needed to write it; the requester's own approval is added when they
run the unmask on their machine. When an approved copy comes back, :meth:`UnmaskRequest.accept`
takes its new approvals only if each verifies and every layer is peeled by exactly the members
who approved, outermost first; it cannot check a peeled blob (only the next member can open it).

File: ``{"format": "privacy-gateway-unmask-request", "version": 1, "request": {...},
"approvals": {name: hex}, "source": {...}, "layers": [{"segment", "class", "names", "peeled",
"blob"}], "requester"}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import UnmaskError, UnwrapError
from .identity import PrivateIdentity, PublicIdentity, canonical
from .seal import VaultRef
from .store import VaultStore
from .unmask import Selection, Unmask
from .vault import key_context
from .wrap import peel

__all__ = ["UnmaskRequest"]

_FORMAT = "privacy-gateway-unmask-request"


@dataclass
class UnmaskRequest:
    request: dict  # the details the audit entry will hold (without approvals)
    requester: str
    source: dict  # where the recording is: {"gateway", "camera", "recording"} or {"input", "vault", "keys"}
    layers: list[dict]
    approvals: dict[str, str] = field(default_factory=dict)

    @classmethod
    def planned(cls, store: VaultStore, ref: VaultRef, selection: Selection, requester: PublicIdentity,
                others: tuple[str, ...], *, case: str, reason: str, output: str, watermark: bool,
                source: dict) -> UnmaskRequest:
        """The request file ``requester`` would write with ``unmask --request-out`` (``others``:
        the rest of the quorum), made from the vault's public parts alone (:meth:`Unmask.planned`);
        it carries no approval yet, not even the requester's, who signs when they run it."""
        job = Unmask.planned(store, ref, selection, requester, others)
        if job.selected == 0:
            raise UnmaskError("no sealed region matches the selection")
        job.check_terms(case, reason, watermark)
        return cls(job.request(case, reason, output, watermark), requester.name, dict(source),
                   job.layers(job.holders[0]))

    @property
    def missing(self) -> list[str]:
        """Who still has to approve."""
        return sorted(set(self.request["identities"]) - set(self.approvals))

    @property
    def waiting_for(self) -> list[str]:
        """The other members who have not approved yet (the requester approves by running it)."""
        return [name for name in self.missing if name != self.requester]

    @property
    def next_turn(self) -> list[str]:
        """Who may approve now: each wrap is peeled outermost first, so a member whose layer is
        under another's waits for that one."""
        waiting = set(self.waiting_for)
        blocked = set()
        for layer in self.layers:
            names = list(layer["names"])
            left = names[: len(names) - int(layer["peeled"])]
            blocked |= set(left[1:-1])  # under the outermost layer left
        return sorted(waiting - blocked)

    def accept(self, other: UnmaskRequest, key_of: Callable[[str], Ed25519PublicKey | None]) -> list[str]:
        """Take the approvals and peeled layers of ``other``, this request as members approved it on
        their machines (``unmask approve``); returns who approved anew. Refuses another request,
        an approval that does not verify (``key_of``: a name's signing key), a member who approved
        without peeling their layers, and layers peeled by anyone but the members who approved."""
        if (other.request, other.requester, other.source) != (self.request, self.requester, self.source):
            raise UnmaskError("this is another request (its details differ from the one filed)")
        for name, signature in self.approvals.items():
            if other.approvals.get(name) != signature:
                raise UnmaskError(f"{name}'s approval was changed or taken out")
        new = sorted(set(other.approvals) - set(self.approvals))
        if not new:
            raise UnmaskError("no new approval in this file (was `privacy-gateway unmask approve` run on it?)")
        signed = canonical(self.request)
        for name in new:
            key = key_of(name) if name in self.request["identities"] else None
            if key is None:
                raise UnmaskError(f"{name} is not one of the people this request needs to approve it")
            try:
                key.verify(bytes.fromhex(other.approvals[name]), signed)
            except (ValueError, InvalidSignature):
                raise UnmaskError(f"{name}'s approval does not verify (another request, or altered)") from None
        if len(other.layers) != len(self.layers):
            raise UnmaskError("the file's key layers are not the request's")
        layers = []
        for mine, theirs in zip(self.layers, other.layers):
            try:
                names, peeled = list(theirs["names"]), int(theirs["peeled"])
                same = ((int(theirs["segment"]), str(theirs["class"]), names)
                        == (mine["segment"], mine["class"], list(mine["names"])))
                blob = base64.b64encode(base64.b64decode(theirs["blob"], validate=True)).decode("ascii")
            except (KeyError, TypeError, ValueError, binascii.Error):
                raise UnmaskError("the file's key layers are malformed") from None
            if not same or not int(mine["peeled"]) <= peeled < len(names):
                raise UnmaskError("the file's key layers are not the request's")
            if set(names[len(names) - peeled:]) != {n for n in names[1:] if n in other.approvals}:
                raise UnmaskError(f"segment {mine['segment']} {mine['class']}: the layers peeled are not those of "
                                  "the members who approved")
            if peeled == int(mine["peeled"]) and blob != mine["blob"]:
                raise UnmaskError(f"segment {mine['segment']} {mine['class']}: a layer changed without being peeled")
            layers.append({**mine, "peeled": peeled, "blob": blob})
        self.layers = layers
        self.approvals = {**self.approvals, **{name: other.approvals[name] for name in new}}
        return new

    def to_bytes(self) -> bytes:
        document = {"format": _FORMAT, "version": 1, "request": self.request, "requester": self.requester,
                    "source": self.source, "layers": self.layers, "approvals": self.approvals}
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskRequest:
        try:
            document = json.loads(data)
            if document["format"] != _FORMAT or document["version"] != 1:
                raise ValueError
            request = document["request"]
            if not isinstance(request, dict) or not isinstance(request["identities"], list):
                raise ValueError
            return cls(request, str(document["requester"]), dict(document["source"]), list(document["layers"]),
                       {str(k): str(v) for k, v in document["approvals"].items()})
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UnmaskError("not an unmask request file (malformed)") from None

    def approve(self, holder: PrivateIdentity) -> int:
        """Add ``holder``'s approval and peel their layer off every wrap (it must be the outermost
        left); returns how many layers they peeled."""
        name = holder.public.name
        if name not in self.request["identities"] or name == self.requester:
            raise UnmaskError(f"{name} is not one of the people this request needs to approve it")
        if name in self.approvals:
            raise UnmaskError(f"{name} approved this request already")
        peeled = 0
        for layer in self.layers:
            names, done = tuple(layer["names"]), int(layer["peeled"])
            left = names[: len(names) - done]
            if name not in left[1:]:
                continue  # not sealed to them, or already peeled
            if left[-1] != name:
                raise UnmaskError(f"it is not {name}'s turn: {left[-1]} peels next")
            try:
                blob = peel(names, done, base64.b64decode(layer["blob"], validate=True), holder,
                            key_context(self.request["camera"], int(layer["segment"]), str(layer["class"])))
            except (UnwrapError, ValueError):
                raise UnmaskError("cannot unwrap the data key") from None
            layer["blob"], layer["peeled"] = base64.b64encode(blob).decode("ascii"), done + 1
            peeled += 1
        self.approvals[name] = holder.signing.sign(canonical(self.request)).hex()
        return peeled
