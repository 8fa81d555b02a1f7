"""``redact`` and ``detect``: images and video files through the same detect → track → redact + seal
steps as the live gateway (:class:`~gateway.sealing.RedactSeal`), written whole or not at all."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from keys import EscrowError, KeyDirectory, Sealer, VaultStore, grants_of
from redaction import (
    Analyzer,
    Frame,
    Policy,
    PolicyError,
    StreamRedactor,
    default_threads,
    load_policy,
    warmup_kernels,
    zone_mask,
)

from ..files import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    VideoFrame,
    VideoTranscoder,
    check_writable,
    count_frames,
    is_image,
    read_image,
    write_image,
)
from ..sealing import RedactSeal
from .cosigning import gateway_cosigner
from .errors import CommandError

_THREADS_HELP = ("inference threads per model, the models then one after the other (default: the cores shared "
                 "out among the models, which run side by side)")


def register(commands: argparse._SubParsersAction) -> None:
    redact = commands.add_parser("redact", help="redact faces and licence plates in an image or a video")
    redact.add_argument("input", type=Path, metavar="INPUT", help="image (jpg, png, ...) or video file")
    redact.add_argument("-o", "--output", type=Path, required=True, metavar="OUTPUT", help="where to write the result")
    redact.add_argument("--policy", type=Path, metavar="FILE", help="redaction policy (YAML); default: built-in")
    redact.add_argument("--threads", type=int, metavar="N", help=_THREADS_HELP)
    redact.add_argument("--keys", type=Path, metavar="DIR",
                        help="key directory: seal the originals of every redacted region (with --vault)")
    redact.add_argument("--vault", type=Path, metavar="VAULT", help="vault to seal into (with --keys)")
    redact.add_argument("--camera", metavar="ID", help="camera id in the vault (default: from the input's name)")
    redact.add_argument("--segment-seconds", type=float, default=10.0, metavar="S",
                        help="media seconds per vault segment (default: 10)")
    redact.set_defaults(run=_redact)

    detect = commands.add_parser("detect", help="list the regions that would be redacted")
    detect.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="images, videos or directories")
    detect.add_argument("--json", action="store_true", help="one JSON line per image or video frame")
    detect.add_argument("--policy", type=Path, metavar="FILE", help="redaction policy (YAML); default: built-in")
    detect.add_argument("--threads", type=int, metavar="N", help=_THREADS_HELP)
    detect.set_defaults(run=_detect)


def _engine(args: argparse.Namespace) -> tuple[Policy, Analyzer]:
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        raise CommandError(str(exc)) from None
    if args.threads is not None:
        if args.threads < 1:
            raise CommandError(f"--threads must be >= 1, got {args.threads}")
        policy = policy.model_copy(update={"detection": policy.detection.model_copy(update={"threads": args.threads})})
    # every core for this one stream: with faces and plates, a model on each core, side by side, their
    # model calls shared out (redact of MOT17-13's first 10 s, six pairs: 0.83-1.07x the wall time of
    # the models one after the other on both cores, median 0.88x, the same frames)
    return policy, Analyzer(policy, cores=default_threads())


def _warming() -> threading.Thread:
    """The redaction kernels compiled (or loaded from the cache) on a thread of their own, beside the
    models' loading and the first detection instead of before them (0.4 s of every start-up); a
    kernel called before it is done waits for it (Numba compiles under one lock)."""
    thread = threading.Thread(target=warmup_kernels, name="kernel-warmup", daemon=True)
    thread.start()
    return thread


def check_input(path: Path) -> None:
    if not path.exists():
        raise CommandError(f"cannot read {path}: no such file or directory")
    if not os.access(path, os.R_OK):
        raise CommandError(f"cannot read {path}: permission denied")


def _sealer(args: argparse.Namespace, policy: Policy, still: bool) -> Sealer | None:
    """A sealer when ``--keys``/``--vault`` are given, else None (a ``still`` image's originals are kept bit-exact)."""
    if (args.keys is None) != (args.vault is None):
        raise CommandError("--keys and --vault go together: sealing needs the key directory and the vault")
    if args.keys is None:
        return None
    camera = args.camera or re.sub(r"[^A-Za-z0-9_.-]+", "-", args.input.stem).lstrip(".-")[:64] or "camera"
    try:
        directory = KeyDirectory.open(args.keys)
        cosigner, manages_access = gateway_cosigner(args.keys)
        store = VaultStore.for_sealing(args.vault, directory, cosigner, manages_access=manages_access)
        return Sealer(store, directory.signer, camera, policy.model_dump(mode="json"), grants_of(policy),
                      directory.identities, segment_seconds=args.segment_seconds,
                      originals="lossless" if still else None)
    except (EscrowError, ValueError) as exc:  # ValueError: a camera id or segment length out of range
        raise CommandError(str(exc)) from None


def _redact(args: argparse.Namespace) -> int:
    source, target = args.input, args.output
    check_input(source)
    if source.is_dir():
        raise CommandError(f"cannot read {source}: is a directory (redact takes one file)")
    if source.resolve() == target.resolve():
        raise CommandError(f"refusing to overwrite the input {source}")
    check_writable(target)
    if is_image(source) != is_image(target) and target.suffix:
        raise CommandError(
            f"{target}: output must be {'an image' if is_image(source) else 'a video'} like the input"
        )
    warming = _warming()
    try:
        return _redact_with(args, source, target)
    finally:
        warming.join()


def _redact_with(args: argparse.Namespace, source: Path, target: Path) -> int:
    policy, analyzer = _engine(args)
    sealer = _sealer(args, policy, still=is_image(source))
    step = RedactSeal(policy, sealer, numbered=is_image(source))
    comment = None if sealer is None else sealer.ref.encode()
    try:
        if is_image(source):
            image = read_image(source)
            step.apply(0, 0.0, image, analyzer.regions(image))
            write_image(target, image, comment)
            frames = 1
        else:
            frames = _redact_video(source, target, analyzer, step, comment)
    except BaseException:
        step.close(complete=False)
        raise
    step.close()
    if sealer is not None:
        try:
            sealer.recorded(target.name, frames)
        except EscrowError as exc:
            raise CommandError(f"{exc}; the output is written and sealed, its frame count not logged") from None
        print(f"sealed {sealer.regions} regions into {args.vault} (camera {sealer.camera}, "
              f"recording {sealer.ref.recording})", file=sys.stderr)
    return 0


def _redact_video(source: Path, target: Path, analyzer: Analyzer, step: RedactSeal, comment: str | None) -> int:
    transcoder = VideoTranscoder(source, target, comment)
    stream = StreamRedactor(analyzer, rate=float(transcoder.info.rate))
    bar = tqdm(total=transcoder.info.frames, unit="frame", desc=source.name, disable=None, file=sys.stderr)

    def process(item: VideoFrame | None) -> list[VideoFrame]:
        if item is None:
            decisions = stream.flush()
        else:
            decisions = stream.push(Frame(item.index, item.time, item.image, item.pts, item))
        for decision in decisions:
            frame = decision.frame
            step.apply(frame.index, frame.time, frame.image, decision.regions)
            bar.update()
        return [d.frame.payload for d in decisions]

    try:
        transcoder.run(process)
    finally:
        stream.close()
        bar.close()
        transcoder.close()
    if transcoder.skipped_audio:
        print(f"privacy-gateway: warning: {source}: {transcoder.skipped_audio} damaged audio packets dropped",
              file=sys.stderr)
    return count_frames(target)  # what the file holds, as unmask and vault verify will count it


def _walk(inputs: list[Path]) -> Iterator[Path]:
    known = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    for path in inputs:
        check_input(path)
        if not path.is_dir():
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if Path(name).suffix.lower() in known:
                    yield Path(root) / name


def _zones_at(policy: Policy, width: int, height: int) -> list[dict]:
    """The policy's zones in a frame of this size: what every frame of it gets masked, whatever is detected."""
    zones = []
    for name, zone in policy.zones.items():
        x, y, mask = zone_mask(zone, height, width)
        zones.append({"name": name, "mode": zone.mode, "method": zone.method,
                      "box": [x, y, mask.shape[1], mask.shape[0]], "pixels": int(mask.sum())})
    return zones


def _detect(args: argparse.Namespace) -> int:
    paths = list(_walk(args.inputs))
    policy, analyzer = _engine(args)
    out = sys.stdout

    def emit(path: Path, frame: int | None, pts: float | None, width: int, height: int, regions) -> None:
        zones = _zones_at(policy, width, height)
        if args.json:
            record = {"path": str(path), "frame": frame, "pts": pts, "width": width, "height": height,
                      "regions": [r.to_json() for r in regions], "zones": zones}
            out.write(json.dumps(record) + "\n")
        else:
            where = f"{path}" if frame is None else f"{path} frame {frame}"
            counts = ", ".join(f"{sum(r.cls == c for r in regions)} {c}" for c in ("face", "plate"))
            extra = f", {len(zones)} zone{'s' * (len(zones) != 1)}" if zones else ""
            out.write(f"{where}: {counts}{extra}\n")

    for path in paths:
        if is_image(path):
            image = read_image(path)
            emit(path, None, None, image.shape[1], image.shape[0], analyzer.regions(image))
            continue
        transcoder = VideoTranscoder(path)
        stream = StreamRedactor(analyzer, rate=float(transcoder.info.rate))
        try:
            width, height = transcoder.info.width, transcoder.info.height
            for item in transcoder.frames():
                for d in stream.push(Frame(item.index, item.time, item.image, item.time)):
                    emit(path, d.frame.index, round(d.frame.time, 6), width, height, d.regions)
            for d in stream.flush():
                emit(path, d.frame.index, round(d.frame.time, 6), width, height, d.regions)
        finally:
            stream.close()
            transcoder.close()
    out.flush()
    return 0
