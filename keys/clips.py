"""Original crops as small videos: how a track's sealed pixels are compressed before encryption.

Within a segment, the original pixels of one track over a run of frames (a *clip*) are coded
as one short video by a real codec (PyAV/FFmpeg), then encrypted whole as one record (see
record.py). Every crop is placed at the top-left of a canvas as large as the run's largest
box and the rest is filled with a constant, never with surrounding pixels (which would hand
an investigator the bystanders next to the subject). Two modes, chosen by the policy's
``storage.originals``:

``high``      H.264 (libx264) in 4:4:4, constant quantiser, tuned for PSNR. Each clip's
              pictures as a decoder gives them back (x264's own reconstruction of them, which
              is that, bit for bit: :class:`_Reconstruction`) are checked for their per-frame
              luma PSNR against the crops: a clip below :data:`MIN_PSNR` is re-encoded at a
              finer quantiser (down to 0, lossless in YCbCr: ~55 dB after the colour
              conversions), so the bound holds by construction, not by hope;
              one that passes with a step's worth of dB to spare is tried coarser, by as many
              steps as the room allows (a prior of 0.75 dB a step, then the slope measured
              between two tries): up to four codings find the coarsest quantiser that passes,
              or come within a step of it. The quantiser a track's last clip kept is where its
              next clip starts.
``lossless``  FFV1 on BGR (with a constant fourth byte, ``bgra``): bit-exact; pictures are coded
              on their own, only the coder's adapted states carry over. A clip of a still scene
              (a fixed camera's background) is coded as picture-to-picture differences instead
              (``ffv1-bgra-delta``, below), also bit-exact. Still images always use plain FFV1.

A clip starts with a keyframe, so restoring a time range decodes only the clips that overlap it.

The coded clip (the plaintext of a record) is ``u32 extradata length, extradata`` followed by
``u32 length, packet`` for every packet in decoding order; no B-frames, so decoding order is
display order and the n-th decoded picture is the n-th crop.
"""

from __future__ import annotations

import math
import os
import re
import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import av
import cv2
import numpy as np

from .errors import RecordError

#: the ``codec`` names a clip record may carry (version 2 vaults were written with the first two)
H264 = "h264-yuv444p"
FFV1 = "ffv1-bgra"
FFV1_DELTA = "ffv1-bgra-delta"  # FFV1 of each picture's difference from the one before it
CODECS = (H264, FFV1, FFV1_DELTA)
MODES = ("high", "lossless")

