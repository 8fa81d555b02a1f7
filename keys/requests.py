"""Unmask requests a quorum passes around when its members are on different machines.

The person who asks (the *requester*) writes the request file: the unmask's details as the
audit entry will hold them (:meth:`keys.Unmask.request`), their approval, where the recording
is, and per needed (segment, class) the wrap sealed to exactly the quorum with the requester
innermost (:meth:`keys.Unmask.layers`). Each other member, on their own machine, checks what is
asked, adds their approval (an Ed25519 signature of the details) and peels their layer off
every wrap (:func:`keys.wrap.peel`): the outermost one left must be theirs, so they go in the
order the wraps name, last sealed first. Nobody but the requester ever holds a data key: the
innermost layer is theirs, and they run the unmask once every approval is in.

File: ``{"format": "privacy-gateway-unmask-request", "version": 1, "request": {...},
"approvals": {name: hex}, "source": {...}, "layers": [{"segment", "class", "names", "peeled",
"blob"}], "requester"}``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from .errors import UnmaskError, UnwrapError
from .identity import PrivateIdentity, canonical
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

    @property
    def missing(self) -> list[str]:
        """Who still has to approve."""
        return sorted(set(self.request["identities"]) - set(self.approvals))

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
