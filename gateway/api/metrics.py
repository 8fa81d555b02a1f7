"""Prometheus metrics of a running gateway, read from the cameras' counters at scrape time.

Every counter lives where its event happens (the pipeline, the source, a sink, a rendition, the
RTSP sender) as a plain number; the collectors read them when Prometheus scrapes, so no
per-frame path pays for metrics. Names and meanings: docs/gateway.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..cluster import ClusterNode
from ..limits import Ledger
from ..live import LiveCamera

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


class _Cameras(Collector):
    def __init__(self, cameras: Callable[[], Iterable[LiveCamera]], rtsp_skipped: Callable[[], dict[str, int]]) -> None:
        self._cameras, self._rtsp_skipped = cameras, rtsp_skipped

    def collect(self):
        frames = CounterMetricFamily("privacy_gateway_frames", "Frames per camera and outcome "
                                     "(in: from the source; released: redacted; blanked; dropped; late: decided after blanking)",
                                     labels=["camera", "state"])
        errors = CounterMetricFamily("privacy_gateway_detector_errors", "Detector failures", labels=["camera"])
        detect = CounterMetricFamily("privacy_gateway_detector_seconds", "Time spent in detection", labels=["camera"])
        detections = CounterMetricFamily("privacy_gateway_detections", "Detection runs", labels=["camera"])
        queue = GaugeMetricFamily("privacy_gateway_queue_depth", "Frames waiting for analysis", labels=["camera"])
        warm = GaugeMetricFamily("privacy_gateway_detector_warm", "1 once the detector is loaded", labels=["camera"])
        viewers = GaugeMetricFamily("privacy_gateway_viewers", "WebRTC viewers", labels=["camera"])
        connected = GaugeMetricFamily("privacy_gateway_source_connected", "1 while the camera delivers", labels=["camera"])
        reconnects = CounterMetricFamily("privacy_gateway_source_reconnects", "Camera reconnections", labels=["camera"])
        source_errors = CounterMetricFamily("privacy_gateway_source_errors", "Camera read/decode errors", labels=["camera"])
        skipped = CounterMetricFamily("privacy_gateway_sink_skipped", "Frames a slow consumer gave up",
                                      labels=["camera", "sink"])
        encoder_dropped = CounterMetricFamily("privacy_gateway_rendition_frames_dropped",
                                              "Frames a live encoder gave up because it was still busy",
                                              labels=["camera", "codec"])
        viewer_dropped = CounterMetricFamily("privacy_gateway_viewer_packets_dropped",
                                             "Encoded packets WebRTC viewers skipped (joined between keyframes, "
                                             "or too slow)", labels=["camera", "codec"])
        rtsp_skipped = CounterMetricFamily("privacy_gateway_rtsp_frames_skipped",
                                           "Frames RTSP sessions skipped because their client was behind",
                                           labels=["camera"])
        seal_cpu = CounterMetricFamily("privacy_gateway_sealer_cpu_seconds",
                                       "CPU time of the camera's sealing thread (coding and encrypting originals)",
                                       labels=["camera"])
        seal_refused = CounterMetricFamily("privacy_gateway_sealer_refused_frames",
                                           "Frames blanked because the sealing thread was behind or "
                                           "had failed", labels=["camera"])
        faults = CounterMetricFamily("privacy_gateway_faults", "Failures of a camera's parts (sealing, worker, "
                                     "recording: each retried with backoff; redaction, sink: per frame)",
                                     labels=["camera", "part"])
        recoveries = CounterMetricFamily("privacy_gateway_recoveries", "Times a failed part worked again",
                                         labels=["camera", "part"])
        healthy = GaugeMetricFamily("privacy_gateway_camera_healthy", "1 while /health finds the camera ok",
                                    labels=["camera"])
        view_held = GaugeMetricFamily("privacy_gateway_view_held", "1 while the camera is blanked because its "
                                      "view moved from the one its zones were drawn on", labels=["camera"])
        view_changes = CounterMetricFamily("privacy_gateway_view_changes", "Times the camera was held for a moved "
                                           "view, by kind (shifted, changed, covered, defocused)",
                                           labels=["camera", "kind"])
        view_correlation = GaugeMetricFamily("privacy_gateway_view_correlation", "Correlation of the camera's "
                                             "view with its reference at the last look (watched cameras only)",
                                             labels=["camera"])
        rtsp_counts = self._rtsp_skipped()
        for camera in self._cameras():
            name, stats = camera.name, camera.pipeline.stats
            for state, value in (("in", stats.frames_in), ("released", stats.released), ("blanked", stats.blanked),
                                 ("dropped", stats.dropped), ("late", stats.late)):
                frames.add_metric([name, state], value)
            errors.add_metric([name], stats.detector_errors)
            detect.add_metric([name], stats.detect_seconds)
            detections.add_metric([name], stats.detections)
            queue.add_metric([name], stats.queue_depth)
            warm.add_metric([name], 1 if stats.warm else 0)
            viewers.add_metric([name], camera.viewers())
            source = camera.source.stats
            connected.add_metric([name], 1 if source.connected else 0)
            reconnects.add_metric([name], source.reconnects)
            source_errors.add_metric([name], source.errors)
            for sink in camera.sinks:
                skipped.add_metric([name, sink.name], sink.skipped)
            for rendition in camera.output.renditions():
                encoder_dropped.add_metric([name, rendition.codec], rendition.frames_dropped)
                viewer_dropped.add_metric([name, rendition.codec], rendition.packets_dropped)
            rtsp_skipped.add_metric([name], rtsp_counts.get(name, 0))
            sealer = camera.pipeline.step.sealer
            if sealer is not None:
                seal_cpu.add_metric([name], sealer.cpu_seconds)
            seal_refused.add_metric([name], stats.seal_refused)
            parts = {"sealing": camera.pipeline.step.faults, "worker": camera.pipeline.worker_faults}
            if camera.recorder is not None:
                parts["recording"] = camera.recorder.faults
            for part, fault in parts.items():
                faults.add_metric([name, part], fault.errors)
                recoveries.add_metric([name, part], fault.recoveries)
            faults.add_metric([name, "redaction"], stats.redaction_errors)
            faults.add_metric([name, "sink"], stats.sink_errors + sum(sink.errors for sink in camera.sinks))
            healthy.add_metric([name], 1 if camera.health()["status"] == "ok" else 0)
            view = camera.view
            view_held.add_metric([name], 1 if view.held is not None else 0)
            for kind in ("shifted", "changed", "covered", "defocused"):
                view_changes.add_metric([name, kind], view.changes.get(kind, 0))
            last = view.judge.last if view.judge is not None else None
            if last is not None:
                view_correlation.add_metric([name], last.correlation)
        yield from (view_held, view_changes, view_correlation, faults, recoveries, healthy, frames, errors, detect, detections, queue, warm, viewers, connected, reconnects, source_errors,
                    skipped, encoder_dropped, viewer_dropped, rtsp_skipped, seal_cpu, seal_refused)


class _Counts(Collector):
    """One labelled counter read at scrape time from ``{value: count}`` (one label) or
    ``{(value, ...): count}`` (several)."""

    def __init__(self, name: str, documentation: str, label: str | tuple[str, ...], counts: Callable[[], dict]) -> None:
        self._name, self._documentation, self._counts = name, documentation, counts
        self._labels = [label] if isinstance(label, str) else list(label)

    def collect(self):
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for values, count in sorted(self._counts().items()):
            family.add_metric([values] if len(self._labels) == 1 else list(values), count)
        yield family


class _Ledgers(Collector):
    """What clients hold at each entry point and what its caps refused or closed (:mod:`gateway.limits`)."""

    def __init__(self, ledgers: Callable[[], Iterable[Ledger]]) -> None:
        self._ledgers = ledgers

    def collect(self):
        connections = GaugeMetricFamily("privacy_gateway_open_connections", "Client connections open now",
                                        labels=["entry"])
        sessions = GaugeMetricFamily("privacy_gateway_open_sessions", "Client sessions open now "
                                     "(connected or still connecting)", labels=["entry"])
        refused = CounterMetricFamily("privacy_gateway_limit_refusals", "Connections and sessions refused, "
                                      "by the cap they hit", labels=["entry", "limit"])
        closed = CounterMetricFamily("privacy_gateway_connections_closed", "Connections the gateway closed "
                                     "itself (a deadline passed, displaced at the cap, idle)", labels=["entry", "reason"])
        for ledger in self._ledgers():
            (connections if ledger.resource == "connections" else sessions).add_metric([ledger.entry], ledger.held)
            for limit, count in sorted(ledger.refused.items()):
                refused.add_metric([ledger.entry, limit], count)
            for reason, count in sorted(ledger.closed.items()):
                closed.add_metric([ledger.entry, reason], count)
        yield from (connections, sessions, refused, closed)


class _Cluster(Collector):
    """This node's share of a cluster: the cameras it owns (by lease) and the leases it took over."""

    def __init__(self, node: ClusterNode) -> None:
        self._node = node

    def collect(self):
        node = self._node
        owned = GaugeMetricFamily("privacy_gateway_camera_owned", "1 for each camera whose lease this node "
                                  "holds (and may publish under)", labels=["camera", "node"])
        for camera in sorted(node.owned()):
            owned.add_metric([camera, node.name], 1)
        load = GaugeMetricFamily("privacy_gateway_cluster_node_cameras", "Cameras each live node held at this "
                                 "node's last lease round", labels=["node"])
        for name, count in sorted(node.stats.load.items()):
            load.add_metric([name], count)
        gaps = GaugeMetricFamily("privacy_gateway_camera_gap_seconds", "The footage gap at this node's last "
                                 "take-over of the camera, from the previous owner's last lease renewal (estimated) or "
                                 "its release of the camera to the camera started here", labels=["camera", "node"])
        for camera, seconds in sorted(node.stats.gaps.items()):
            gaps.add_metric([camera, node.name], seconds)
        yield owned
        yield load
        yield gaps
        yield CounterMetricFamily("privacy_gateway_lease_takeovers", "Camera leases this node took over from a "
                                  "node that stopped renewing them", value=node.stats.takeovers)
        yield CounterMetricFamily("privacy_gateway_lease_claims", "Camera leases this node claimed (free, handed "
                                  "back or taken over)", value=node.stats.claims)
        yield CounterMetricFamily("privacy_gateway_lease_round_failures", "Lease rounds that failed (database "
                                  "unreachable or too slow)", value=node.stats.failed_rounds)


