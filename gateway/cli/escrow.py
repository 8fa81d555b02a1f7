"""``unmask``, ``audit verify`` and ``vault shred/verify/tracks``: key escrow on the command line.

The private keys used here are the people's own identity files, opened on their machine;
nothing in this module runs inside the gateway process. Every check and every change of the
vault is :mod:`keys`' own (``Unmask``, ``verify_vault``, ``shred``, ...); this module parses the
arguments, reads and writes the media files, and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path

from keys import (
    AuditError,
    CoSigner,
    EscrowError,
    IntegrityError,
    KeyDirectory,
    Selection,
    Unmask,
    UnmaskError,
    UnmaskRequest,
    VaultRef,
    VaultStore,
    atomic_dir,
    canonical,
    check_handovers,
    make_manifest,
    recording_tracks,
    shred,
    tracks_at,
    verify_audit,
    verify_lines,
    verify_manifest,
    verify_vault,
    write_durably,
)
from redaction import ZONE_PREFIX, parse_policy, zone_mask

from ..config import ConfigError, load_config
from ..files import (
    MediaError,
    VideoTranscoder,
    count_frames,
    image_comment,
    is_image,
    read_image,
    video_comment,
    watermark,
    write_image,
)
from ..openbao import OpenBaoError, read_credentials
from ..storage import Recordings
from .cosigning import add_unmask_arguments, gateway_cosigner, unmask_cosigner
from .errors import CheckFailed, CommandError
from .prompt import open_identities
from .remote import GatewayClient, fetch
from .vaults import config_argument, keys_of, open_store


def register(commands: argparse._SubParsersAction) -> None:
    unmask = commands.add_parser("unmask", help="restore selected redacted regions from the vault (audited)")
    unmask.add_argument("input", type=Path, nargs="?", metavar="REDACTED",
                        help="an image or video written by redact --vault (not with --gateway)")
    unmask.add_argument("--vault", type=Path, metavar="VAULT", help="the vault (not with --gateway)")
    config_argument(unmask)
    unmask.add_argument("--keys", type=Path, metavar="DIR", help="the key directory (with --gateway: optional, to "
                        "check the gateway's key against it)")
    unmask.add_argument("--gateway", metavar="URL", help="unmask here a recording that gateway keeps: it sends the "
                        "redacted video and sealed records and logs the request; keys and pixels stay here")
    unmask.add_argument("--gateway-ca", type=Path, metavar="FILE", help="CA certificate of the gateway's TLS")
    unmask.add_argument("--camera", metavar="ID", help="with --gateway: the camera")
    unmask.add_argument("--recording", metavar="NAME", help="with --gateway: the recording (else the one --from "
                        "and --to, wall-clock ISO 8601 times there, fall in)")
    unmask.add_argument("--identity", dest="identities", type=Path, action="append", required=True, metavar="FILE",
                        help="a private identity file (repeat for a quorum); passphrases from "
                             "PRIVACY_GATEWAY_PASSPHRASE or prompted per file")
    unmask.add_argument("--track", dest="tracks", type=int, action="append", default=[], metavar="ID",
                        help="restore only this track (repeatable; see `vault tracks`)")
    unmask.add_argument("--at", metavar="T", help="with --point: the media time of the frame pointed at")
    unmask.add_argument("--point", metavar="X,Y", help="restore the subject whose sealed region covers this "
                        "pixel at --at (its whole track, within --from/--to)")
    unmask.add_argument("--class", dest="classes", action="append", type=_region_class, default=[],
                        metavar="CLASS", help="restore only this class: face, plate or zone:NAME (a liftable "
                        "privacy zone; repeatable)")
    unmask.add_argument("--from", dest="start", metavar="T", help="from this media time (seconds or [HH:]MM:SS)")
    unmask.add_argument("--to", dest="end", metavar="T", help="up to this media time, inclusive")
    unmask.add_argument("--case", metavar="ID", help="the case this unmask is for (audited)")
    unmask.add_argument("--reason", metavar="TEXT", help="why (audited)")
    unmask.add_argument("--with", dest="others", action="append", default=[], metavar="NAME",
                        help="another member of the quorum, on another machine (repeatable): with --request-out")
    unmask.add_argument("--request-out", type=Path, metavar="FILE", help="write a request file for the members "
                        "named by --with to approve in turn (`privacy-gateway unmask approve FILE`) instead of "
                        "unmasking now")
    unmask.add_argument("--request", type=Path, metavar="FILE", help="unmask what an approved request file asks "
                        "for (its case, reason, selection, output and recording)")
    unmask.add_argument("-o", "--output", type=Path, metavar="OUTPUT",
                        help="video, image, or a new directory (one lossless PNG per frame)")
    unmask.add_argument("--no-watermark", action="store_true", help="leave out the visible watermark (if policy allows)")
    add_unmask_arguments(unmask)
    unmask.set_defaults(run=_escrow(_unmask))
    approve = commands.add_parser("unmask-approve", help="(as `unmask approve REQUEST`) approve an unmask request "
                                  "and peel your layer of its keys")
    approve.add_argument("request", metavar="REQUEST", help="the request file (rewritten in place); with --gateway, "
                         "the id of a request filed there (r-...)")
    approve.add_argument("--identity", dest="identities", type=Path, action="append", required=True, metavar="FILE",
                         help="your identity file")
    approve.add_argument("--gateway", metavar="URL", help="fetch the request from this gateway and send the approval "
                         "back (requests signed with your key; it never leaves this machine)")
    approve.add_argument("--gateway-ca", type=Path, metavar="FILE", help="CA certificate of the gateway's TLS")
    approve.set_defaults(run=_escrow(_approve))

    audit = commands.add_parser("audit", help="the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    check = audit_commands.add_parser("verify", help="check the log's hash chain and signatures")
    check.add_argument("--vault", type=Path, metavar="VAULT")
    config_argument(check)
    check.add_argument("--keys", type=Path, metavar="DIR", help="check the vault's gateway key against this directory")
    check.set_defaults(run=_escrow(_audit_verify))

    vault = commands.add_parser("vault", help="the vault of sealed originals")
    vault_commands = vault.add_subparsers(dest="vault_command", required=True, metavar="ACTION")
    shred_parser = vault_commands.add_parser("shred", help="destroy the keys of old segments, the co-signer's "
                                             "and the wrapped ones (crypto-shredding)")
    shred_parser.add_argument("--vault", type=Path, metavar="VAULT")
    config_argument(shred_parser)
    shred_parser.add_argument("--keys", type=Path, metavar="DIR", help="the gateway's key directory (signs the log; "
                              "with --config, default: the configuration's)")
    when = shred_parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--before", metavar="DATE", help="segments that ended before DATE (YYYY-MM-DD or ISO time, UTC)")
    when.add_argument("--expired", action="store_true", help="segments past their policy's retention_days")
    shred_parser.set_defaults(run=_escrow(_shred))
    check_vault = vault_commands.add_parser("verify", help="check every segment chain, key file and the audit log")
    check_vault.add_argument("--vault", type=Path, metavar="VAULT")
    config_argument(check_vault)
    check_vault.add_argument("--keys", type=Path, metavar="DIR", help="check the vault's gateway key against this directory")
    check_vault.add_argument("--recordings", type=Path, metavar="DIR", nargs="?", const=_KEPT,
                             help="also check every logged recording file under DIR/<camera>/ holds the frames "
                             "logged for it (serve's <data>/recordings); with --config and no DIR: where the "
                             "configuration keeps them (its disk, or the bucket: each downloaded to count it)")
    check_vault.set_defaults(run=_escrow(_vault_verify))
    evidence = commands.add_parser("evidence", help="the signed manifests unmask writes beside its output")
    evidence_commands = evidence.add_subparsers(dest="evidence_command", required=True, metavar="ACTION")
    check_evidence = evidence_commands.add_parser("verify", help="check a manifest's signatures, the outputs it "
                                                  "names and (with --vault) its audit entry")
    check_evidence.add_argument("manifest", type=Path, metavar="MANIFEST", help="OUTPUT.evidence.json")
    check_evidence.add_argument("--vault", type=Path, metavar="VAULT", help="compare with the vault's audit log")
    check_evidence.add_argument("--keys", type=Path, metavar="DIR", help="the signers' keys must be the directory's")
    check_evidence.set_defaults(run=_escrow(_evidence_verify))
    tracks = vault_commands.add_parser("tracks", help="list the sealed tracks of a redacted file (no decryption)")
    tracks.add_argument("input", type=Path, metavar="REDACTED")
    tracks.add_argument("--vault", type=Path, metavar="VAULT")
    config_argument(tracks)
    tracks.set_defaults(run=_escrow(_tracks))




#: ``vault verify --recordings`` without a directory: the configuration's recordings
_KEPT = Path("\0kept")


def _escrow(command):
    """Run ``command``; a vault damaged on inspection is exit 1, any other refusal exit 2, one line each."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except IntegrityError as exc:
            raise CheckFailed(str(exc)) from None
        except EscrowError as exc:
            raise CommandError(str(exc)) from None

    return run


