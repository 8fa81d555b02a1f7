"""``privacy-gateway`` command line: redact and detect on files, keys (escrow commands in escrow.py)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import av
from tqdm import tqdm

from . import escrow
from .errors import CheckFailed, CommandError
from .media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, MediaError, VideoFrame, VideoTranscoder, is_image, read_image, write_image

EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="privacy-gateway",
        description="Privacy-by-design anonymization for video surveillance.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    redact = commands.add_parser("redact", help="redact faces and licence plates in an image or a video")
    redact.add_argument("input", type=Path, metavar="INPUT", help="image (jpg, png, ...) or video file")
    redact.add_argument("-o", "--output", type=Path, required=True, metavar="OUTPUT", help="where to write the result")
    redact.add_argument("--policy", type=Path, metavar="FILE", help="redaction policy (YAML); default: built-in")
    redact.add_argument("--threads", type=int, metavar="N", help="inference threads per model (default: every core)")
    redact.add_argument("--keys", type=Path, metavar="DIR",
                        help="key directory: seal the originals of every redacted region (with --vault)")
    redact.add_argument("--vault", type=Path, metavar="VAULT", help="vault to seal into (with --keys)")
    redact.add_argument("--camera", metavar="ID", help="camera id in the vault (default: from the input's name)")
    redact.add_argument("--segment-seconds", type=float, default=10.0, metavar="S",
                        help="media seconds per vault segment (default: 10)")

    detect = commands.add_parser("detect", help="list the regions that would be redacted")
    detect.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="images, videos or directories")
    detect.add_argument("--json", action="store_true", help="one JSON line per image or video frame")
    detect.add_argument("--policy", type=Path, metavar="FILE", help="redaction policy (YAML); default: built-in")
    detect.add_argument("--threads", type=int, metavar="N", help="inference threads per model (default: every core)")

    keys = commands.add_parser("keys", help="key directory and identities")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = keys_commands.add_parser("init", help="create a key directory with a gateway signing key")
    init.add_argument("directory", type=Path, metavar="DIR")
    add = keys_commands.add_parser("add-identity", help="create a person's keys and add them to the directory")
    add.add_argument("directory", type=Path, metavar="DIR")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", dest="roles", action="append", required=True, metavar="ROLE",
                     help="privacy-officer, investigator, auditor, viewer or publisher (repeatable)")
    add.add_argument("--out", type=Path, required=True, metavar="FILE",
                     help="where to write the private keys, encrypted under a passphrase "
                          "(from PRIVACY_GATEWAY_PASSPHRASE, else prompted)")
    add.add_argument("--post-quantum", action="store_true",
                     help="also an ML-KEM-768 key: wraps to this person use hybrid ML-KEM-768+X25519 HPKE")
    escrow.add_commands(commands)

    token = commands.add_parser("token", help="get an API/viewer token from a running gateway, signed with your identity key")
    token.add_argument("--gateway", required=True, metavar="URL", help="the gateway's base URL, e.g. http://127.0.0.1:8080")
    token.add_argument("--identity", type=Path, required=True, metavar="FILE",
                       help="your private identity file (passphrase from PRIVACY_GATEWAY_PASSPHRASE, else prompted)")
    token.add_argument("--for", dest="holder", metavar="NAME", help="issue it to another identity (privacy officers)")
    token.add_argument("--camera", dest="cameras", action="append", metavar="ID", help="limit it to this camera (repeatable)")
    token.add_argument("--ttl", type=float, default=8 * 3600, metavar="SECONDS", help="lifetime (default: 8 hours)")
    token.add_argument("--cafile", type=Path, metavar="FILE", help="CA certificate to trust for an https gateway")

    serve = commands.add_parser("serve", help="run the live gateway (default: a demo camera on a bundled clip)")
    serve.add_argument("--config", type=Path, metavar="FILE", help="gateway configuration (YAML); default: config/gateway.yaml")
    serve.add_argument("--data", type=Path, metavar="DIR", help="data directory (keys, vault, recordings); overrides the config")
    serve.add_argument("--host", metavar="HOST", help="listen address (default from the config: 127.0.0.1)")
    serve.add_argument("--port", type=int, metavar="PORT", help="listen port (default from the config: 8080)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "redact":
            return _redact(args)
        if args.command == "detect":
            return _detect(args)
        if args.command == "keys":
            return _keys(args)
        if args.command in ("unmask", "audit", "vault"):
            return escrow.run(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "token":
            return _token(args)
    except CheckFailed as exc:
        print(f"privacy-gateway: error: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except (CommandError, MediaError) as exc:
        print(f"privacy-gateway: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except av.FFmpegError as exc:  # a codec or container problem not caught closer to its cause
        print(f"privacy-gateway: error: media: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout closed early (``| head``): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    raise AssertionError(args.command)


def _engine(args: argparse.Namespace):
    from redaction.engine import Analyzer
    from redaction.policy import PolicyError, load_policy

    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        raise CommandError(str(exc)) from None
    if args.threads is not None:
        if args.threads < 1:
            raise CommandError(f"--threads must be >= 1, got {args.threads}")
        policy = policy.model_copy(update={"detection": policy.detection.model_copy(update={"threads": args.threads})})
    from redaction import kernels

    kernels.warmup()  # compile (or load from cache) before the first frame, not on it
    return policy, Analyzer(policy)


def _check_input(path: Path) -> None:
    if not path.exists():
        raise CommandError(f"cannot read {path}: no such file or directory")
    if not os.access(path, os.R_OK):
        raise CommandError(f"cannot read {path}: permission denied")


def _sealer(args: argparse.Namespace, policy):
    """A :class:`keys.seal.Sealer` when ``--keys``/``--vault`` are given, else None."""
    if (args.keys is None) != (args.vault is None):
        raise CommandError("--keys and --vault go together: sealing needs the key directory and the vault")
    if args.keys is None:
        return None
    from keys.directory import DirectoryError, KeyDirectory
    from keys.seal import Sealer, grants_of
    from keys.store import VaultStore
    from keys.vault import VaultError

    camera = args.camera or re.sub(r"[^A-Za-z0-9_.-]+", "-", args.input.stem).lstrip(".-")[:64] or "camera"
    try:
        directory = KeyDirectory.open(args.keys)
        store = VaultStore.for_sealing(args.vault, directory)
        return Sealer(store, directory.signer, camera, policy.model_dump(mode="json"), grants_of(policy),
                      directory.identities, segment_seconds=args.segment_seconds)
    except (DirectoryError, VaultError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def _sealed(regions, originals, numbered: bool = False) -> list:
    """Regions with their original pixels for the sealer; ``numbered`` gives each its own track (still images)."""
    from keys.seal import Sealed

    return [Sealed(i + 1 if numbered else (r.track or 0), r.cls, (int(r.x), int(r.y), int(r.w), int(r.h)), crop)
            for i, (r, crop) in enumerate(zip(regions, originals))]


def _redact(args: argparse.Namespace) -> int:
    from redaction.redact import redact_frame

    source, target = args.input, args.output
    _check_input(source)
    if source.is_dir():
        raise CommandError(f"cannot read {source}: is a directory (redact takes one file)")
    if source.resolve() == target.resolve():
        raise CommandError(f"refusing to overwrite the input {source}")
    from .media import check_writable

    check_writable(target)
    if is_image(source) != is_image(target) and target.suffix:
        raise CommandError(
            f"{target}: output must be {'an image' if is_image(source) else 'a video'} like the input"
        )
    policy, analyzer = _engine(args)
    sealer = _sealer(args, policy)
    comment = None if sealer is None else sealer.ref.encode()
    try:
        if is_image(source):
            image = read_image(source)
            regions = analyzer.regions(image)
            originals = redact_frame(image, regions, policy, copy_out=sealer is not None)
            if sealer is not None:
                sealer.add(0, 0, _sealed(regions, originals, numbered=True))
            write_image(target, image, comment)
        else:
            _redact_video(source, target, analyzer, policy, sealer, comment)
    except BaseException:
        if sealer is not None:
            sealer.close(complete=False)
        raise
    if sealer is not None:
        sealer.close()
        print(f"sealed {sealer.records} regions into {args.vault} (camera {sealer.camera}, "
              f"recording {sealer.ref.recording})", file=sys.stderr)
    return 0


def _redact_video(source: Path, target: Path, analyzer, policy, sealer, comment: str | None) -> None:
    from redaction.engine import Frame, StreamRedactor
    from redaction.redact import redact_frame

    transcoder = VideoTranscoder(source, target, comment)
    stream = StreamRedactor(analyzer)
    bar = tqdm(total=transcoder.info.frames, unit="frame", desc=source.name, disable=None, file=sys.stderr)

    def process(item: VideoFrame | None) -> list[VideoFrame]:
        if item is None:
            decisions = stream.flush()
        else:
            decisions = stream.push(Frame(item.index, item.time, item.image, item.pts, item))
        for decision in decisions:
            originals = redact_frame(decision.frame.image, decision.regions, policy, copy_out=sealer is not None)
            if sealer is not None:
                frame = decision.frame
                sealer.add(frame.index, round(frame.time * 1e6), _sealed(decision.regions, originals))
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


def _walk(inputs: list[Path]) -> Iterator[Path]:
    known = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    for path in inputs:
        _check_input(path)
        if not path.is_dir():
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if Path(name).suffix.lower() in known:
                    yield Path(root) / name


def _detect(args: argparse.Namespace) -> int:
    from redaction.engine import Frame, StreamRedactor

    paths = list(_walk(args.inputs))
    _, analyzer = _engine(args)
    out = sys.stdout

    def emit(path: Path, frame: int | None, pts: float | None, width: int, height: int, regions) -> None:
        if args.json:
            record = {"path": str(path), "frame": frame, "pts": pts, "width": width, "height": height,
                      "regions": [r.to_json() for r in regions]}
            out.write(json.dumps(record) + "\n")
        else:
            where = f"{path}" if frame is None else f"{path} frame {frame}"
            counts = ", ".join(f"{sum(r.cls == c for r in regions)} {c}" for c in ("face", "plate"))
            out.write(f"{where}: {counts}\n")

    for path in paths:
        if is_image(path):
            image = read_image(path)
            emit(path, None, None, image.shape[1], image.shape[0], analyzer.regions(image))
            continue
        transcoder = VideoTranscoder(path)
        stream = StreamRedactor(analyzer)
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


def _passphrase() -> str:
    """``PRIVACY_GATEWAY_PASSPHRASE``, else asked twice on the terminal."""
    import getpass

    env = os.environ.get("PRIVACY_GATEWAY_PASSPHRASE")
    if env is not None:
        if not env:
            raise CommandError("PRIVACY_GATEWAY_PASSPHRASE is set but empty")
        return env
    if not sys.stdin.isatty():
        raise CommandError("no passphrase: set PRIVACY_GATEWAY_PASSPHRASE or run on a terminal")
    first = getpass.getpass("Passphrase for the new identity: ")
    if not first or first != getpass.getpass("Repeat the passphrase: "):
        raise CommandError("passphrases empty or different")
    return first


def _keys(args: argparse.Namespace) -> int:
    from keys.directory import DirectoryError, KeyDirectory
    from keys.identity import PrivateIdentity

    try:
        if args.keys_command == "init":
            directory = KeyDirectory.init(args.directory)
            print(f"key directory {args.directory} created; gateway key "
                  f"{directory.gateway_public.hex()[:16]}... (keep gateway.key private)")
            return 0
        directory = KeyDirectory.open(args.directory)
        if args.out.exists():
            raise CommandError(f"{args.out}: already exists; refusing to overwrite a private key file")
        try:
            identity = PrivateIdentity.generate(args.name, args.roles, post_quantum=args.post_quantum)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if any(i.name == identity.public.name for i in directory.identities):
            raise CommandError(f"{args.directory}: an identity named {args.name!r} already exists")
        passphrase = _passphrase()
        try:
            identity.save(args.out, passphrase)
        except OSError as exc:
            raise CommandError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        try:
            directory.add(identity.public)
        except BaseException:
            args.out.unlink(missing_ok=True)  # no private file for an identity the directory lacks
            raise
        print(f"identity {args.name} ({', '.join(identity.public.roles)}) added to {args.directory}; "
              f"private keys in {args.out}")
        return 0
    except DirectoryError as exc:
        raise CommandError(str(exc)) from None


def _token(args: argparse.Namespace) -> int:
    """``POST /api/tokens`` signed with the identity's key; prints the token (and nothing else) on stdout."""
    import json
    import ssl
    import urllib.error
    import urllib.request

    from keys.identity import IdentityError

    from .access import sign_request

    try:
        (holder,) = escrow._open_identities([args.identity])
    except IdentityError:
        raise CommandError(f"cannot open identity {args.identity} (wrong passphrase or not an identity file)") from None
    fields = {"ttl": args.ttl, **({"identity": args.holder} if args.holder else {}),
              **({"cameras": args.cameras} if args.cameras else {})}
    body = json.dumps(fields).encode()
    base = args.gateway.rstrip("/")
    request = urllib.request.Request(f"{base}/api/tokens", data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": sign_request(holder, "POST", "/api/tokens", body)})
    context = ssl.create_default_context(cafile=str(args.cafile)) if args.cafile else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as reply:
            answer = json.loads(reply.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("error", "")
        except ValueError:
            message = ""
        raise CommandError(f"the gateway refused ({error.code}): {message or error.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CommandError(f"cannot reach {base}: {getattr(exc, 'reason', exc)}") from None
    cameras = "every camera it may use" if answer["cameras"] is None else ", ".join(answer["cameras"])
    print(f"token for {answer['identity']} ({cameras}), expires {answer['expires']}:", file=sys.stderr)
    print(answer["token"])
    return 0


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from keys.directory import DirectoryError
    from keys.vault import VaultError

    from .config import ConfigError, load_config
    from .server import data_dir_default, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config, policies = load_config(args.config, args.data or data_dir_default(args.config))
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    listen = config.listen.model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    config = config.model_copy(update={"listen": listen})
    try:
        asyncio.run(serve(config, policies, announce=lambda line: print(line, flush=True)))
    except (DirectoryError, VaultError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:  # a listening port taken, a data directory not writable
        raise CommandError(f"cannot serve: {exc.strerror or exc}"
                           f"{f' ({exc.filename})' if getattr(exc, 'filename', None) else ''}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
