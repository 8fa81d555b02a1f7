"""The gateway's peers for perf/bench_gateway.py: camera clips to serve over RTSP, and WHEP viewers.

Clips are 1280x720 30 fps H.264 in MP4 (no B-frames, a keyframe every second), made in a
temporary directory from data under ../shared/data (read in place, never copied here):

* :func:`make_street_clip`: a street scene from a bus-mounted (moving) camera: pedestrians,
  cars, plates, every pixel changing; MOT17-13 scaled up to 720p;
* :func:`make_fixed_clip`: the usual surveillance case, a fixed camera over a walkway
  (OpenCV's vtest, 10 fps) scaled to fit 720p and re-timed to 30 fps, every frame shown once;
* :func:`make_coded_clip`: the walkway above a strip of 16 black/white blocks that spell the
  frame's number, with the inverse blocks below them, so a viewer can read which source frame
  it decoded after two lossy H.264 encodes.

:func:`viewers_process` runs aiortc WHEP viewers in a process of their own (their RTP/SRTP and
decoding must not count as gateway CPU) and answers the benchmark over a pipe.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

WIDTH, HEIGHT, FPS = 1280, 720, 30
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STREET = DATA / "videos" / "MOT17-13-SDP_raw_h264.mp4"
WALKWAY = DATA / "videos" / "opencv_vtest.avi"

# -- the frame code ---------------------------------------------------------------------------------

BITS = 16
CODE_TOP = 640  # code row 640..680, its inverse 680..720; the picture stays above it
BLOCK_W, BLOCK_H = WIDTH // BITS, 40
FIRST_CODE, CODE_STEP = 1000, 3  # frame i shows 1000 + 3 i: a garbled read is rarely a valid code


def draw_code(image: np.ndarray, number: int) -> None:
    code = FIRST_CODE + CODE_STEP * number
    if code >= 1 << BITS:
        raise ValueError(f"frame number {number} does not fit in {BITS} bits")
    for bit in range(BITS):
        on = (code >> (BITS - 1 - bit)) & 1
        x = bit * BLOCK_W
        image[CODE_TOP : CODE_TOP + BLOCK_H, x : x + BLOCK_W] = 255 if on else 0
        image[CODE_TOP + BLOCK_H : CODE_TOP + 2 * BLOCK_H, x : x + BLOCK_W] = 0 if on else 255


def read_code(luma: np.ndarray) -> int | None:
    """The frame number in a luma plane (any size: positions scale), or None (blanked, garbled)."""
    h, w = luma.shape[:2]
    sx, sy = w / WIDTH, h / HEIGHT
    number = 0
    for bit in range(BITS):
        x0, x1 = round((bit * BLOCK_W + BLOCK_W // 4) * sx), round((bit * BLOCK_W + 3 * BLOCK_W // 4) * sx)
        means = []
        for top in (CODE_TOP, CODE_TOP + BLOCK_H):
            y0, y1 = round((top + BLOCK_H // 4) * sy), round((top + 3 * BLOCK_H // 4) * sy)
            means.append(float(luma[y0:y1, x0:x1].mean()))
        if abs(means[0] - means[1]) < 100:  # a block and its inverse must disagree clearly
            return None
        number = number << 1 | (means[0] > means[1])
    if number < FIRST_CODE or (number - FIRST_CODE) % CODE_STEP:
        return None
    return (number - FIRST_CODE) // CODE_STEP


# -- clips ------------------------------------------------------------------------------------------


class _Writer:
    """1280x720 30 fps H.264 in MP4 as a camera would send it: no B-frames, a keyframe every second."""

    def __init__(self, path: Path) -> None:
        self.out = av.open(str(path), mode="w")
        self.stream = self.out.add_stream("libx264", rate=FPS)
        self.stream.width, self.stream.height, self.stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        self.stream.options = {"crf": "21", "preset": "veryfast",
                               "x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0:bframes=0"}
        self.frames = 0

    def write(self, bgr: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
        frame.pts, frame.time_base = self.frames, Fraction(1, FPS)
        for packet in self.stream.encode(frame):
            self.out.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self.stream.encode(None):
            self.out.mux(packet)
        self.out.close()


def make_street_clip(path: Path, seconds: float) -> Path:
    """The street clip's frames scaled to 720p and played at 30 fps (its 25 fps frames, 1.2x faster)."""
    writer = _Writer(path)
    with av.open(str(STREET)) as source:
        for frame in source.decode(video=0):
            if writer.frames >= round(seconds * FPS):
                break
            writer.write(cv2.resize(frame.to_ndarray(format="bgr24"), (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR))
    writer.close()
    return path


def fit(image: np.ndarray, height: int = HEIGHT) -> np.ndarray:
    """``image`` scaled to fit 1280 x ``height`` (aspect kept), centred on black."""
    scale = min(WIDTH / image.shape[1], height / image.shape[0])
    w, h = round(image.shape[1] * scale), round(image.shape[0] * scale)
    canvas = np.zeros((height, WIDTH, 3), np.uint8)
    x, y = (WIDTH - w) // 2, (height - h) // 2
    canvas[y : y + h, x : x + w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    return canvas


def walkway_frames(seconds: float | None = None) -> Iterator[np.ndarray]:
    """The walkway clip's frames (a fixed camera, 10 fps), the first ``seconds`` of them at 30 fps."""
    with av.open(str(WALKWAY)) as source:
        for number, frame in enumerate(source.decode(video=0)):
            if seconds is not None and number >= round(seconds * FPS):
                break
            yield frame.to_ndarray(format="bgr24")


def make_fixed_clip(path: Path, seconds: float | None = None) -> Path:
    """The walkway clip fitted to 720p, each frame shown once at 30 fps (motion three times faster,
    no frame duplicated); all of it unless ``seconds`` is given."""
    writer = _Writer(path)
    for image in walkway_frames(seconds):
        writer.write(fit(image))
    writer.close()
    return path


def make_coded_clip(path: Path, seconds: float | None = None) -> Path:
    """The fixed camera's walkway (as :func:`make_fixed_clip`, fitted above the code) with each
    frame's number in a block code along the bottom 80 rows; all of the walkway unless ``seconds``.

    The scene of the capacity runs, so that latency is measured on the frames a camera that keeps
    up releases (a photo of faces panning across the whole frame, used before, made every pixel
    change: a moving camera's cost, and nineteen frames in twenty were blanked)."""
    writer = _Writer(path)
    for number, scene in enumerate(walkway_frames(seconds)):
        image = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
        image[:CODE_TOP] = fit(scene, CODE_TOP)
        draw_code(image, number)
        writer.write(image)
    writer.close()
    return path


# -- viewers (a process of their own) ---------------------------------------------------------------


def viewers_process(conn, viewers_per_url: int, read_codes: bool) -> None:
    """Receive the WHEP URLs, connect ``viewers_per_url`` viewers to each, then answer the benchmark:

    ``"mark"`` -> frames decoded so far by each viewer; ``"stop"`` -> leave, then send the
    records ``(code, pts, last packet time, decoded time)`` of the first viewer (``read_codes``
    only; ``pts`` counts in 90 kHz from the first frame this viewer decoded).
    Times are ``time.monotonic()``, the same clock as the gateway process's on this machine.
    """
    if read_codes and viewers_per_url != 1:
        raise ValueError(f"read_codes: one viewer per URL, not {viewers_per_url}")
    asyncio.run(_viewers(conn, viewers_per_url, read_codes))


def _hook_packet_arrivals() -> tuple[dict[int, float], dict[int, int]]:
    """When each frame's last RTP packet arrived (by RTP timestamp) and the raw timestamp of each frame pts.

    aiortc's jitter buffer hands a frame to the decoder only when the first packet of the next
    frame arrives, so the decoded time includes a wait a browser (which uses the RTP marker
    bit) does not have; the last packet's arrival shows the gateway's part without it.
    """
    from aiortc import rtcrtpreceiver

    arrivals: dict[int, float] = {}
    raw_of: dict[int, int] = {}
    handle = rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet
    mapper = rtcrtpreceiver.TimestampMapper.map

    async def _handle(self, packet, arrival_time_ms):
        arrivals[packet.timestamp] = time.monotonic()  # later packets of the same frame overwrite
        await handle(self, packet, arrival_time_ms)

    def _map(self, timestamp):
        mapped = mapper(self, timestamp)
        raw_of[mapped] = timestamp
        return mapped

    rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet = _handle
    rtcrtpreceiver.TimestampMapper.map = _map
    return arrivals, raw_of


def _luma(frame: av.VideoFrame) -> np.ndarray:
    plane = frame.planes[0]
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]


async def _viewers(conn, viewers_per_url: int, read_codes: bool) -> None:
    import httpx
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    arrivals, raw_of = _hook_packet_arrivals() if read_codes else ({}, {})
    loop = asyncio.get_running_loop()
    urls, token = await loop.run_in_executor(None, conn.recv)
    received: list[int] = []
    decoded: list[tuple[int | None, int, float]] = []  # first viewer: (code, pts, decoded at)
    pcs, sessions, tasks = [], [], []

    async def consume(index: int, track) -> None:
        while True:
            frame = await track.recv()
            now = time.monotonic()
            received[index] += 1
            if read_codes and index == 0:
                decoded.append((read_code(_luma(frame)), frame.pts, now))

    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        for url in urls:
            for _ in range(viewers_per_url):
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                transceiver = pc.addTransceiver("video", direction="recvonly")
                await pc.setLocalDescription(await pc.createOffer())
                for _ in range(60):  # the camera's renditions appear with its first released frame
                    response = await http.post(url, content=pc.localDescription.sdp,
                                               headers={"Content-Type": "application/sdp"})
                    if response.status_code not in (404, 503):
                        break
                    await asyncio.sleep(0.5)
                response.raise_for_status()
                await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
                pcs.append(pc)
                sessions.append(url.split("/whep/")[0] + response.headers["location"])
                received.append(0)
                tasks.append(asyncio.ensure_future(consume(len(received) - 1, transceiver.receiver.track)))
        while min(received) < 10:
            await asyncio.sleep(0.1)
        conn.send("ready")
        while await loop.run_in_executor(None, conn.recv) != "stop":
            conn.send(list(received))
        for task in tasks:
            task.cancel()
        for session in sessions:
            await http.delete(session)
    for pc in pcs:
        await pc.close()
    records = [(code, pts, arrivals.get(raw_of.get(pts, -1)), at) for code, pts, at in decoded]
    conn.send(json.dumps(records))