#: luma PSNR (dB) every restored crop of a ``high`` clip reaches against the original ("visually
#: lossless"); the check is made on what the decoder gives back, so no margin needs adding
MIN_PSNR = 45.0
_FIRST_QP = 16  # measured on real face crops: the coarsest that passes is 11-23, median 15.5
#: dB of luma PSNR a quantiser step costs before two tries have measured it on the clip itself:
#: 0.6-0.8 on the crops of the three bench clips between QP 12 and 22 (6 steps double the step size)
_DB_PER_QP = 0.75
_MAX_TRIES = 4
#: dB of a passing clip's room kept back before counting the steps it allows: the slope varies
#: from step to step, and a coarser try that fails is a whole encode spent for nothing (on the
#: bench's 20 tracks: encodes per clip 2.65 -> 2.25 for 0.5 % more bytes)
_ROOM_MARGIN = 0.25
_LAST = ("", -1)  # where ClipCoder.qp keeps the quantiser the last clip of any track kept
_MAX_QP = 30
#: a clip on a canvas smaller than this (pixels) keeps the first quantiser that passes instead of
#: trying a coarser one: on pictures this small the encoder's opening and PyAV's per-picture work
#: cost more than x264's coding, so a second try costs nearly what the first did and saves a few
#: bytes (the live walkway's 21x21 px median face crop: sealing 8.8 -> 6.7 ms a frame, 2.5 % more
#: bytes; short_hamilton_clip's crops are larger: unchanged)
_SMALL_CANVAS = 32 * 32
#: x264 and FFV1 handle tiny pictures, but a canvas this small costs nothing and avoids edge cases
_MIN_SIDE = 16
#: one thread (clips are small, and the sealer has at most a core to itself); no B-frames (``bf``,
#: FFmpeg's name for it: decoding order is then display order, and at a constant quantiser x264's
#: B-frames sit two steps coarser and fall below the bound first: 9 % smaller on Hamilton's faces
#: without them); tuned for PSNR, the measure the bound is stated in; chroma quantised 12 steps
#: coarser than luma (x264's maximum): the bound is on luma, and 4:4:4 chroma at full quality was
#: a third of the bytes (measured on short_hamilton_clip's faces); the keyframe one step finer than
#: the P-frames (``ipratio`` 1.1) instead of x264's three (1.4): the bound is per frame, so a keyframe
#: far above it is bytes spent for nothing (7 % smaller on Hamilton's faces, 3 % on the walkway's);
#: three reference pictures instead of the preset's two: 0.2-0.5 % smaller on the three bench clips,
#: the same sealing time within the noise; no keyframe inserted at a "scene cut" within a clip (one
#: track's crops, each P-frame free to code a block intra): 1.3-3.5 % smaller on the three bench
#: clips, 2 % larger on the benchmark's 20 jumping boxes, the same sealing time within the noise; no
#: weighted prediction (``weightp``, which the preset turns on; these crops have no fades to weight
#: for): the live walkway's clips 9 % less time and 2 % fewer bytes
#: (perf/bench_seal.py: 4.71/4.73 -> 4.26/4.32 ms a frame), MOT17-13 2.3 % and the walkway 0.8 %
#: smaller vaults, short_hamilton_clip 0.2 % larger
X264_OPTIONS = {"preset": "faster", "tune": "psnr", "bf": "0", "threads": "1",
                "x264-params": "chroma-qp-offset=12:ipratio=1.1:ref=3:scenecut=0:weightp=0"}
_FRAME_RATE = 30  # nominal: the clip's real times are in its record header, not in the stream


@dataclass
class ClipCoder:
    """Encodes clips for one camera's sealer; remembers the quantiser each track last needed."""

    mode: str = "high"
    qp: dict[tuple[str, int], int] = field(default_factory=dict)
    encodes: int = 0  # clips encoded, counting re-encodes (for the benchmark)
    _reconstruction: _Reconstruction | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"storage.originals must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "high" and _Reconstruction.possible():
            try:
                self._reconstruction = _Reconstruction()
            except OSError:  # out of file descriptors, say: the clips are decoded instead
                pass

    def encode(self, crops: Sequence[np.ndarray], key: tuple[str, int] = ("", 0)) -> tuple[str, tuple[int, int], bytes]:
        """Code ``crops`` (BGR uint8, any sizes) as one clip: returns (codec, canvas size, coded bytes)."""
        size = canvas_size(crops)
        canvases = _canvases(crops, size)
        if self.mode == "lossless":
            self.encodes += 1
            if _still(canvases):
                return FFV1_DELTA, size, _encode(FFV1, _differences(canvases), None)
            return FFV1, size, _encode(FFV1, canvases, None)
        shapes = [c.shape[:2] for c in crops]
        original = luma(canvases)
        # a new track starts where the camera's last clip ended: one camera's noise and light are alike
        qp = min(_MAX_QP, self.qp.get(key, self.qp.get(_LAST, _FIRST_QP)))
        best: tuple[int, bytes] | None = None
        failed = _MAX_QP + 1  # the finest quantiser tried that fell short
        tried: dict[int, float] = {}
        for _ in range(_MAX_TRIES):
            self.encodes += 1
            coded = _encode(H264, canvases, qp, self._reconstruction)
            restored = self._reconstruction.read(canvases.shape) if self._reconstruction else None
            if restored is None:  # no reconstruction here: decode the clip
                restored = _decode(H264, size, coded, len(crops))
            worst = tried[qp] = _worst_psnr(original, luma(restored), shapes)
            slope = _slope(tried, qp)
            if worst >= MIN_PSNR:
                if best is None or qp > best[0]:
                    best = (qp, coded)
                # the coarsest quantiser the room above the bound is expected to allow, short of a known failure
                step = _MAX_QP if math.isinf(worst) else int((worst - MIN_PSNR - _ROOM_MARGIN) / slope)
                coarser = min(qp + step, failed - 1, _MAX_QP)
                if coarser <= qp or size[0] * size[1] < _SMALL_CANVAS:
                    break
                qp = coarser
            else:
                failed = min(failed, qp)
                finer = qp - max(1, math.ceil((MIN_PSNR - worst) / slope))
                if best is not None:  # between the best that passed and this failure, if anything is left
                    finer = max(finer, best[0] + 1)
                    if finer >= failed:
                        break
                qp = max(0, finer)
        if best is None:  # out of tries: code it losslessly in x264 (qp 0 always passes)
            self.encodes += 1
            best = (0, _encode(H264, canvases, 0))
        self.qp[key] = self.qp[_LAST] = best[0]
        return H264, size, best[1]

    def forget(self, key: tuple[str, int]) -> None:
        if key != _LAST:
            self.qp.pop(key, None)