class Metrics:
    """A registry of its own (no process-global state), exposed at ``/metrics``."""

    def __init__(self, cameras: Callable[[], Iterable[LiveCamera]], auth_failures: Callable[[], dict] | None = None,
                 rtsp_skipped: Callable[[], dict[str, int]] = dict, retention: Callable[[], dict] | None = None,
                 ice_ignored: Callable[[], dict[tuple[str, str], int]] | None = None,
                 ledgers: Callable[[], Iterable[Ledger]] | None = None, cluster: ClusterNode | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._cameras = cameras
        self.registry.register(_Cameras(cameras, rtsp_skipped))
        if auth_failures is not None:
            self.registry.register(_Counts("privacy_gateway_auth_failures", "Failed authentications by reason",
                                           "reason", auth_failures))
        if retention is not None:
            self.registry.register(_Counts("privacy_gateway_retention_actions", "Retention runs and what they "
                                           "destroyed (runs, segments_shredded, recordings_expired, "
                                           "recordings_evicted, errors)", "action", retention))
        if ice_ignored is not None:
            self.registry.register(_Counts("privacy_gateway_ice_candidates_ignored", "WebRTC peers' ICE candidates "
                                           "left out, by endpoint (whep, whip) and reason (network: outside "
                                           "webrtc.remote_networks; hostname: an mDNS name; peer_reflexive: "
                                           "checks from an address outside them)", ("endpoint", "reason"),
                                           ice_ignored))
        if ledgers is not None:
            self.registry.register(_Ledgers(ledgers))
        if cluster is not None:
            self.registry.register(_Cluster(cluster))
        self._latency_cameras: set[str] = set()
        self._lock = threading.Lock()
        self.latency = Histogram("privacy_gateway_release_latency_seconds",
                                 "Arrival to release of redacted frames (the hold-back bounds it)",
                                 ["camera"], buckets=_LATENCY_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        cameras = list(self._cameras())
        for camera in cameras:
            pending = camera.pipeline.stats.latency_seconds
            histogram = self.latency.labels(camera.name)
            while pending:
                histogram.observe(pending.popleft())
        names = {camera.name for camera in cameras}
        with self._lock:  # two scrapes at once must not both remove a series
            for gone in self._latency_cameras - names:  # removed at run time: its series goes with it
                self.latency.remove(gone)
            self._latency_cameras = names
        return generate_latest(self.registry)
