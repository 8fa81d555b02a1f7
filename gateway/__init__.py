"""The gateway: sources → pipeline (decide, redact, seal, release) → recorder and WHEP egress.

Data flow per camera: :mod:`.sources` (RTSP pull, looping file) → :class:`CameraPipeline`
(hold-back deadline, watchdog blanking, in-order release; sealing through :mod:`keys.seal`)
→ :mod:`.recorder` (fragmented MP4 next to the vault) and :mod:`.whep` (encoded once per
codec, fanned out to viewers). :mod:`.server` runs it all behind a Starlette app with
``/health`` and ``/metrics``; :mod:`.cli` is the command line (``redact``, ``detect``,
``keys``, ``unmask``, ``audit``, ``vault``, ``serve``).

Submodules are imported on use (``from gateway.server import serve``): the command line
must start without loading aiortc or the models.
"""