# --- unmask -------------------------------------------------------------------------------

def parse_time(text: str | None) -> int | None:
    """Microseconds from ``SS[.fff]``, ``MM:SS[.fff]`` or ``HH:MM:SS[.fff]``."""
    if text is None:
        return None
    match = re.fullmatch(r"(?:(?:(\d+):)?(\d+):)?(\d+(?:\.\d*)?)", text.strip())
    if not match:
        raise CommandError(f"time {text!r}: use seconds (12.5) or [HH:]MM:SS[.fff]")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return round((hours * 3600 + minutes * 60 + seconds) * 1e6)


def _ref_of(path: Path) -> VaultRef:
    comment = image_comment(path) if is_image(path) else video_comment(path)
    ref = VaultRef.decode(comment)
    if ref is None:
        raise CommandError(f"{path} carries no vault reference (was it written by redact --vault?)")
    return ref


def _unmask(args: argparse.Namespace) -> int:
    pending = _load_request(args) if args.request is not None else None
    if pending is None and (not args.case or not args.reason or args.output is None):
        raise CommandError("unmask needs --case, --reason and -o OUTPUT (or --request FILE)")
    args.pending = pending
    if args.gateway is not None:
        if args.input is not None or args.vault is not None or args.config is not None:
            raise CommandError("--gateway fetches the recording and its sealed records: no REDACTED or --vault")
        return _remote_unmask(args)
    keys_of(args)
    if args.input is None and args.config is not None and args.camera and args.recording:
        with _kept_recording(args) as args.input:  # in the bucket: a temporary download
            return _unmask_local(args)
    return _unmask_local(args)


