"""The console's camera grid: each camera's live redacted preview (WHEP, in the browser) and state."""

from __future__ import annotations

from starlette.requests import Request

from ...live import Runtime
from ..access import Principal


class CameraPages:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def data(self, request: Request, who: Principal) -> dict:
        health = self.runtime.health()["cameras"]
        return {"cameras": [{"id": name, "policy": self.runtime.active_version(name), **health[name]}
                            for name in self.runtime.cameras]}