def canvas_size(crops: Sequence[np.ndarray]) -> tuple[int, int]:
    """(width, height) of the canvas a clip of ``crops`` is coded on: the largest crop, at least 16 px."""
    return (max(_MIN_SIDE, max(c.shape[1] for c in crops)), max(_MIN_SIDE, max(c.shape[0] for c in crops)))


def _canvases(crops: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """The clip as one ``(n, height, width, 3)`` array: each crop at the top-left, the rest 0."""
    width, height = size
    canvases = np.zeros((len(crops), height, width, 3), dtype=np.uint8)
    for canvas, crop in zip(canvases, crops):
        canvas[: crop.shape[0], : crop.shape[1]] = crop
    return canvases


def _encode(codec: str, canvases: np.ndarray, qp: int | None, reconstruction: _Reconstruction | None = None) -> bytes:
    count, height, width = canvases.shape[:3]
    if codec == H264:
        options = {**X264_OPTIONS, "qp": str(qp)}
        if reconstruction is not None:
            options["x264-params"] += ":" + reconstruction.start()
        context = _open_encoder("libx264", "yuv444p", options, width, height, count)
        # the whole clip in one conversion; PyAV takes each picture as it is, channels last
        pictures = _convert(canvases, cv2.COLOR_BGR2YUV)
    else:
        context = _ffv1(width, height, count)
        pictures = np.zeros((count, height, width, 4), dtype=np.uint8)  # a constant fourth byte
        pictures[..., :3] = canvases
    parts = [struct.pack(">I", len(context.extradata or b"")), context.extradata or b""]
    # One input frame for the whole clip, each picture copied into its planes: a frame made per
    # picture (from_ndarray) was a sixth of the coding time on small crops. The encoder is done
    # with a frame when encode() returns (x264 and FFV1 copy or code it within the call).
    frame = av.VideoFrame(width, height, context.pix_fmt)
    planes = [np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size) for plane in frame.planes]
    if codec == H264:  # planar: one plane a channel
        pictures = pictures.transpose(0, 3, 1, 2)
        targets = [plane[:, :width] for plane in planes]
    else:  # packed: one plane, the channels side by side
        pictures = pictures.reshape(count, 1, height, width * 4)
        targets = [planes[0][:, : width * 4]]
    for index, picture in enumerate(pictures):
        for target, channel in zip(targets, picture):
            target[:] = channel
        frame.pts = index
        parts.extend(_packets(context.encode(frame)))
    parts.extend(_packets(context.encode(None)))
    if codec == H264 and len(parts) > 3:  # the first packet carries x264's notice
        first = _without_notice(parts[3])
        parts[2:4] = [struct.pack(">I", len(first)), first]
    return b"".join(parts)


