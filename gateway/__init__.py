"""The gateway: cameras in, only redacted video out (live), and the offline tools around it.

The folders follow a frame's path, and each may import only the rooms to its left (and the
public API of ``keys`` and ``redaction``, through their ``__all__``)::

    frames, config, http, sealing  ─▶  files, webrtc, roster  ─▶  ingest, egress  ─▶  live  ─▶  api  ─▶  cli
    (bottom: shared types)            (offline I/O, WebRTC        (stages 1 and 3)    (stage 2,   (the network  (the command
                                       plumbing, people joining                      composition) face)         line)
                                       and leaving)

* :mod:`.frames` the types that cross stage boundaries (``SourceFrame``, ``Released``);
  :mod:`.config` the validated configuration; :mod:`.http` bounded request bodies;
  :mod:`.limits` the caps on connections and sessions every network entry point applies;
  :mod:`.sealing` the one redact-and-seal step shared by the live path and ``redact``.
* :mod:`.ingest` camera sources (RTSP, file, WHIP) → :mod:`.live` the fail-closed pipeline
  per camera (decide, redact + seal, release in order) and the runtime that wires cameras →
  :mod:`.egress` recorder, live renditions, WHEP and RTSP out.
* :mod:`.api` access control and the HTTP app over the runtime; :mod:`.cli` the commands;
  :mod:`.files` offline image and video files (``redact``, ``unmask``), never used live;
  :mod:`.roster` people enrolled into and leaving the key directory (shared by the API and the CLI);
  :mod:`.storage` where a configuration's vault is (local files or an S3 bucket), opened for ``serve`` and the CLI.

``tests/test_structure.py`` checks these rules: no import circles, no arrow to the right, no
``_private`` name imported across modules. Packages are imported on use: ``privacy-gateway
redact`` starts without loading aiortc.
"""