@contextlib.contextmanager
def _kept_recording(args: argparse.Namespace) -> Iterator[Path]:
    """``--camera``/``--recording`` of the configuration's recordings (``--node``'s), where they are kept."""
    try:
        archive = Recordings.of(load_config(args.config)[0], args.node)
    except (ConfigError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    file = f"{args.recording}.mp4"
    if not archive.exists(args.camera, file):
        raise CommandError(f"{args.camera}/{file}: no such recording in {archive}")
    with archive.local(args.camera, file) as path:
        yield path


def _unmask_local(args: argparse.Namespace) -> int:
    if args.input is None or (args.vault is None and args.config is None) or args.keys is None:
        raise CommandError("unmask needs REDACTED (or, with --config, --camera and --recording), --vault and --keys, "
                           "or --config (or --gateway URL)")
    source, target = args.input, args.output
    if not source.is_file():
        raise CommandError(f"cannot read {source}: no such file")
    _check_target(source, target)
    start, end = parse_time(args.start), parse_time(args.end)
    if start is not None and end is not None and end < start:
        raise CommandError("--to is before --from")
    directory = KeyDirectory.open(args.keys)
    store = open_store(args, directory)
    holders = open_identities(args.identities)
    return _unmask_with(args, source, target, store, holders, start, end, None)


def _remote_unmask(args: argparse.Namespace) -> int:
    target = args.output
    holders = open_identities(args.identities)
    directory = KeyDirectory.open(args.keys) if args.keys is not None else None
    work = target.resolve().parent
    video, store, log, start, end = fetch(args, holders, work, directory)
    try:
        if directory is None:
            print(f"the gateway's key fingerprint is {store.fingerprint}: compare it out of band (or give --keys)")
        _check_target(video, target)
        return _unmask_with(args, video, target, store, holders, start, end, log)
    finally:
        video.unlink(missing_ok=True)


def _check_target(source: Path, target: Path) -> None:
    to_dir = not target.suffix or target.is_dir()
    if to_dir and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise CommandError(f"{target}: exists and is not an empty directory; refusing to overwrite")
    if not to_dir and is_image(source) != is_image(target):
        raise CommandError(f"{target}: output must be {'an image' if is_image(source) else 'a video'} like the input, "
                           "or a directory")
    if not to_dir and target.resolve() == source.resolve():
        raise CommandError(f"refusing to overwrite the input {source}")


def _unmask_with(args: argparse.Namespace, source: Path, target: Path, store: VaultStore, holders, start, end,
                 log) -> int:
    """The unmask itself, of ``source`` against ``store``, logged to ``log`` (None: the vault's own)."""
    to_dir = not target.suffix or target.is_dir()
    if args.pending is not None:  # the request file's selection, in media time
        start, end = args.start_us, args.end_us
    if (args.at is None) != (args.point is None):
        raise CommandError("--at and --point go together: the time and the pixel of the subject to restore")
    ref = _ref_of(source)
    tracks = set(args.tracks)
    if args.point is not None:
        tracks |= _subject_at(store, ref, args.at, args.point)
    selection = Selection(frozenset(tracks), frozenset(args.classes), start, end)
    pending: UnmaskRequest | None = args.pending
    others = (set(pending.request["identities"]) if pending else set(args.others)) - {h.public.name for h in holders}
    job = Unmask(store, ref, selection, holders, unmask_cosigner(args, store), log, tuple(others), _zone_mask)
    if job.selected == 0:
        raise CommandError("no sealed region matches the selection (see `privacy-gateway vault tracks`)")
    frames = None if job.recorded_frames is None or is_image(source) else count_frames(source)
    if frames is not None and frames != job.recorded_frames:
        raise UnmaskError(f"the file has {frames} frames, the gateway logged {job.recorded_frames} for this "
                          "recording (cut or edited after redaction?); nothing written")
    names = ", ".join(sorted({h.public.name for h in holders} | others))
    mark = None if args.no_watermark else (
        f"UNMASKED case {args.case} by {names} {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z")
    if args.request_out is not None:
        return _write_request(args, job, holders, target, mark is not None)
    approvals = layers = None
    if pending is not None:
        if job.request(args.case, args.reason, str(target), mark is not None) != pending.request:
            raise CommandError("the recording or the selection differ from what the request file asks for")
        if pending.missing != sorted({h.public.name for h in holders} - set(pending.approvals)):
            raise CommandError(f"the request still needs the approval of {', '.join(pending.missing)}")
        approvals = {n: s for n, s in pending.approvals.items() if n in others}
        layers = pending.layers
    entry = job.authorize(args.case, args.reason, str(target), mark is not None, approvals, layers)

    def restore(index: int, time: float, image, tolerance_us: int) -> None:
        job.restore(index, time, image, tolerance_us)
        if mark is not None:
            watermark(image, mark)

    if is_image(source):
        _unmask_image(source, target, to_dir, restore)
    else:
        _unmask_video(source, target, to_dir, restore, start, end, job)
    outputs = ([(f"{target.name}/{p.name}", p) for p in sorted(target.iterdir())] if to_dir
               else [(target.name, target)])
    manifest = target.with_name(target.name + ".evidence.json")
    write_durably(manifest, make_manifest(holders, entry, outputs, store.vault_id, store.fingerprint))
    print(f"restored {job.restored} regions of {len(job.tracks)} tracks to {target} "
          f"(audit entry {entry['seq']}, case {args.case}); signed manifest {manifest}")
    return 0


def _load_request(args: argparse.Namespace) -> UnmaskRequest:
    """Read a request file and take from it what the unmask is to be: case, reason, output,
    selection, watermark and where the recording is (arguments given too must agree)."""
    try:
        pending = UnmaskRequest.from_bytes(args.request.read_bytes())
    except OSError as exc:
        raise CommandError(f"cannot read {args.request}: {exc.strerror or exc}") from None
    request, source = pending.request, pending.source
    args.case, args.reason = request["case"], request["reason"]
    if args.output is not None and str(args.output) != request["output"]:
        raise CommandError(f"the request file writes {request['output']}, not {args.output}")
    args.output = Path(request["output"])
    args.no_watermark = not request["watermark"]
    selection = request["selection"]
    args.tracks, args.classes = list(selection["tracks"]), list(selection["classes"])
    args.start_us, args.end_us = selection["from_us"], selection["to_us"]
    if "gateway" in source:  # --gateway may name it as this machine reaches it (the file: as its writer did)
        args.gateway = args.gateway or source["gateway"]
        args.camera, args.recording = source["camera"], source["recording"]
        args.start = args.end = None
    else:
        args.input = Path(source["input"])
        if "config" in source:  # the vault of a gateway configuration (an S3 bucket, say)
            args.config, args.vault = Path(source["config"]), None
        else:
            args.vault = Path(source["vault"])
        args.keys = args.keys or Path(source["keys"])
        args.start = args.end = None
    return pending


def _write_request(args: argparse.Namespace, job: Unmask, holders, target: Path, watermark: bool) -> int:
    if not job.others:
        raise CommandError("--request-out is for a quorum on several machines: name the others with --with")
    requester = holders[0]
    request = job.request(args.case, args.reason, str(target), watermark)
    if args.gateway is not None:
        source = {"gateway": args.gateway, "camera": job.ref.camera, "recording": job.ref.recording}
    else:
        vault = {"config": str(args.config.resolve())} if args.config is not None else {"vault": str(args.vault.resolve())}
        source = {"input": str(args.input.resolve()), **vault, "keys": str(args.keys.resolve())}
    pending = UnmaskRequest(request, requester.public.name, source, job.layers(requester),
                            {h.public.name: h.signing.sign(canonical(request)).hex() for h in holders})
    write_durably(args.request_out, pending.to_bytes(), 0o600)
    print(f"request written to {args.request_out}: {', '.join(pending.missing)} approve it in this order "
          f"({' then '.join(reversed(job.layers(requester)[0]['names'][1:]))}) with `privacy-gateway unmask approve "
          f"{args.request_out} --identity THEIR.identity`; then {requester.public.name} runs `privacy-gateway "
          f"unmask --request {args.request_out} --identity ...`")
    return 0


def _approve(args: argparse.Namespace) -> int:
    """Approve a request file, or (``--gateway``) a request filed at a gateway: fetched, approved here,
    sent back; the gateway keeps the approval only if it verifies (docs/escrow.md)."""
    client = holders = None
    if args.gateway is not None:
        if not re.fullmatch(r"r-[0-9a-f]{16}", args.request):
            raise CommandError(f"{args.request!r}: with --gateway, give the request's id (r- and 16 hex digits)")
        holders = open_identities(args.identities)
        client = GatewayClient(args.gateway, holders[0], args.gateway_ca)
        where = f"/api/unmask-requests/{args.request}/file"
        pending = UnmaskRequest.from_bytes(client.request("GET", where).content)
    else:
        try:
            pending = UnmaskRequest.from_bytes(Path(args.request).read_bytes())
        except OSError as exc:
            raise CommandError(f"cannot read {args.request}: {exc.strerror or exc}") from None
    request = pending.request
    print(f"camera {request['camera']}, recording {request['recording']}: case {request['case']} "
          f"({request['reason']}), {request['regions']} regions of tracks "
          f"{', '.join(f'{c} {t}' for c, t in request['tracks'])}, asked by {pending.requester}")
    for holder in holders or open_identities(args.identities):
        peeled = pending.approve(holder)
        print(f"{holder.public.name} approved and peeled {peeled} key layer(s)")
    left = pending.waiting_for
    if client is not None:
        status = client.request("PUT", where, body=pending.to_bytes()).json()["status"]
        print(f"the gateway took the approval: request {args.request} is {status}"
              + (f", waiting for {', '.join(left)}" if left else f"; {pending.requester} may now run it"))
        return 0
    write_durably(Path(args.request), pending.to_bytes(), 0o600)
    print(f"still to approve: {', '.join(left)}" if left else
          f"every approval is in: {pending.requester} may now run `privacy-gateway unmask --request {args.request} "
          "--identity ...`")
    return 0


def _evidence_verify(args: argparse.Namespace) -> int:
    try:
        data = args.manifest.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {args.manifest}: {exc.strerror or exc}") from None
    known = None
    if args.keys is not None:
        directory = KeyDirectory.open(args.keys)
        keys = {d.name: d.signing for d in directory.departed} | {i.name: i.signing for i in directory.identities}
        known = keys.get
    log = None
    if args.vault is not None:
        store = VaultStore.open(args.vault, KeyDirectory.open(args.keys) if args.keys else None)
        verify_audit(store)
        log = store.audit.entries()
    found = verify_manifest(data, args.manifest.parent, known, log)
    print(f"{args.manifest}: {len(found.outputs)} output(s) intact, case {found.case}, signed by "
          f"{', '.join(found.signers)}" + (f"; audit entry {found.audit_seq} of {args.vault} matches" if log
                                            is not None else "; audit entry not compared (no --vault)"))
    return 0


def _region_class(text: str) -> str:
    if text in ("face", "plate") or re.fullmatch(r"zone:[a-z0-9][a-z0-9-]{0,31}", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected face, plate or zone:NAME")


def _zone_mask(cls: str, policy: dict, height: int, width: int):
    """A zone's pixels in a frame, from the policy that sealed it (see :class:`keys.Unmask`)."""
    name = cls.removeprefix(ZONE_PREFIX)
    zone = parse_policy(policy, "sealed policy").zones.get(name)
    if zone is None:
        raise UnmaskError(f"{cls}: the policy that sealed it has no such zone")
    return zone_mask(zone, height, width)


def _subject_at(store: VaultStore, ref: VaultRef, at: str, point: str) -> set[int]:
    """The track of the one subject whose sealed region covers ``point`` at ``at``; refuses when
    none or several do (restoring the wrong person is worse than asking again)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*,\s*(\d+(?:\.\d*)?)\s*", point)
    if not match:
        raise CommandError(f"--point {point!r}: use X,Y in pixels of the redacted frame")
    x, y = float(match.group(1)), float(match.group(2))
    at_us = parse_time(at)
    found = tracks_at(store, ref, at_us / 1e6, x, y)
    where = f"({x:g}, {y:g}) at {at_us / 1e6:.2f} s"
    if not found:
        raise CommandError(f"no sealed region covers {where} (see `privacy-gateway vault tracks`)")
    if len(found) > 1:
        listed = ", ".join(f"{cls} track {track}" for cls, track in found)
        raise CommandError(f"several sealed regions cover {where}: {listed}; choose with --track")
    (cls, track), = found
    print(f"{where} is {cls} track {track}")
    return {track}


def _check_complete(job: Unmask) -> None:
    if job.unused:
        raise UnmaskError(f"{job.unused} selected regions belong to frames this file does not have "
                          "(cut or edited after redaction?); nothing written")
    if job.recorded_frames is not None and job.frames_seen != job.recorded_frames:
        raise UnmaskError(f"the file has {job.frames_seen} frames, the gateway logged {job.recorded_frames} for this "
                          "recording (cut or edited after redaction?); nothing written")


def _unmask_image(source: Path, target: Path, to_dir: bool, restore) -> None:
    image = read_image(source)
    restore(0, 0.0, image, 0)
    if to_dir:
        with _output_dir(target) as tmp:
            write_image(tmp / "000000.png", image)
    else:
        write_image(target, image)


def _unmask_video(source: Path, target: Path, to_dir: bool, restore, start, end, job: Unmask) -> None:
    transcoder = VideoTranscoder(source, None if to_dir else target)
    tolerance = round(5e5 / float(transcoder.info.rate))  # half a frame
    try:
        if to_dir:
            with _output_dir(target) as tmp:
                for item in transcoder.frames():
                    at = round(item.time * 1e6)
                    restore(item.index, item.time, item.image, tolerance)
                    if (start is None or at >= start) and (end is None or at <= end):
                        write_image(tmp / f"{item.index:06d}.png", item.image)
                _check_complete(job)
        else:
            def process(item):
                if item is None:
                    _check_complete(job)
                    return []
                restore(item.index, item.time, item.image, tolerance)
                return [item]

            transcoder.run(process)
    finally:
        transcoder.close()


@contextlib.contextmanager
def _output_dir(target: Path) -> Iterator[Path]:
    """A new directory of unmasked frames, published whole and durably (:func:`keys.atomic_dir`);
    owner-only, like every unmasked file: it holds what the redaction hid."""
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise MediaError(f"cannot write {target}: directory {parent} does not exist")
    with atomic_dir(target, mode=0o700) as tmp:  # target: absent or empty, checked before any work
        yield tmp


# --- audit and vault ----------------------------------------------------------------------

def _open_with_keys(args: argparse.Namespace) -> VaultStore:
    keys_of(args)
    return open_store(args, KeyDirectory.open(args.keys) if args.keys is not None else None)


def _checkpoints_of(args: argparse.Namespace, store: VaultStore) -> tuple[CoSigner | None, str]:
    """The gateway's co-signer client, when the key directory holds its credentials, to read the
    audit log's checkpoints there; and what to say about them."""
    if args.keys is None or not store.vault_id:
        return None, ""
    try:
        cosigner, _ = read_credentials(args.keys)
    except OpenBaoError:
        return None, "; the co-signer's checkpoints not checked (no credentials in the key directory)"
    return cosigner, "; checked against the co-signer's checkpoints"


def _handovers(args: argparse.Namespace, store: VaultStore) -> str:
    """With ``--config`` of a cluster node: the hand-overs of the take-overs in this (verified) log,
    checked against the previous owners' logs, their copies in the cluster's database, each
    verified first (keys/handover.py); what to say about them. :class:`IntegrityError` if one fails."""
    config = load_config(args.config)[0] if getattr(args, "config", None) is not None else None
    if config is None or config.cluster is None:
        return ""
    own = getattr(args, "node", None) or config.cluster.node
    lines = store.audit.lines()
    entries = [json.loads(line) for line in lines]
    previous = {e["details"].get("previous") for e in entries if e.get("action") == "take-over"
                and isinstance(e.get("details"), dict) and e["details"].get("handover")}
    if not previous:
        return ""
    from ..state import (  # psycopg: only when a cluster is asked
        AuditTable,
        StateDatabase,
        StateUnavailable,
    )

    database = StateDatabase(config.cluster)
    try:
        logs = {own: lines}
        for node in sorted(str(n) for n in previous if n != own):
            logs[node] = AuditTable(database).lines(node)
            verify_lines(logs[node], store.key_of, log=f"node {node}'s audit log (its copy in the cluster's database)")
        count = check_handovers(logs, of=(own,))
    except StateUnavailable as exc:
        return f"; its hand-overs not checked ({exc})"
    except AuditError as exc:
        raise IntegrityError(str(exc)) from None
    finally:
        database.close()
    return f"; {count} hand-over(s) checked against the previous owners' logs (their copies in the cluster's database)"


def _audit_verify(args: argparse.Namespace) -> int:
    store = _open_with_keys(args)
    cosigner, checked = _checkpoints_of(args, store)
    count = verify_audit(store, cosigner)
    checked += _handovers(args, store) if count else ""
    if count == 0:
        print(f"{args.vault}: no audit log yet (nothing has been sealed or unmasked){checked}")
        return 0
    print(f"{args.vault}: {count} entries, chain, signatures and checkpoints intact "
          f"(gateway key {store.fingerprint}{'' if args.keys else ', compare out of band'}){checked}")
    return 0


def _shred_before(args: argparse.Namespace) -> dt.datetime | None:
    if args.before is None:
        return None
    try:
        when = dt.datetime.fromisoformat(args.before)
    except ValueError:
        raise CommandError(f"--before {args.before!r}: use YYYY-MM-DD or an ISO 8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _shred(args: argparse.Namespace) -> int:
    keys_of(args)
    if args.keys is None:
        raise CommandError("vault shred needs --keys (the gateway's key directory), or --config")
    directory = KeyDirectory.open(args.keys)
    store = open_store(args, directory)
    cosigner = gateway_cosigner(args.keys)[0] if store.vault_id else None  # vaults before co-signers need none
    if cosigner is not None:
        store.checkpoint_with(cosigner)  # the shred entry is checkpointed like every other
    try:
        done = shred(store, directory.signer, before=_shred_before(args), expired=args.expired, cosigner=cosigner)
    except EscrowError as exc:  # nothing was shredded: the log is written first, and a refusal says so
        raise CommandError(str(exc)) from None
    if not done.segments:
        print("nothing to shred")
        return 0
    print(f"shredded the keys of {len(done.segments)} segments (audit entry {done.entry['seq']}); "
          "they can no longer be unmasked")
    return 0


def _vault_verify(args: argparse.Namespace) -> int:
    store = _open_with_keys(args)
    cosigner, checked = _checkpoints_of(args, store)
    if args.recordings == _KEPT:
        if args.config is None:
            raise CommandError("--recordings without DIR needs --config")
        archive = Recordings.of(load_config(args.config)[0], args.node)

        def frames_of(camera: str, file: str) -> int | None:
            try:
                with archive.local(camera, file) as path:
                    return count_frames(path)
            except FileNotFoundError:
                return None

        report = verify_vault(store, cosigner, recording_frames=frames_of)
    else:
        report = verify_vault(store, cosigner, args.recordings, count_frames)
    checked += _handovers(args, store) if report.entries else ""
    for camera, count in sorted(report.partials.items()):
        print(f"camera {camera}: {count} unfinished segment(s) will be recovered when sealing resumes")
    for gap in report.gaps:
        link = gap.get("handover")
        after = (f", continuing its audit entry {link['seq']} (its segment {link['segment']})"
                 if isinstance(link, dict) else "")
        if gap.get("released"):
            print(f"camera {gap['camera']}: a gap of {gap['gap_s']:.1f} s: handed over by node {gap['previous']}{after} "
                  f"(it stopped the camera, its recording and segment finished, at {gap['expired_at']})")
        else:
            print(f"camera {gap['camera']}: a gap of at most {gap['gap_s']:.1f} s: taken over from node "
                  f"{gap['previous']}{after} (its lease expired at {gap['expired_at']}; its open recording and segment "
                  "are lost)")
    print(f"{args.vault}: {len(report.cameras)} cameras, {report.segments} segments and {report.entries} audit entries "
          f"verified (gateway key {store.fingerprint}){checked}")
    return 0


def _tracks(args: argparse.Namespace) -> int:
    ref = _ref_of(args.input)
    store = open_store(args)
    print(f"{args.input}: camera {ref.camera}, recording {ref.recording}")
    for t in recording_tracks(store, ref):
        ranges = ", ".join(f"{a:.2f}-{b:.2f}s" for a, b in t.ranges)
        print(f"  track {t.track:5d}  {t.cls:5s}  {t.first_s:8.2f}s - {t.last_s:8.2f}s  {t.frames:5d} frames  "
              f"first box {list(t.box)}" + (f"  seen {ranges}" if len(t.ranges) > 1 else ""))
    return 0