#: x264 writes its name, version and every option it coded with into a stream's first access unit,
#: as an SEI NAL unit of its own (user data, payload type 5, under this UUID): 400-700 bytes a clip,
#: 8 % of the live walkway's sealed bytes. No decoder needs it (FFmpeg reads it only to work around
#: bugs of x264 builds from before 2017), so a clip is stored without it.
_X264_UUID = bytes.fromhex("dc45e9bde6d948b7962cd820d923eeef")
_START = re.compile(b"\x00\x00\x01")


def _without_notice(packet: bytes) -> bytes:
    """An Annex B ``packet`` without x264's notice (any other NAL unit kept as it is)."""
    starts = [m.start() for m in _START.finditer(packet)]
    out, last = [], 0
    for at, following in zip(starts, [*starts[1:], len(packet)]):
        if _is_notice(packet[at + 3 : following]):
            begin = at - 1 if at and packet[at - 1] == 0 else at  # a four-byte start code's first zero
            out.append(packet[last:begin])
            # up to the next start code, itself whole (a zero before it is its own first byte)
            last = following - 1 if following < len(packet) and packet[following - 1] == 0 else following
    out.append(packet[last:])
    return b"".join(out)


def _is_notice(nal: bytes) -> bool:
    """An SEI NAL unit (type 6) whose message is user data (type 5) under x264's UUID."""
    if len(nal) < 2 or nal[0] & 0x1F != 6 or nal[1] != 5:
        return False
    size = 2  # the payload size: bytes of 255 and a last one below it
    while nal[size : size + 1] == b"\xff":
        size += 1
    return nal[size + 1 : size + 17] == _X264_UUID


