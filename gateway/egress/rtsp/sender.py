"""Sending a rendition's H.264 packets to RTSP sessions as RTP (RFC 6184), with RTCP sender reports.

Each session drains its rendition track at once and never waits for its client: a client that
falls behind (more than :data:`~.session.BACKLOG_BYTES` unsent) skips frames until the next
keyframe, which it asks the rendition for, so one slow viewer cannot hold back the others. A
packet is packetized once however many sessions send it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import weakref
from collections.abc import Callable

import av
from aiortc.codecs.h264 import H264Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtcpSdesPacket, RtcpSenderInfo, RtcpSourceInfo, RtcpSrPacket, RtpPacket

from ..rendition import VIEWER_BACKLOG, Rendition
from .protocol import CLOCK, PAYLOAD_TYPE, sprop
from .session import BACKLOG_BYTES, Session

logger = logging.getLogger(__name__)

SR_INTERVAL = 5.0  # seconds between RTCP sender reports
#: packets whose payloads are kept: every session is handed the same packet, each at most
#: VIEWER_BACKLOG packets behind the newest before it skips, so one more covers them all
_PAYLOAD_CACHE = VIEWER_BACKLOG + 1


class Payloads:
    """RTP payloads of the last few packets: packetized once however many sessions send them."""

    def __init__(self) -> None:
        self._packer = H264Encoder()  # only its stateless pack() is used
        self._recent: collections.OrderedDict[int, tuple[av.Packet, list[bytes]]] = collections.OrderedDict()

    def __call__(self, packet: av.Packet) -> list[bytes]:
        hit = self._recent.get(id(packet))
        if hit is not None and hit[0] is packet:
            return hit[1]
        payloads, _ = self._packer.pack(packet)
        self._recent[id(packet)] = (packet, payloads)  # holding the packet keeps its id unique
        while len(self._recent) > _PAYLOAD_CACHE:
            self._recent.popitem(last=False)
        return payloads


class RtpSender:
    """Pumps rendition packets into sessions; counts what it sent and skipped per camera (for /metrics)."""

    def __init__(self, stall_timeout: float) -> None:
        self._stall_timeout = stall_timeout
        self._payloads = Payloads()
        #: SPS/PPS of each rendition, from its first keyframe, for DESCRIBE's SDP
        self.sprop: weakref.WeakKeyDictionary[Rendition, str] = weakref.WeakKeyDictionary()
        self.sent: collections.Counter[str] = collections.Counter()  # camera -> frames sent, summed over sessions
        self.skipped: collections.Counter[str] = collections.Counter()  # camera -> frames skipped by slow sessions

    async def pump(self, session: Session, track: MediaStreamTrack, first: asyncio.Future,
                   end: Callable[[Session, str], None]) -> None:
        """Send every packet of ``track`` (the first already awaited in ``first``) until it ends;
        ``end(session, why)`` when the stream or the session fails."""
        try:
            packet = await first
            while True:
                self.send_frame(session, packet)
                packet = await track.recv()
        except MediaStreamError:
            if session.track is track:  # the rendition closed, not us
                end(session, "the stream ended")
                session.connection.writer.transport.abort()
        except Exception:
            logger.exception("rtsp %s: session %s failed", session.connection.peer, session.id)
            end(session, "internal error")

    def send_frame(self, session: Session, packet: av.Packet) -> None:
        rendition = session.rendition
        now = time.monotonic()
        if packet.is_keyframe and rendition not in self.sprop:
            found = sprop(packet)
            if found is not None:
                self.sprop[rendition] = found
        if session.backlog() > BACKLOG_BYTES:
            if session.behind_since is None:
                session.behind_since = now
            elif now - session.behind_since > self._stall_timeout:
                logger.info("rtsp %s: session %s stalled; closing", session.connection.peer, session.id)
                session.connection.writer.transport.abort()
            session.skipping = True
        elif packet.is_keyframe:
            session.behind_since = None
            session.skipping = False
        if session.skipping:
            session.frames_dropped += 1
            self.skipped[session.camera] += 1
            rendition.request_keyframe()
            return
        self.sent[session.camera] += 1
        timestamp = (packet.pts + session.ts_offset) & 0xFFFFFFFF
        payloads = self._payloads(packet)
        for index, payload in enumerate(payloads):
            rtp = RtpPacket(payload_type=PAYLOAD_TYPE, marker=int(index == len(payloads) - 1),
                            sequence_number=session.sequence, timestamp=timestamp, ssrc=session.ssrc,
                            payload=payload).serialize()
            session.sequence = (session.sequence + 1) & 0xFFFF
            session.packets += 1
            session.octets += len(payload)
            session.send(False, rtp)
        session.last_rtp = (timestamp, now)
        if now - session.last_report >= SR_INTERVAL:
            session.last_report = now
            session.send(True, _sender_report(session, now))


def _sender_report(session: Session, now: float) -> bytes:
    rtp_time, sent_at = session.last_rtp
    wallclock = time.time() + 2_208_988_800  # NTP epoch is 1900
    report = RtcpSrPacket(ssrc=session.ssrc, sender_info=RtcpSenderInfo(
        ntp_timestamp=int(wallclock * (1 << 32)) & 0xFFFFFFFFFFFFFFFF,
        rtp_timestamp=(rtp_time + round((now - sent_at) * CLOCK)) & 0xFFFFFFFF,
        packet_count=session.packets & 0xFFFFFFFF, octet_count=session.octets & 0xFFFFFFFF))
    cname = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=session.ssrc, items=[(1, b"privacy-gateway")])])
    return bytes(report) + bytes(cname)
