"""The console's policy pages: every field of the policy schema as a form, diffs, activation, history.

The form is made from the :class:`~redaction.Policy` model itself (:func:`policy_fields`), so a
field added to the schema appears in the editor without touching it: choices become selects,
flags checkboxes, numbers number inputs, and what has structure (points, colours, role lists,
the zones and their grants) a JSON field. Each field carries its dotted path, which is how the
server's validation errors (``classes.face.strength: ...``) find the field they name.

The ``zones`` field gets an editor over the camera's latest released (redacted) frame
(``static/console-zones.js``): polygons drawn and edited on the picture are written into the
field as JSON, so storing and activating are the same as for any other field. When the camera
is held for a moved view (:mod:`gateway.live.moved`) the page says so, with the officer's
"the zones still fit" confirmation.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.requests import Request

from redaction import Policy, Zone

from ...live import Runtime
from ..access import Denied, Principal
from ..policies import PolicyVersions, canonical_yaml


@dataclass(frozen=True)
class Field:
    path: str  # dotted, as validation errors name it
    label: str
    kind: str  # select, checkbox, number, text, json
    value: object
    options: tuple[str, ...] = ()
    optional: bool = False  # may be left empty (null)
    depth: int = 0


def _unwrap(annotation) -> tuple[object, bool]:
    """The annotation without ``| None`` (and whether it had it) and without its constraints."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            annotation, optional = args[0], True
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation, optional


def policy_fields(model: BaseModel, prefix: str = "", depth: int = 0) -> list[Field]:
    """Every leaf field of ``model`` (a policy or a part of one), in schema order."""
    fields: list[Field] = []
    for name, info in type(model).model_fields.items():
        path, value = f"{prefix}{name}", getattr(model, name)
        annotation, optional = _unwrap(info.annotation)
        if isinstance(value, BaseModel):
            fields.append(Field(path, name, "group", None, depth=depth))
            fields += policy_fields(value, f"{path}.", depth + 1)
        elif typing.get_origin(annotation) is typing.Literal:
            fields.append(Field(path, name, "select", value, tuple(typing.get_args(annotation)), optional, depth))
        elif annotation is bool:
            fields.append(Field(path, name, "checkbox", value, depth=depth))
        elif annotation in (int, float):
            fields.append(Field(path, name, "number", value, optional=optional, depth=depth))
        elif annotation is str:
            fields.append(Field(path, name, "text", value, optional=optional, depth=depth))
        else:  # tuples, lists, dicts of models (zones, grants): edited as JSON
            dumped = model.model_dump(mode="json")[name]
            fields.append(Field(path, name, "json", json.dumps(dumped), optional=optional, depth=depth))
    return fields


def diff_lines(old: dict, new: dict, old_name: str, new_name: str) -> list[tuple[str, str]]:
    """A unified diff of two policies as (kind, line): kind is ``add``, ``del`` or ``""``."""
    lines = difflib.unified_diff(canonical_yaml(old).splitlines(), canonical_yaml(new).splitlines(),
                                 fromfile=old_name, tofile=new_name, lineterm="")
    return [("add" if line.startswith("+") and not line.startswith("+++") else
             "del" if line.startswith("-") and not line.startswith("---") else "", line) for line in lines]


class PolicyPages:
    """Data of the ``policies`` page: ``?camera=`` (default: the first) and ``?version=`` (default:
    the camera's active version) choose what is shown and edited."""

    def __init__(self, runtime: Runtime, versions: PolicyVersions) -> None:
        self.runtime, self.versions = runtime, versions

    def data(self, request: Request, who: Principal) -> dict:
        cameras = list(self.runtime.cameras)
        camera = request.query_params.get("camera") or (cameras[0] if cameras else None)
        if camera is not None and camera not in self.runtime.cameras:
            raise Denied(404, f"no such camera: {camera}")
        active = self.runtime.active_version(camera) if camera else None
        version = request.query_params.get("version") or active
        policy = self.versions.policy(version) if version else Policy()
        stored = self.versions.load(version) if version else policy.model_dump(mode="json")
        history = [e for e in self.runtime.store.audit.entries()
                   if e["action"] in ("activate-policy", "activate-policy-failed")
                   and e["details"].get("camera") == camera][-20:][::-1]
        known = self.versions.versions()
        names = {v: self.versions.load(v).get("name") for v in known}
        zone = Zone.model_fields
        return {
            "view": self.runtime.cameras[camera].view.state() if camera else None,
            "zone_methods": typing.get_args(zone["method"].annotation),
            "zone_modes": typing.get_args(zone["mode"].annotation),
            "cameras": cameras, "camera": camera, "active": active, "version": version,
            "fields": policy_fields(policy), "names": names,
            "in_force": self.runtime.activations.versions(),
            "diff": diff_lines(self.versions.load(active), stored, active[:12], version[:12])
            if active and version and version != active else [],
            "history": history,
        }
