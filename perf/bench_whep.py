"""Cost of each extra WHEP viewer when the stream is encoded once and fanned out.

    python perf/bench_whep.py [--seconds 10] [--viewers 1,3,5] [--codec h264]

This process is the gateway: one 1280x720 rendition fed at 30 fps by a thread (frames of a
real clip when ../shared/data is present, moving synthetic frames otherwise) and served by
uvicorn on 127.0.0.1. The viewers are aiortc clients in a separate process, so their CPU
(SRTP, depacketizing, decoding) is not counted. For each viewer count the gateway's process
CPU time is measured over a fixed window; the script prints it as % of one core, the cost per
extra viewer against the 1-viewer run, and the ratio to the 1-viewer cost. The encoder
thread's share is also shown and taken out in a second figure: its cost follows the picture
(the clip loops), and that noise is larger than a viewer's cost. Target: an extra viewer costs
at most 2 % of a core (RTP/SRTP only, no encode).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.egress import Rendition, WhepServer  # noqa: E402

WIDTH, HEIGHT, FPS = 1280, 720, 30
CAMERA = "bench"
CLIP = ROOT.parent / "shared" / "data" / "videos" / "MOT17-13-SDP_raw_h264.mp4"


def source_frames(n: int = 90) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(CLIP))
    out = []
    while len(out) < n:
        ok, frame = capture.read()
        if not ok:
            break
        out.append(cv2.resize(frame, (WIDTH, HEIGHT)))
    capture.release()
    if len(out) >= 30:
        return out + out[-2:0:-1]  # ping-pong: no scene cut at the loop point
    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.integers(0, 256, (HEIGHT, WIDTH + 8 * n, 3), dtype=np.uint8), (0, 0), 6)
    return [np.ascontiguousarray(base[:, 8 * i : 8 * i + WIDTH]) for i in range(n)]


def feed(rendition: Rendition, frames: list[np.ndarray], stop: threading.Event) -> None:
    start, n = time.monotonic(), 0
    while not stop.is_set():
        rendition.push(frames[n % len(frames)], n / FPS)
        n += 1
        stop.wait(max(0.0, start + n / FPS - time.monotonic()))


# -- viewers: a separate process ------------------------------------------------------------------


def viewers_main(url: str, count: int, conn) -> None:
    asyncio.run(_viewers(url, count, conn))


async def _viewers(url: str, count: int, conn) -> None:
    import httpx
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    received = [0] * count
    pcs, locations, tasks = [], [], []

    async def consume(index: int, track) -> None:
        while True:
            await track.recv()
            received[index] += 1

    async with httpx.AsyncClient() as http:
        for index in range(count):
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            transceiver = pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            response = await http.post(url, content=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"})
            response.raise_for_status()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
            pcs.append(pc)
            locations.append(response.headers["location"])
            tasks.append(asyncio.ensure_future(consume(index, transceiver.receiver.track)))
        while min(received) < 10:
            await asyncio.sleep(0.1)
        conn.send("ready")
        loop = asyncio.get_running_loop()
        while True:  # "mark" -> frames received so far; "stop" -> leave
            message = await loop.run_in_executor(None, conn.recv)
            if message == "stop":
                break
            conn.send(list(received))
        for task in tasks:
            task.cancel()
        base = url.split("/whep/")[0]
        for location in locations:
            await http.delete(base + location)
    for pc in pcs:
        await pc.close()
    conn.send("done")


# -- the gateway: this process --------------------------------------------------------------------


def thread_cpu(thread: threading.Thread) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def measure(rendition: Rendition, url: str, count: int, seconds: float, loop_thread: threading.Thread) -> dict:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=viewers_main, args=(url, count, child), daemon=True)
    process.start()
    try:
        if not parent.poll(60) or parent.recv() != "ready":
            raise RuntimeError(f"{count} viewers did not start receiving within 60 s")
        time.sleep(2)  # settle: keyframes for newcomers, ICE consent, jitter buffers
        parent.send("mark")
        received0 = parent.recv()
        stats0 = (rendition.frames_encoded, rendition.packets_sent, rendition.packets_dropped)
        # the encoder is the rendition's own thread; its cost varies with the picture, not the viewers
        encoder = next(t for t in threading.enumerate() if t.name == f"whep-{CAMERA}-{rendition.codec}")
        cpu0, enc0, loop0, wall0 = time.process_time(), thread_cpu(encoder), thread_cpu(loop_thread), time.perf_counter()
        time.sleep(seconds)
        cpu1, enc1, loop1, wall1 = time.process_time(), thread_cpu(encoder), thread_cpu(loop_thread), time.perf_counter()
        stats1 = (rendition.frames_encoded, rendition.packets_sent, rendition.packets_dropped)
        parent.send("mark")
        received1 = parent.recv()
        parent.send("stop")
        parent.poll(30) and parent.recv()
    finally:
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join()
    wall = wall1 - wall0
    return {
        "viewers": count,
        "core_pct": 100 * (cpu1 - cpu0) / wall,
        "encoder_pct": 100 * (enc1 - enc0) / wall,
        "loop_pct": 100 * (loop1 - loop0) / wall,
        "encoded_fps": (stats1[0] - stats0[0]) / wall,
        "packets_per_s": (stats1[1] - stats0[1]) / wall,
        "dropped": stats1[2] - stats0[2],
        "received_fps": [(b - a) / wall for a, b in zip(received0, received1)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per viewer count")
    parser.add_argument("--viewers", default="1,3,5", help="viewer counts; the first is the baseline")
    parser.add_argument("--codec", choices=("h264", "vp8"), default="h264")
    parser.add_argument("--bitrate", type=int, default=1_500_000)
    args = parser.parse_args()
    counts = [int(c) for c in args.viewers.split(",")]

    import uvicorn
    from starlette.applications import Starlette

    frames = source_frames()
    rendition = Rendition(CAMERA, args.codec, WIDTH, HEIGHT, FPS, bitrate=args.bitrate)

    async def allow(request, camera):  # no access control in this measurement
        return None

    whep = WhepServer(lambda camera, codec: rendition if (camera, codec) == (CAMERA, args.codec) else None, allow)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/whep/{CAMERA}?codec={args.codec}"
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=whep.routes), log_level="warning", lifespan="off"))
    server_thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    server_thread.start()
    while not server.started:
        time.sleep(0.05)
    stop = threading.Event()
    feeder = threading.Thread(target=feed, args=(rendition, frames, stop), daemon=True)
    feeder.start()

    print(f"WHEP fan-out, {args.codec} {WIDTH}x{HEIGHT}@{FPS} {args.bitrate // 1000} kbit/s, "
          f"{'clip' if CLIP.exists() else 'synthetic'} frames, {args.seconds:g} s per run, gateway process CPU")
    try:
        time.sleep(1)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        time.sleep(min(args.seconds, 5))
        idle = 100 * (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        print(f"  0 viewers: {idle:5.1f} % of a core (frames pushed, nothing encoded)")
        results = []
        for count in counts:
            result = measure(rendition, url, count, args.seconds, server_thread)
            results.append(result)
            received = ", ".join(f"{fps:.0f}" for fps in result["received_fps"])
            print(f"{count:3d} viewers: {result['core_pct']:5.1f} % of a core (encoder thread {result['encoder_pct']:.1f}, "
                  f"event loop {result['loop_pct']:.1f}), encoded {result['encoded_fps']:.1f} fps, "
                  f"{result['packets_per_s']:.0f} packets/s to viewers, {result['dropped']} dropped, "
                  f"each viewer received [{received}] fps")
    finally:
        stop.set()
        feeder.join()
        server.should_exit = True
        server_thread.join(15)
        rendition.close()

    base = results[0]
    for result in results[1:]:
        extra_viewers = result["viewers"] - base["viewers"]
        extra = (result["core_pct"] - base["core_pct"]) / extra_viewers
        fan_out = ((result["core_pct"] - result["encoder_pct"]) - (base["core_pct"] - base["encoder_pct"])) / extra_viewers
        print(f"{result['viewers']} vs {base['viewers']} viewers: {extra:+.2f} % of a core per extra viewer "
              f"(target <= 2 %; {fan_out:+.2f} % without the encoder thread's picture-dependent noise), "
              f"{result['core_pct'] / base['core_pct']:.2f}x the {base['viewers']}-viewer cost")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