class _Reconstruction:
    """The pictures of a clip as x264 reconstructs them while coding (its ``dump-yuv``): what any
    decoder gives back, bit for bit (H.264 decoding is exact; the tests compare them with FFmpeg's),
    read without decoding the clip again. Opening a decoder, decoding and PyAV's work per picture
    were a fifth of the sealer's time on the live walkway's small crops; x264's writing the
    pictures back costs about half of that.

    x264 writes them to a path; here that is an anonymous memory file (``memfd``) of this process,
    so the pixels are on no file system. Emptied before each clip: a clip x264 did not write back
    in full is decoded instead, never checked against another clip's pictures."""

    def __init__(self) -> None:
        fd = os.memfd_create("clip-reconstruction", os.MFD_CLOEXEC)
        self._fd, self._path = fd, f"/proc/self/fd/{fd}"
        weakref.finalize(self, os.close, fd)

    @staticmethod
    def possible() -> bool:
        return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")

    def start(self) -> str:
        """Empty the file; the x264 parameter that writes the next clip's pictures into it."""
        os.ftruncate(self._fd, 0)
        return f"dump-yuv={self._path}"

    def read(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """The clip's ``(n, height, width, 3)`` BGR canvases, or None if x264 did not write them all."""
        count, height, width = shape[:3]
        size = count * 3 * height * width
        data = os.pread(self._fd, size + 1, 0)
        if len(data) != size:
            return None
        planes = np.frombuffer(data, np.uint8).reshape(count, 3, height, width)  # planar 4:4:4
        return _convert(planes.transpose(0, 2, 3, 1), cv2.COLOR_YUV2BGR)


# A fixed camera's decoder hands over many pixels unchanged from one picture to the next (blocks
# the camera's encoder skipped), which FFV1, coding each picture on its own, cannot see. A lossless
# clip whose pictures differ from their predecessors less than from their own left neighbours
# (a static scene, a crop that barely moves) is coded as its first picture followed by each
# picture's difference from the one before, modulo 256 around 128: exact, and undone by a running
# sum. On the walkway's crops (a fixed camera) 29 % smaller; on a moving camera's (MOT17-13) it is
# chosen for few clips and changes nothing.

def _still(canvases: np.ndarray) -> bool:
    """Whether a clip's pictures are closer to the picture before than to their left neighbours."""
    if len(canvases) < 2:
        return False
    pictures = canvases.astype(np.int16)
    temporal = np.abs(pictures[1:] - pictures[:-1]).sum()
    spatial = np.abs(pictures[1:, :, 1:] - pictures[1:, :, :-1]).sum()
    return bool(temporal < spatial)


def _differences(canvases: np.ndarray) -> np.ndarray:
    out = canvases.copy()
    out[1:] = canvases[1:] - canvases[:-1] + np.uint8(128)  # uint8 arithmetic: modulo 256
    return out


def _sums(differences: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_differences` (on any prefix of a clip)."""
    steps = differences.copy()
    steps[1:] -= np.uint8(128)
    return np.cumsum(steps, axis=0, dtype=np.uint8)


#: FFV1's large context model and its adapted range-coder table, and the states carried from
#: picture to picture (one keyframe per clip): on the walkway's small, noisy crops 28 % smaller
#: than the defaults (measured on 200 clips), at the same speed
_FFV1_OPTIONS = {"level": "3", "context": "1", "coder": "range_tab", "slicecrc": "0", "threads": "1"}


def _ffv1(width: int, height: int, count: int) -> av.CodecContext:
    """An open FFV1 encoder: one slice (one set of adapted states) where FFV1 accepts it, which it
    does for small pictures only (about 320x256); its own slicing above that."""
    try:
        return _open_encoder("ffv1", "bgra", {**_FFV1_OPTIONS, "slices": "1"}, width, height, count)
    except av.FFmpegError:
        return _open_encoder("ffv1", "bgra", _FFV1_OPTIONS, width, height, count)


def _open_encoder(name: str, pix_fmt: str, options: dict[str, str], width: int, height: int,
                  count: int) -> av.CodecContext:
    """An open encoder for a clip of ``count`` pictures, with one keyframe, at its start."""
    context = av.CodecContext.create(name, "w")
    context.pix_fmt = pix_fmt
    context.options = options
    context.gop_size = count
    context.width, context.height = width, height
    context.time_base = Fraction(1, _FRAME_RATE)
    context.open()
    return context


# Colour conversion is OpenCV's, both ways (swscale's took half the sealer's time on small crops):
# H.264 clips hold full-range BT.601 YCbCr as cv2.COLOR_BGR2YUV computes it, planar 4:4:4; FFV1
# clips hold the BGR bytes themselves and a constant fourth byte.

def _convert(images: np.ndarray, code: int) -> np.ndarray:
    """``cv2.cvtColor`` over a whole ``(n, h, w, 3)`` clip at once."""
    count, height, width = images.shape[:3]
    return cv2.cvtColor(np.ascontiguousarray(images).reshape(count * height, width, 3), code).reshape(images.shape)


def _packets(packets) -> list[bytes]:
    out = []
    for packet in packets:
        data = bytes(packet)
        out += [struct.pack(">I", len(data)), data]
    return out


def decode(codec: str, size: tuple[int, int], coded: bytes, shapes: Sequence[tuple[int, int]],
           count: int | None = None) -> list[np.ndarray]:
    """The crops of a clip: one ``(h, w, 3)`` BGR array per ``shapes`` entry (``count``: only the first so many).

    Raises :class:`RecordError` if the bytes do not decode to that many pictures of that size."""
    count = len(shapes) if count is None else count
    canvases = _decode(codec, size, coded, count)
    return [canvas[:h, :w] for canvas, (h, w) in zip(canvases, shapes[:count])]


def _decode(codec: str, size: tuple[int, int], coded: bytes, count: int) -> np.ndarray:
    """The first ``count`` canvases of a clip, as one ``(count, height, width, 3)`` BGR array."""
    if codec not in CODECS:
        raise RecordError(f"unknown clip codec {codec!r}")
    try:
        (elen,) = struct.unpack_from(">I", coded, 0)
        context = av.CodecContext.create("h264" if codec == H264 else "ffv1", "r")
        if elen:
            context.extradata = coded[4 : 4 + elen]
        context.width, context.height = size
        context.thread_count = 1
        at, pictures = 4 + elen, []
        while at < len(coded) and len(pictures) < count:
            (plen,) = struct.unpack_from(">I", coded, at)
            packet = coded[at + 4 : at + 4 + plen]
            if len(packet) != plen:
                raise RecordError("clip truncated")
            at += 4 + plen
            pictures.extend(context.decode(av.Packet(packet)))
        if len(pictures) < count:
            pictures.extend(context.decode(None))
    except (struct.error, av.FFmpegError, ValueError) as exc:
        raise RecordError(f"clip does not decode ({type(exc).__name__})") from None
    if len(pictures) < count or any((p.width, p.height) != tuple(size) for p in pictures[:count]):
        raise RecordError("clip does not decode to its frames")
    arrays = np.stack([p.to_ndarray(channel_last=True) for p in pictures[:count]])
    if codec == H264:
        return _convert(arrays, cv2.COLOR_YUV2BGR)
    if codec == FFV1_DELTA:
        return _sums(arrays[..., :3])
    return arrays[..., :3]


_BT601 = np.array([0.114, 0.587, 0.299], dtype=np.float32)  # B, G, R weights of luma


def luma(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of BGR pixels (any leading shape), unrounded: the plane the PSNR bound is stated on."""
    return image.astype(np.float32) @ _BT601


def _db(mse: float) -> float:
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def psnr(original: np.ndarray, restored: np.ndarray) -> float:
    """Luma PSNR of one crop in dB (inf when equal)."""
    return _db(float(np.mean((luma(original) - luma(restored)) ** 2)) if original.size else 0.0)


def restored_psnr(box: tuple[int, int, int, int], others: Sequence[tuple[int, int, int, int]]) -> float:
    """The luma PSNR a ``high`` region at ``box`` is restored to at least, where the frame's other
    restored regions are ``others``. Alone, :data:`MIN_PSNR`. Where regions overlap, a pixel shows
    the crop restored last, so the box's squared error is at most that of its own crop plus that
    of each crop overlapping it, each within the bound over its own area: the bound falls by
    ``10 log10((area + their areas) / area)`` dB (two equal boxes that overlap: 3 dB)."""
    x, y, w, h = box
    over = sum(ow * oh for ox, oy, ow, oh in others
               if min(x + w, ox + ow) > max(x, ox) and min(y + h, oy + oh) > max(y, oy))
    return MIN_PSNR - 10 * math.log10((w * h + over) / (w * h))


def _worst_psnr(original: np.ndarray, restored: np.ndarray, shapes: Sequence[tuple[int, int]]) -> float:
    """The lowest luma PSNR over a clip's crops, from its ``(n, H, W)`` luma canvases."""
    error = (original - restored) ** 2
    heights, widths = np.array(shapes).T
    inside = ((np.arange(error.shape[1]) < heights[:, None])[:, :, None]
              & (np.arange(error.shape[2]) < widths[:, None])[:, None, :])  # each crop's pixels on its canvas
    sums = np.where(inside, error, 0).sum(axis=(1, 2), dtype=np.float64)
    return min(_db(float(total / (h * w))) for total, h, w in zip(sums, heights, widths))


def _slope(tried: dict[int, float], qp: int) -> float:
    """dB of luma PSNR per quantiser step near ``qp``: from the two tries nearest it, else the prior."""
    finite = sorted((q for q, w in tried.items() if math.isfinite(w)), key=lambda q: abs(q - qp))[:2]
    if len(finite) < 2:
        return _DB_PER_QP
    a, b = sorted(finite)
    return min(2.0, max(0.4, (tried[a] - tried[b]) / (b - a)))
