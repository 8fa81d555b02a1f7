"""How the gateway encodes: the codec settings of every rendition, in one place.

Two kinds of H.264 encode, both constrained baseline with packetization-mode 1 (what every
WebRTC H.264 decoder takes, profile-level-id 42e0xx), Annex B with SPS/PPS repeated before every
IDR (what aiortc's ``pack()`` and RTSP's sprop-parameter-sets read), no B-frames (camera
timestamps may be irregular; reordering would make non-monotonic DTS), a keyframe every
:data:`GOP_SECONDS` and one thread (renditions run beside each other and detection):

* a camera's **continuous** encode (:class:`Continuous`): every frame, whether or not anyone
  watches, at recording quality (constant quality, CRF) with the rate capped for live viewers;
  its packets are the camera's recording, its WHEP viewers' and its RTSP clients' stream, so a
  camera is encoded once. It also has a global header (the SPS/PPS a muxer needs up front).
* an **on-demand** live encode (``ultrafast``, ``zerolatency``, a bitrate cap): only while a
  viewer watches, for a codec the continuous encode is not (VP8, for viewers without H.264).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av
from av.codec.context import Flags

from ..frames import Released
from ..webrtc import Codec

RTP_CLOCK = 90_000
TIME_BASE = Fraction(1, RTP_CLOCK)
GOP_SECONDS = 2.0  # a keyframe at least this often: where a viewer, a player and unmask can start
#: the continuous encode's rate cap, in bits per pixel of frame rate: 4.1 Mbit/s for 720p30,
#: room for CRF 23 on a busy street while a viewer's link is never asked for a burst
CAP_BITS_PER_PIXEL = 0.15
MIN_CAP = 500_000


@dataclass(frozen=True)
class StreamInfo:
    """What a muxer needs to write a rendition's packets into a file."""

    width: int
    height: int
    fps: float
    extradata: bytes  # SPS and PPS, Annex B


@dataclass(frozen=True)
class Continuous:
    """Encode every frame, whether or not anyone watches, and hand each packet on in order.

    ``on_packet(packet, frame, stream)`` runs on the encoder thread for every packet, with the
    released frame it was pushed with as its tag (the recorder writes it into the recording the
    frame's ``ref`` names); None for a frame pushed without one.
    """

    on_packet: Callable[[av.Packet, Released | None, StreamInfo], None]
    preset: str = "superfast"
    crf: int = 23

    def cap(self, width: int, height: int, fps: float) -> int:
        return max(MIN_CAP, round(CAP_BITS_PER_PIXEL * width * height * fps))


def open_encoder(codec: Codec, width: int, height: int, fps: float, bitrate: int,
                 continuous: Continuous | None = None) -> av.VideoCodecContext:
    """An open encoder for one rendition (``bitrate``: the cap of an on-demand encode)."""
    gop = max(1, round(fps * GOP_SECONDS))
    if codec == "h264":
        encoder = av.CodecContext.create("libx264", "w")
        if continuous is not None:
            kbit = max(1, continuous.cap(width, height, fps) // 1000)
            encoder.options = {
                "preset": continuous.preset,
                "profile": "baseline",
                "crf": str(continuous.crf),
                "forced-idr": "1",  # a forced keyframe must be an IDR a viewer or a recording can start from
                # repeat-headers: SPS/PPS in band before every IDR although there is a global header too;
                # force-cfr: rate control by the camera's rate, not by the next frame's time, so each
                # packet leaves with its frame rather than one frame later (a frame of live latency;
                # the timestamps are kept, the size is the same)
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1:force-cfr=1:"
                               f"rc-lookahead=0:sync-lookahead=0:vbv-maxrate={kbit}:vbv-bufsize={kbit}",
            }
            encoder.flags |= Flags.global_header
        else:
            kbit = max(1, bitrate // 1000)
            encoder.options = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                "profile": "baseline",
                "forced-idr": "1",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:vbv-maxrate={kbit}:vbv-bufsize={kbit}",
            }
            encoder.bit_rate = bitrate
    else:
        if continuous is not None:
            raise ValueError("a camera's continuous encode is H.264 (what recordings, WHEP and RTSP share)")
        encoder = av.CodecContext.create("libvpx", "w")
        encoder.options = {
            "deadline": "realtime",
            "cpu-used": "10",
            "lag-in-frames": "0",
            "error-resilient": "1",
            "static-thresh": "1",
            "undershoot-pct": "100",
            "overshoot-pct": "15",
            "minrate": str(bitrate),
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
        }
        encoder.qmin = 2
        encoder.qmax = 56
        encoder.bit_rate = bitrate
    encoder.width = width
    encoder.height = height
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = TIME_BASE
    encoder.framerate = Fraction(fps).limit_denominator(1001)
    encoder.gop_size = gop
    encoder.max_b_frames = 0
    encoder.thread_count = 1
    encoder.open()
    return encoder
