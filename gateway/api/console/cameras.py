"""The console's camera grid: each camera's live redacted preview (WHEP, in the browser) and state,
and for those holding ``cameras:manage`` the forms that add, edit and remove cameras.

The forms are made from the configuration's :class:`~gateway.config.Camera` model with the
policy editor's :func:`~.policies.policy_fields`, so they offer exactly the fields the API
validates, each carrying the path its errors name (``holdback_ms: ...``). The policy is picked
from the stored versions. An edit form shows the source as the API answers it (a password
replaced by ``***``); sent back unchanged, it keeps the real one.
"""

from __future__ import annotations

from starlette.requests import Request

from ...config import Camera, redact_source
from ...live import Runtime
from ..access import Principal
from ..policies import PolicyVersions
from .policies import Field, policy_fields


def camera_fields(camera: Camera) -> list[Field]:
    """The form fields of ``camera``'s settings (the policy is chosen apart, from stored versions)."""
    return [f for f in policy_fields(camera) if f.path != "policy"]


class CameraPages:
    def __init__(self, runtime: Runtime, versions: PolicyVersions) -> None:
        self.runtime, self.versions = runtime, versions

    def data(self, request: Request, who: Principal) -> dict:
        health = self.runtime.camera_health()
        configs, active = self.runtime.config.cameras, self.runtime.activations.versions()
        manage = who.may("cameras:manage")
        cameras = []
        for name in configs:  # a camera an edit left stopped too: its tile says why, its form can fix it
            if name not in health:  # being added
                continue
            shown = configs[name].model_copy(update={"source": redact_source(configs[name].source)})
            cameras.append({"id": name, "policy": active.get(name, ""), **health[name],
                            "fields": camera_fields(shown) if manage else []})
        return {
            "cameras": cameras, "manage": manage,
            "new_fields": camera_fields(Camera.model_construct()) if manage else [],
            "policies": [(v, self.versions.load(v).get("name")) for v in self.versions.versions()] if manage else [],
        }
